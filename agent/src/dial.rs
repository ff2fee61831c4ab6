//! Dialing a proxy: TCP, TLS (rustls, ALPN `http/1.1`), then an HTTP/1.1 `Upgrade` request
//! carrying the agent's signed credential. A `101 Switching Protocols` answer hands back the
//! raw connection, on which the agent then serves HTTP/2 ([`crate::serve`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sekisho_wire::agent_auth::{AgentKey, AgentPublicKey, CredentialError};
use sekisho_wire::{AGENT_AUTH_HEADER, AGENT_CONNECT_PATH, AGENT_PROTOCOL};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Proxy;
use crate::target::Target;

/// How long the TLS handshake and the upgrade exchange may take, after the TCP connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a refusal's body is kept for the log.
const REFUSAL_BODY_LIMIT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read the CA file", .path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: the CA file holds no certificate", .path.display())]
    EmptyCa { path: PathBuf },
    #[error("{}: a certificate in the CA file is not usable", .path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system root certificates were found (set ca_file or pass --ca)")]
    NoSystemRoots,
    #[error("the TLS client configuration is not usable")]
    Config(#[source] rustls::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {target}")]
    Connect {
        target: Target,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Target),
    #[error("the TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("cannot sign the agent credential")]
    Credential(#[source] CredentialError),
    #[error("the HTTP/1.1 exchange failed")]
    Http(#[source] hyper::Error),
    #[error(
        "the proxy does not accept this agent ({status}): register its public key {public_key} \
         under agents.{name} in the proxy config"
    )]
    NotAccepted {
        status: StatusCode,
        public_key: AgentPublicKey,
        name: String,
    },
    #[error("the proxy answered {status} instead of 101 Switching Protocols{}", body_suffix(.body))]
    Refused { status: StatusCode, body: String },
    #[error("the proxy did not finish the handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("the connection could not be taken over after the 101")]
    Upgrade(#[source] hyper::Error),
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The TLS client configuration: the ring provider, chosen explicitly so that another crate
/// enabling a different one cannot make rustls panic; the CA in `ca_file`, or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsError::ReadCa {
                    path: path.to_owned(),
                    source,
                })?;
            if certificates.is_empty() {
                return Err(TlsError::EmptyCa {
                    path: path.to_owned(),
                });
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|source| TlsError::BadCa {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system root certificate could not be loaded");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens agent connections to proxies.
pub struct Dialer {
    tls: TlsConnector,
    key: Arc<AgentKey>,
    name: String,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        key: Arc<AgentKey>,
        name: String,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            key,
            name,
            connect_timeout,
        }
    }

    /// Connects to `proxy` and has the connection turned around. Cancel-safe: dropping the
    /// future closes whatever it had opened.
    pub async fn dial(&self, proxy: &Proxy) -> Result<Upgraded, DialError> {
        let target = proxy.dial_target();
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((target.host(), target.port())),
        )
        .await
        .map_err(|_| DialError::ConnectTimeout(target.clone()))?
        .map_err(|source| DialError::Connect {
            target: target.clone(),
            source,
        })?;
        // Nagle would hold back the small frames (pings, window updates, headers) for an ACK.
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(proxy, tcp))
            .await
            .map_err(|_| DialError::HandshakeTimeout)?
    }

    async fn handshake(&self, proxy: &Proxy, tcp: TcpStream) -> Result<Upgraded, DialError> {
        let tls = self
            .tls
            .connect(proxy.url.server_name().clone(), tcp)
            .await
            .map_err(DialError::Tls)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(DialError::Http)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "the upgrade connection ended with an error");
            }
        });

        let host = proxy.url.authority();
        let credential = self
            .key
            .credential(&host, &self.name, unix_now())
            .map_err(DialError::Credential)?;
        let request = Request::get(AGENT_CONNECT_PATH)
            .header(header::HOST, &host)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, AGENT_PROTOCOL)
            .header(AGENT_AUTH_HEADER, credential.to_string())
            .body(Empty::new())
            .expect("the agent's request headers are valid");
        let response = sender
            .send_request(request)
            .await
            .map_err(DialError::Http)?;
        match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => hyper::upgrade::on(response)
                .await
                .map_err(DialError::Upgrade),
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(DialError::NotAccepted {
                    status,
                    public_key: self.key.public_key(),
                    name: self.name.clone(),
                })
            }
            status => {
                let body = Limited::new(response.into_body(), REFUSAL_BODY_LIMIT)
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body).trim().to_owned();
                Err(DialError::Refused { status, body })
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(matches!(
            client_config(Some(&path)),
            Err(TlsError::EmptyCa { .. })
        ));
        assert!(matches!(
            client_config(Some(&dir.path().join("missing.pem"))),
            Err(TlsError::ReadCa { .. })
        ));
    }

    #[test]
    fn a_refusal_shows_its_body_only_when_there_is_one() {
        let refused = |body: &str| DialError::Refused {
            status: StatusCode::NOT_FOUND,
            body: body.into(),
        };
        assert_eq!(
            refused("").to_string(),
            "the proxy answered 404 Not Found instead of 101 Switching Protocols"
        );
        assert!(
            refused("no agents here")
                .to_string()
                .ends_with(": no agents here")
        );
    }
}
