//! The development certificate authority, for a proxy started without certificates (the local
//! demo). The CA is kept on disk across restarts, so that a person who trusts it once (in a
//! browser, with `sekisho login --ca`, with `curl --cacert`) keeps trusting the proxy after a
//! restart; each start signs a fresh leaf for every host name the configuration serves.
//!
//! A leaf names each host explicitly: browsers, OpenSSL and rustls refuse a wildcard directly
//! under a single-label name such as `*.localhost`, so `auth.localhost` must be named itself.
//!
//! Files, in `SEKISHO_DEV_CA_DIR` or else `$XDG_STATE_HOME/sekisho/dev-ca`
//! (`~/.local/state/sekisho/dev-ca`): `ca.pem` (the certificate to trust) and `ca.key` (mode
//! 0600). A directory that cannot be used falls back to one under the system's temporary
//! directory, named for the user.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::{LoadedCert, TlsError, certified_development};
use crate::config::Config;

/// The CA's name, which every leaf it signs names as its issuer.
const CA_NAME: &str = "Sekisho development CA";

/// A development CA whose key is at hand.
pub(crate) struct DevCa {
    /// The CA certificate to trust (PEM).
    pub(crate) ca_file: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// The CA kept in `dir`, made there first if there is none.
    pub(crate) fn open_or_create(dir: &Path) -> Result<Self, TlsError> {
        let ca_file = dir.join("ca.pem");
        let key_file = dir.join("ca.key");
        let io = |source| TlsError::DevCa {
            dir: dir.to_owned(),
            source,
        };
        if let (Ok(ca_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&ca_file),
            std::fs::read_to_string(&key_file),
        ) && let Ok(ca) = Self::from_pem(&ca_file, &ca_pem, &key_pem)
        {
            return Ok(ca);
        }
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir).map_err(io)?;
        write_replacing(&key_file, key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
        write_replacing(&ca_file, cert.pem().as_bytes(), 0o644).map_err(io)?;
        Ok(Self {
            ca_file,
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    fn from_pem(ca_file: &Path, ca_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        use rustls_pki_types::pem::PemObject as _;
        let key = KeyPair::from_pem(key_pem)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|source| {
            TlsError::ReadPem {
                path: ca_file.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            ca_file: ca_file.to_owned(),
            ca_der,
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// A leaf for `names` (DNS names and IP addresses), with the CA in its chain.
    pub(crate) fn certificate_for(&self, names: &[String]) -> Result<LoadedCert, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().map_or("localhost", |n| n));
        let leaf = params.signed_by(&key, &self.issuer)?;
        let key =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::BadCertificate {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        certified_development(vec![leaf.der().clone(), self.ca_der.clone()], key)
    }
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    Ok(params)
}

/// Writes `bytes` to `path` through a temporary file renamed over it, with `mode`.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Where the CA is kept unless the caller says: `SEKISHO_DEV_CA_DIR`, else the user's state
/// directory.
pub(crate) fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEKISHO_DEV_CA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        });
    match state {
        Some(state) => state.join("sekisho/dev-ca"),
        None => fallback_dir(),
    }
}

/// A directory under the system's temporary directory, one per user.
pub(crate) fn fallback_dir() -> PathBuf {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
    std::env::temp_dir().join(format!("sekisho-dev-ca-{user}"))
}

/// Every name the configuration serves, for the development leaf: `localhost` and the
/// loopback addresses, each exact host (routes, the auth host, tunnels), and wildcards whose
/// suffix has at least two labels (a client refuses `*.localhost`).
pub(crate) fn names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .map(str::to_owned)
        .to_vec();
    let hosts = config
        .hosts
        .iter()
        .map(|h| h.host.as_str())
        .chain(config.identity.iter().map(|i| i.auth_host.as_str()))
        .chain(config.tunnels.iter().map(|t| t.host.as_str()));
    for host in hosts {
        let host = host.to_ascii_lowercase();
        let usable = match host.strip_prefix("*.") {
            Some(suffix) => suffix.contains('.'),
            None => true,
        };
        if usable && !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "listen: {{https: '127.0.0.1:8443', admin: '127.0.0.1:9901'}}
upstreams:
  app: {{endpoints: ['http://127.0.0.1:3000']}}
{extra}"
        );
        Config::parse(&text, Path::new("t.yaml"), Path::new("/")).unwrap()
    }

    #[test]
    fn the_leaf_names_every_served_host_but_never_a_wildcard_under_one_label() {
        let config = config(
            "identity: {auth_host: auth.localhost}
policies: {staff: {allow: [{group: staff}]}}
hosts:
  - {host: localhost, default: app, policy: staff}
  - {host: App.Localhost, default: app, public: true}
  - {host: '*.localhost', default: app, public: true}
  - {host: '*.apps.example.com', default: app, public: true}
tunnels:
  - {host: ssh.localhost, policy: staff, target: '127.0.0.1:22'}
",
        );
        assert_eq!(
            names(&config),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "app.localhost",
                "*.apps.example.com",
                "auth.localhost",
                "ssh.localhost",
            ]
        );
    }

    #[test]
    fn the_ca_is_kept_across_restarts_and_signs_leaves_that_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevCa::open_or_create(dir.path()).unwrap();
        let ca_pem = std::fs::read_to_string(&first.ca_file).unwrap();
        let key_mode = std::fs::metadata(dir.path().join("ca.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
            0o600
        );
        let again = DevCa::open_or_create(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&again.ca_file).unwrap(), ca_pem);

        // A leaf from the reopened CA verifies against the CA file written the first time.
        let names = vec!["localhost".to_owned(), "auth.localhost".to_owned()];
        let leaf = again.certificate_for(&names).unwrap();
        assert_eq!(leaf.names, names);
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            super::super::tls::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        let chain = &leaf.key.cert;
        for name in ["localhost", "auth.localhost"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &chain[1..],
                    &rustls_pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_damaged_ca_file_is_replaced_rather_than_served() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let ca = DevCa::open_or_create(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&ca.ca_file).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
}
