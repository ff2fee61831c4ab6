//! Small servers the browser talks to: an HTTPS "app" with a fresh self-signed certificate
//! and a plain-http redirect target that records what it receives.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{net::TcpListener, task::JoinHandle};

/// An HTTPS server on 127.0.0.1:0 for one host name, with a self-signed certificate made for
/// this run. `/` sets a cookie and shows `marker` in `#greeting`; `/api` answers `pong`.
pub(crate) struct HttpsApp {
    pub(crate) port: u16,
    pub(crate) cert_pem: String,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpsApp {
    pub(crate) async fn start(host: &str, marker: &'static str) -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()])?;
        let cert_pem = certified.cert.pem();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let chain = vec![CertificateDer::from(certified.cert.der().to_vec())];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(app_response(&request, marker)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            port,
            cert_pem,
            requests,
            task,
        })
    }

    /// How many HTTP requests the server has answered.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpsApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn app_response(request: &Request<Incoming>, marker: &str) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/api" => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::from("pong"))
            .expect("a valid response"),
        _ => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header(
                "set-cookie",
                "app_session=s3cr3t; Path=/; Secure; HttpOnly; SameSite=Lax",
            )
            .body(Full::from(format!(
                "<!doctype html><title>app</title><h1 id=\"greeting\">{marker}</h1>"
            )))
            .expect("a valid response"),
    }
}

/// A plain-http redirect target on 127.0.0.1:0 that records the query string of every request
/// to `/cb` and shows `#callback`.
pub(crate) struct Callback {
    pub(crate) port: u16,
    queries: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Callback {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let recorded = queries.clone();
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        if request.uri().path() == "/cb" {
                            let query = request.uri().query().unwrap_or_default().to_owned();
                            recorded.lock().expect("not poisoned").push(query);
                        }
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "text/html; charset=utf-8")
                                    .body(Full::<Bytes>::from(
                                        "<!doctype html><h1 id=\"callback\">callback received</h1>",
                                    ))
                                    .expect("a valid response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Self {
            port,
            queries,
            task,
        })
    }

    pub(crate) fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/cb", self.port)
    }

    /// The query strings received at `/cb`, parsed, oldest first.
    pub(crate) fn received(&self) -> Vec<Vec<(String, String)>> {
        self.queries
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|query| {
                url::form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect()
            })
            .collect()
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of the first `name` in a parsed query.
pub(crate) fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// An error with its whole cause chain, for asserting on a WebDriver error's text.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
