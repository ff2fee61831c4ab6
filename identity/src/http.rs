//! A small HTTP client for talking to OpenID providers: discovery, JWKS and the token endpoint.
//!
//! Built on hyper's legacy client with rustls (ring provider). Every request has a deadline that
//! covers connecting, the response head and the whole body, and a response body larger than the
//! configured limit is refused while it is being read, before it is buffered in full. Redirects
//! are not followed: OpenID endpoints must answer directly.
//!
//! Plain `http://` is refused unless [`HttpClientConfig::allow_plain_http`] is set, which the
//! development IdP (http on loopback) needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How the client talks to providers.
#[derive(Clone, Debug)]
pub struct HttpClientConfig {
    /// Deadline for one request: connect, send, and read the whole response.
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Extra trust anchors (PEM, one or more certificates) added to the system roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Whether `http://` URLs may be used at all. Only for a development IdP on loopback.
    pub allow_plain_http: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            extra_ca_pem: None,
            allow_plain_http: false,
        }
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientBuildError {
    #[error("the extra CA PEM could not be parsed")]
    ExtraCaPem(#[source] rustls_pki_types::pem::Error),
    #[error("the extra CA PEM holds no certificate")]
    ExtraCaPemEmpty,
    #[error("an extra CA certificate was rejected")]
    ExtraCaRejected(#[source] rustls::Error),
    #[error("no trust anchors: the system has no usable roots and no extra CA was given")]
    NoTrustAnchors,
    #[error("the TLS configuration could not be built")]
    Tls(#[source] rustls::Error),
}

/// One request to a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("plain http is not allowed for {0}")]
    PlainHttpRefused(String),
    #[error("unsupported URL scheme in {0}")]
    UnsupportedScheme(String),
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
    #[error("response body is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("reading the response body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An HTTP client for OpenID providers. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_response_bytes: usize,
    allow_plain_http: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds a client trusting the system roots plus `config.extra_ca_pem`.
    pub fn new(config: &HttpClientConfig) -> Result<Self, HttpClientBuildError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "a system root certificate could not be loaded");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(
                added,
                ignored,
                "some system root certificates were unusable"
            );
        }
        if let Some(pem) = &config.extra_ca_pem {
            let mut found = false;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(HttpClientBuildError::ExtraCaPem)?;
                roots
                    .add(cert)
                    .map_err(HttpClientBuildError::ExtraCaRejected)?;
                found = true;
            }
            if !found {
                return Err(HttpClientBuildError::ExtraCaPemEmpty);
            }
        }
        if roots.is_empty() && !config.allow_plain_http {
            return Err(HttpClientBuildError::NoTrustAnchors);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(HttpClientBuildError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            inner,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            allow_plain_http: config.allow_plain_http,
        })
    }

    /// Sends one request and reads the whole response, within the deadline and size limit.
    /// Redirects are returned as they are, never followed.
    pub async fn execute(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        match request.uri().scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_plain_http => {}
            Some("http") => return Err(HttpError::PlainHttpRefused(request.uri().to_string())),
            _ => return Err(HttpError::UnsupportedScheme(request.uri().to_string())),
        }
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let limit = self.max_response_bytes;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(HttpError::Request)?;
            let (parts, body) = response.into_parts();
            let collected = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.is::<LengthLimitError>() {
                    HttpError::ResponseTooLarge(limit)
                } else {
                    HttpError::Body(e)
                }
            })?;
            Ok(http::Response::from_parts(
                parts,
                collected.to_bytes().to_vec(),
            ))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> HttpClient {
        HttpClient::new(&HttpClientConfig {
            allow_plain_http: true,
            ..HttpClientConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn extra_ca_pem_without_a_certificate_is_refused() {
        let err = HttpClient::new(&HttpClientConfig {
            extra_ca_pem: Some(b"not a pem".to_vec()),
            allow_plain_http: true,
            ..HttpClientConfig::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, HttpClientBuildError::ExtraCaPemEmpty),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn plain_http_is_refused_unless_allowed() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let client = HttpClient::new(&HttpClientConfig {
            extra_ca_pem: Some(ca.cert.pem().into_bytes()),
            allow_plain_http: false,
            ..HttpClientConfig::default()
        })
        .unwrap();
        let req = http::Request::get("http://127.0.0.1:1/")
            .body(Vec::new())
            .unwrap();
        let err = client.execute(req).await.unwrap_err();
        assert!(matches!(err, HttpError::PlainHttpRefused(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_response_larger_than_the_limit_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await.unwrap();
            let body = vec![b'x'; 4096];
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(&body).await.unwrap();
        });
        let client = HttpClient::new(&HttpClientConfig {
            max_response_bytes: 1000,
            allow_plain_http: true,
            ..HttpClientConfig::default()
        })
        .unwrap();
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Vec::new())
            .unwrap();
        let err = client.execute(req).await.unwrap_err();
        assert!(matches!(err, HttpError::ResponseTooLarge(1000)), "{err:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(sock);
        });
        let client = HttpClient::new(&HttpClientConfig {
            timeout: Duration::from_millis(200),
            allow_plain_http: true,
            ..HttpClientConfig::default()
        })
        .unwrap();
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Vec::new())
            .unwrap();
        let err = client.execute(req).await.unwrap_err();
        assert!(matches!(err, HttpError::Timeout(_)), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn unsupported_schemes_are_refused() {
        let req = http::Request::get("ftp://127.0.0.1/")
            .body(Vec::new())
            .unwrap();
        let err = plain().execute(req).await.unwrap_err();
        assert!(matches!(err, HttpError::UnsupportedScheme(_)), "{err:?}");
    }
}
