//! The `tls:` section: the certificates the proxy serves.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate and key files; SNI names come from each certificate's DNS names.
    /// Empty: a self-signed development certificate for `localhost` is generated.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}
