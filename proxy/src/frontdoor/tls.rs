//! TLS on both sides of the proxy.
//!
//! Downstream: a certificate store that picks a certificate by SNI (exact names first, then a
//! `*.` wildcard for one label), swapped atomically when files change, plus the rustls server
//! configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1, resumption by tickets and session ids).
//! Upstream: client configurations that verify against the system roots or a configured CA.
//! One crypto provider (ring) is chosen explicitly everywhere.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{CertificateFiles, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM")]
    ReadPem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate is not valid X.509: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{cert}: certificate has no DNS names (subjectAltName)")]
    NoNames { cert: PathBuf },
    #[error("{key}: the key does not match certificate {cert}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("generating the development certificate failed")]
    DevCertificate(#[from] rcgen::Error),
    #[error("{dir}: cannot keep the development CA there")]
    DevCa {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration rejected")]
    Config(#[from] rustls::Error),
}

/// The crypto provider used for every TLS configuration in the process.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate ready to serve, with what the proxy reports about it.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    /// Where it came from; `None` for the generated development certificate.
    pub files: Option<CertificateFiles>,
    /// DNS names from the certificate (may include `*.` wildcards).
    pub names: Vec<String>,
    /// Expiry as seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl LoadedCert {
    /// A short label for logs and metrics: the first name.
    pub(crate) fn label(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }
}

/// Reads a PEM certificate chain and private key, and checks that they belong together.
pub(crate) fn load_certificate(files: &CertificateFiles) -> Result<LoadedCert, TlsError> {
    let read_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| TlsError::ReadPem { path, source }
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(read_err(&files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(&files.cert))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(read_err(&files.key))?;
    certified(chain, key, Some(files.clone()))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: Option<CertificateFiles>,
) -> Result<LoadedCert, TlsError> {
    let (cert_label, key_label) = files
        .as_ref()
        .map_or_else(Default::default, |f| (f.cert.clone(), f.key.clone()));
    let mut loaded = certified_as(chain, key, &cert_label, &key_label)?;
    loaded.files = files;
    Ok(loaded)
}

/// A certificate chain and key from memory (a Kubernetes Secret): errors name them as `cert`
/// and `key` say (`Secret shop/web-tls, tls.crt`).
pub(crate) fn certified_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &str,
    key: &str,
) -> Result<LoadedCert, TlsError> {
    let (cert, key_label) = (PathBuf::from(cert), PathBuf::from(key));
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::ReadPem {
            path: cert.clone(),
            source,
        })?;
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::ReadPem {
        path: key_label.clone(),
        source,
    })?;
    certified_as(chain, private, &cert, &key_label)
}

fn certified_as(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_label: &std::path::Path,
    key_label: &std::path::Path,
) -> Result<LoadedCert, TlsError> {
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert_label.to_owned(),
    })?;
    let (names, not_after) =
        names_and_expiry(leaf).map_err(|message| TlsError::BadCertificate {
            path: cert_label.to_owned(),
            message,
        })?;
    if names.is_empty() {
        return Err(TlsError::NoNames {
            cert: cert_label.to_owned(),
        });
    }
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| {
        TlsError::KeyMismatch {
            cert: cert_label.to_owned(),
            key: key_label.to_owned(),
            source,
        }
    })?;
    Ok(LoadedCert {
        files: None,
        names,
        not_after,
        key: Arc::new(key),
    })
}

fn names_and_expiry(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The certificates in force, indexed by name.
#[derive(Debug, Default)]
pub(crate) struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Served when the client sends no SNI or a name nothing covers.
    fallback: Option<Arc<CertifiedKey>>,
    pub entries: Vec<LoadedCert>,
}

impl CertTable {
    /// Indexes certificates; when two cover the same name, the one listed first wins.
    pub(crate) fn new(entries: Vec<LoadedCert>) -> Self {
        let mut table = Self {
            fallback: entries.first().map(|e| e.key.clone()),
            ..Self::default()
        };
        for entry in &entries {
            for name in &entry.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                map.or_insert_with(|| entry.key.clone());
            }
        }
        table.entries = entries;
        table
    }

    pub(crate) fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else {
            return self.fallback.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, suffix) = name.split_once('.')?;
                self.wildcard.get(suffix)
            })
            .or(self.fallback.as_ref())
            .cloned()
    }
}

/// The rustls certificate resolver, swapped as a whole on reload.
#[derive(Debug, Default)]
pub(crate) struct CertStore {
    table: ArcSwap<CertTable>,
}

impl CertStore {
    pub(crate) fn new(table: CertTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
        }
    }

    pub(crate) fn replace(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    pub(crate) fn table(&self) -> Arc<CertTable> {
        self.table.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().find(hello.server_name())
    }
}

/// The server configuration shared by every TLS connection.
pub(crate) fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(8192);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A development certificate (see [`super::dev_ca`]): served like a configured one, but from
/// no files.
pub(crate) fn certified_development(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<LoadedCert, TlsError> {
    certified(chain, key, None)
}

/// The system's trusted roots, loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "could not load some system root certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "loaded system root certificates");
            Arc::new(roots)
        })
        .clone()
}

/// A client configuration for one upstream. `alpn` lists the protocols to offer.
pub(crate) fn client_config(
    tls: &UpstreamTls,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = if tls.dangerous_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCertificate))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| TlsError::ReadPem {
                        path: path.clone(),
                        source,
                    })?;
                if certs.is_empty() {
                    return Err(TlsError::NoCertificate { path: path.clone() });
                }
                for cert in certs {
                    roots.add(cert)?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client configuration a replica relays tunnel streams to another with
/// ([`crate::hub::relay`]): TLS 1.3 only, HTTP/1.1, and any certificate, since what is trusted
/// is not the certificate (the holder is dialed at its pod address, its certificates are for
/// the public names) but the proofs both ends exchange, bound to the connection's exported
/// keying material.
pub(crate) fn relay_client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("the ring provider supports TLS 1.3")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCertificate))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// Accepts any certificate (the handshake signature is still checked). Used when an upstream
/// sets `tls.dangerous_skip_verify`, and between replicas ([`relay_client_config`]).
#[derive(Debug)]
struct DangerousAcceptAnyCertificate;

impl ServerCertVerifier for DangerousAcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        certified(vec![cert.der().clone()], key, None).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
        let first = cert_for(&["first.test"]);
        let wild = cert_for(&["*.example.com"]);
        let exact = cert_for(&["app.example.com"]);
        let table = CertTable::new(vec![first.clone(), wild.clone(), exact.clone()]);
        let pick = |name| table.find(name).unwrap();
        assert!(Arc::ptr_eq(&pick(Some("app.example.com")), &exact.key));
        assert!(Arc::ptr_eq(&pick(Some("APP.example.com.")), &exact.key));
        assert!(Arc::ptr_eq(&pick(Some("other.example.com")), &wild.key));
        assert!(Arc::ptr_eq(&pick(Some("a.b.example.com")), &first.key));
        assert!(Arc::ptr_eq(&pick(None), &first.key));
    }

    #[test]
    fn certificate_names_and_expiry_are_read_from_the_certificate() {
        let cert = cert_for(&["a.test", "*.b.test"]);
        assert_eq!(cert.names, ["a.test", "*.b.test"]);
        assert!(cert.not_after > 1_700_000_000);
    }

    #[test]
    fn a_key_from_another_certificate_is_rejected() {
        let a = rcgen::KeyPair::generate().unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&a)
            .unwrap();
        let wrong_key = PrivateKeyDer::try_from(b.serialize_der()).unwrap();
        let err = certified(vec![cert.der().clone()], wrong_key, None).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }
}
