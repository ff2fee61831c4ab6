//! The bench's clients: a full TLS handshake that tells which certificate is served, an
//! HTTP/1.1 GET over it, a plain GET on an admin listener, and polling until an answer shows a
//! change. Every attempt is bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long one probe may take before it counts as a failed attempt.
const ATTEMPT: Duration = Duration::from_secs(2);

/// What a server answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
}

/// A TLS client that trusts the bench's CA alone and never resumes a session, so that every
/// handshake shows the certificate served at that moment.
#[derive(Clone)]
pub(crate) struct Probe {
    tls: Arc<rustls::ClientConfig>,
}

impl Probe {
    pub(crate) fn trusting(ca_pem: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed TLS 1.3 session presents no certificate at all.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            tls: Arc::new(config),
        })
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> anyhow::Result<(TlsStream<TcpStream>, Vec<u8>)> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.to_owned())?;
        let stream = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .context("no certificate was presented")?;
        Ok((stream, certificate))
    }

    /// The certificate served for `host` (a handshake, no request).
    pub(crate) async fn certificate(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let (_, certificate) = timeout(ATTEMPT, self.connect(addr, host))
            .await
            .context("the handshake took too long")??;
        Ok(certificate)
    }

    /// `GET https://host/path` on a new connection.
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Answer> {
        timeout(ATTEMPT, async {
            let (stream, _) = self.connect(addr, host).await?;
            let (status, body) = exchange(stream, host, path).await?;
            Ok(Answer { status, body })
        })
        .await
        .context("the request took too long")?
    }
}

/// `GET http://addr/path` (an admin listener).
pub(crate) async fn plain_get(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    timeout(ATTEMPT, async {
        let tcp = TcpStream::connect(addr).await?;
        exchange(tcp, &addr.to_string(), path).await
    })
    .await
    .context("the request took too long")?
}

async fn exchange<S>(stream: S, host: &str, path: &str) -> anyhow::Result<(StatusCode, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(path)
                .header(http::header::HOST, host)
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    connection.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The DER of the first certificate in `pem`.
pub(crate) fn der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// Runs `check` every `interval` until it returns `Some`, for at most `limit` after `since`.
/// Returns the time from `since` to the end of the check that passed, and what it returned.
/// An error from `check` is an attempt that failed (the server is not there yet, or still
/// serves the old state); the last one is told if the limit passes.
pub(crate) async fn until<T, F, Fut>(
    what: &str,
    since: Instant,
    interval: Duration,
    limit: Duration,
    mut check: F,
) -> anyhow::Result<(Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok((since.elapsed(), value)),
            Ok(None) => "not yet".to_owned(),
            Err(error) => format!("{error:#}"),
        };
        if since.elapsed() >= limit {
            bail!("{what}: not seen within {limit:?} (last attempt: {last})");
        }
        tokio::time::sleep(interval).await;
    }
}
