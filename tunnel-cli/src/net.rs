//! HTTPS to the proxy: the origin a command talks to, TLS with the system roots (or a given
//! CA), and the two kinds of exchange the CLI makes — a small request whose answer is read
//! whole (login, token refresh), and an HTTP/1.1 upgrade that becomes a byte stream (tunnel).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long dialing the proxy (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a small request may take, start to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer a small request reads.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{0}` is not a host name, `host:port` or an https:// URL")]
    BadOrigin(String),
    #[error("cannot read the CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("cannot reach {origin}")]
    Connect {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} did not answer in time")]
    Timeout { origin: String },
    #[error("the exchange with {origin} failed")]
    Http {
        origin: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{origin} sent an answer larger than {MAX_BODY} bytes")]
    TooLarge { origin: String },
}

/// An HTTPS origin: the host (for DNS, SNI and `Host`) and the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Reads `host`, `host:port` or `https://host[:port][/...]`; the port defaults to 443.
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadOrigin(text.to_owned());
        let url = if text.contains("://") {
            url::Url::parse(text).map_err(|_| bad())?
        } else {
            url::Url::parse(&format!("https://{text}")).map_err(|_| bad())?
        };
        if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
            return Err(bad());
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(bad()),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(443),
        })
    }

    /// `https://host` or `https://host:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.authority())
    }

    /// `host` or `host:port`, as in `Host` (443 is left out).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn server_name(&self) -> Result<ServerName<'static>, NetError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| NetError::BadOrigin(self.host.clone()))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// How the CLI reaches proxies.
#[derive(Clone)]
pub struct Net {
    tls: Arc<ClientConfig>,
    /// Dial this address whatever the host name resolves to (like curl's `--connect-to`).
    connect_to: Option<SocketAddr>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("connect_to", &self.connect_to)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// TLS trusting the system's roots, or only the certificates in `ca_file` when given.
    pub fn new(ca_file: Option<&Path>, connect_to: Option<SocketAddr>) -> Result<Self, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let ca_error = |source| NetError::CaFile {
                    path: path.to_owned(),
                    source,
                };
                let pem = std::fs::read(path).map_err(ca_error)?;
                for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(NetError::NoCertificate(path.to_owned()));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let mut tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(tls),
            connect_to,
        })
    }

    /// A TLS connection to the origin.
    pub async fn dial(&self, origin: &Origin) -> Result<TlsStream<TcpStream>, NetError> {
        let connect = async {
            let tcp = match self.connect_to {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((origin.host.as_str(), origin.port)).await,
            }?;
            tcp.set_nodelay(true)?;
            TlsConnector::from(self.tls.clone())
                .connect(origin.server_name().map_err(std::io::Error::other)?, tcp)
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(NetError::Connect {
                origin: origin.to_string(),
                source,
            }),
            Err(_) => Err(NetError::Timeout {
                origin: origin.to_string(),
            }),
        }
    }

    /// Sends one request (its URI is the path and query; `Host` is set here) and reads the
    /// whole answer.
    pub async fn exchange(
        &self,
        origin: &Origin,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, NetError> {
        let http = |source| NetError::Http {
            origin: origin.to_string(),
            source,
        };
        let work = async {
            let stream = self.dial(origin).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            set_host(&mut req, origin);
            let response = sender.send_request(req).await.map_err(http)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|_| NetError::TooLarge {
                    origin: origin.to_string(),
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(NetError::Timeout {
                    origin: origin.to_string(),
                })
            })
    }

    /// Sends an HTTP/1.1 upgrade request. On `101` the answer comes with the upgraded
    /// connection; any other answer comes with its body, read whole.
    pub async fn upgrade(
        &self,
        origin: &Origin,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Upgrade, NetError> {
        let http = |source| NetError::Http {
            origin: origin.to_string(),
            source,
        };
        let stream = self.dial(origin).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn.with_upgrades());
        set_host(&mut req, origin);
        let mut response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| NetError::Timeout {
                origin: origin.to_string(),
            })?
            .map_err(http)?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(&mut response).await.map_err(http)?;
            return Ok(Upgrade::Switched(TokioIo::new(upgraded)));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Upgrade::Refused(Response::from_parts(parts, body)))
    }
}

/// What an upgrade request got.
#[derive(Debug)]
pub enum Upgrade {
    Switched(TokioIo<Upgraded>),
    Refused(Response<Bytes>),
}

fn set_host<B>(req: &mut Request<B>, origin: &Origin) {
    let host = http::HeaderValue::from_str(&origin.authority())
        .expect("an origin's authority is a valid header value");
    req.headers_mut().insert(http::header::HOST, host);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_from_hosts_host_ports_and_urls() {
        for (text, host, port) in [
            ("box.example.com", "box.example.com", 443),
            ("Box.Example.com:8443", "box.example.com", 8443),
            ("https://auth.example.com:8443/x", "auth.example.com", 8443),
            ("127.0.0.1:9", "127.0.0.1", 9),
            ("[::1]:9", "[::1]", 9),
        ] {
            let origin = Origin::parse(text).unwrap();
            assert_eq!((origin.host.as_str(), origin.port), (host, port), "{text}");
        }
        for bad in [
            "http://a.example",
            "",
            "https://",
            "https://u:p@a.example",
            "a b",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_port_is_left_out_of_the_authority() {
        assert_eq!(Origin::parse("a.example").unwrap().authority(), "a.example");
        assert_eq!(
            Origin::parse("a.example:8443").unwrap().url(),
            "https://a.example:8443"
        );
    }
}
