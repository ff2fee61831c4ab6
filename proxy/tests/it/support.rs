//! Test support: a throwaway PKI, in-process upstreams on 127.0.0.1:0, the proxy started from
//! a configuration file in a temporary directory, and HTTP/1.1 and HTTP/2 clients that trust
//! the test CA. Everything real: sockets, TLS, hyper on both sides.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

pub(crate) type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A CA and certificates it signs, written as PEM files in a temporary directory.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca_pem: String,
    pki: sekisho_testkit::Pki,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let pki = sekisho_testkit::Pki::new("Sekisho test CA").unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: pki.ca_pem.clone(),
            pki,
        }
    }

    /// A leaf for `names`, as PEM (certificate, key).
    pub(crate) fn leaf(&self, names: &[&str]) -> (String, String) {
        let leaf = self.pki.leaf(names).unwrap();
        (leaf.cert_pem, leaf.key_pem)
    }

    /// Writes a leaf for `names` to `<stem>.crt` / `<stem>.key` and returns the paths.
    pub(crate) fn write_leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let cert_path = self.dir.path().join(format!("{stem}.crt"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        write_atomically(&cert_path, cert.as_bytes());
        write_atomically(&key_path, key.as_bytes());
        (cert_path, key_path)
    }

    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.pki.client_config(alpn).unwrap()
    }
}

/// Replaces a file the way a careful writer does: write aside, then rename over.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An upstream that describes what it received. Paths:
/// - `/slow/<ms>`: waits before answering;
/// - `/bytes/<n>`: streams n zero bytes in 64 KiB chunks;
/// - `/count`: reads the whole request body and answers with its length;
/// - anything else: `name`, method, path and headers as text, one `name: value` per line.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub(crate) async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_answer(name, req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn upstream_answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/") {
        // The slowness is what the timeout tests exercise.
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        return Ok(Response::new(full(format!("{name} slept {ms} ms"))));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(Response::new(zeros(n.parse().unwrap())));
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
            }
        }
        return Ok(Response::new(full(total.to_string())));
    }
    let mut text = format!(
        "upstream: {name}\nmethod: {}\npath: {}\n",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(Response::new(full(text)))
}

/// A body of `n` zero bytes, produced in 64 KiB chunks as it is read.
pub(crate) fn zeros(n: u64) -> TestBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![0u8; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                        chunk.slice(..take as usize),
                    )),
                    left - take,
                )
            })
        }
    });
    StreamBody::new(stream).boxed()
}

/// A line-per-header text answer from [`Upstream`], parsed.
pub(crate) fn echoed(body: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in body.lines() {
        if let Some((k, v)) = line.split_once(": ")
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            )
        {
            map.append(k, v);
        }
    }
    map
}

/// The proxy, started in-process from a configuration file it watches.
pub(crate) struct Proxy {
    pub(crate) running: Option<sekisho_proxy::Running>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config_path: PathBuf,
    pub(crate) access_log: PathBuf,
}

/// The `listen` block every test uses: loopback, ephemeral ports.
pub(crate) const LISTEN: &str = "listen:
  https: 127.0.0.1:0
  http: 127.0.0.1:0
  http_mode: serve
  admin: 127.0.0.1:0
workers: 2
";

impl Proxy {
    /// Starts the proxy with `LISTEN` followed by `rest` (YAML).
    pub(crate) fn start(rest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sekisho.yaml");
        std::fs::write(&config_path, format!("{LISTEN}{rest}")).unwrap();
        let access_log = dir.path().join("access.log");
        let log_file = std::fs::File::create(&access_log).unwrap();
        let running = sekisho_proxy::start(sekisho_proxy::Options {
            config_path: Some(config_path.clone()),
            access_log: Some(Box::new(log_file)),
            handle_signals: false,
            dev_ca_dir: None,
            kubernetes: None,
        })
        .expect("proxy starts");
        Self {
            running: Some(running),
            dir,
            config_path,
            access_log,
        }
    }

    pub(crate) fn running(&self) -> &sekisho_proxy::Running {
        self.running.as_ref().unwrap()
    }

    pub(crate) fn https(&self) -> SocketAddr {
        self.running().https_addr
    }

    pub(crate) fn http(&self) -> SocketAddr {
        self.running().http_addr.unwrap()
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        self.running().admin_addr
    }

    /// Rewrites the configuration file (keeping `LISTEN`).
    pub(crate) fn rewrite(&self, rest: &str) {
        write_atomically(&self.config_path, format!("{LISTEN}{rest}").as_bytes());
    }

    /// The admin listener's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let (status, _, body) = plain_get(self.admin(), "admin", "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// The value of one sample line of `/metrics` (0 when absent).
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the proxy gracefully in the background; returns a handle that ends with it.
    pub(crate) fn shutdown_in_background(&mut self) -> std::thread::JoinHandle<()> {
        let running = self.running.take().unwrap();
        running.shutdown();
        std::thread::spawn(move || running.wait())
    }
}

impl Drop for Proxy {
    /// Starts a graceful shutdown without waiting for it: the test's own runtime, which drives
    /// the clients' connections, may be the thread this runs on, and HTTP/2 shutdown waits for
    /// the client to acknowledge GOAWAY.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that speaks TLS to the proxy (whatever host is asked for, it dials `addr`), with
/// the test CA trusted. `http2` picks HTTP/2 by ALPN; otherwise HTTP/1.1.
pub(crate) struct TlsClient {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    http2: bool,
}

impl TlsClient {
    pub(crate) fn new(pki: &Pki, addr: SocketAddr, http2: bool) -> Self {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        Self {
            addr,
            config: pki.client_config(alpn),
            http2,
        }
    }

    /// One request on a new connection with SNI `host`.
    pub(crate) async fn send(&self, host: &str, req: Request<TestBody>) -> Response<Incoming> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
            .await
            .expect("TLS handshake with the proxy");
        let io = TokioIo::new(tls);
        if self.http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            sender.send_request(req).await.unwrap()
        }
    }

    /// GET `https://host/path`, the whole body as text.
    pub(crate) async fn get(&self, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = request(host, path, self.http2);
        read_text(self.send(host, req).await).await
    }
}

/// A GET request for `host` and `path`; HTTP/2 requests carry the host as `:authority`.
pub(crate) fn request(host: &str, path: &str, http2: bool) -> Request<TestBody> {
    let builder = if http2 {
        Request::get(format!("https://{host}{path}"))
    } else {
        Request::get(path).header("host", host)
    };
    builder.body(empty()).unwrap()
}

pub(crate) async fn read_text(response: Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A plain-HTTP GET (to the admin listener or a plain listener) with a given Host.
pub(crate) async fn plain_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, HeaderMap, String) {
    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    read_text(client.request(req).await.unwrap()).await
}

/// The leaf certificate the proxy presents for `sni`.
pub(crate) async fn served_certificate(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    session.peer_certificates().unwrap()[0].clone().into_owned()
}

pub(crate) fn pem_to_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The certificates block for a list of (cert, key) paths.
pub(crate) fn certificates_yaml(files: &[(PathBuf, PathBuf)]) -> String {
    let mut yaml = String::from("tls:\n  certificates:\n");
    for (cert, key) in files {
        yaml.push_str(&format!(
            "    - {{cert: '{}', key: '{}'}}\n",
            cert.display(),
            key.display()
        ));
    }
    yaml
}

/// A loopback address nobody listens on: bound, noted, released.
pub(crate) fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An `identity:` section with one provider that is never contacted (providers are discovered
/// on first use), and `extra` lines (indented two spaces) in it.
pub(crate) fn identity_yaml(dir: &Path, extra: &str) -> String {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "s3cret").unwrap();
    format!(
        "identity:
  auth_host: auth.test
  dangerous_allow_http_issuers: true
{extra}  providers:
    - {{name: corp, issuer: 'http://127.0.0.1:9', client_id: sekisho, client_secret_file: '{}'}}
",
        secret.display()
    )
}

/// A session cookie's value for `host`, sealed with the session keys of the configuration at
/// `config` by `sekisho-proxy dev-session` (`args`: `--subject`, `--email`, `--group`, ...).
pub(crate) fn dev_session_cookie(config: &Path, host: &str, args: &[&str]) -> String {
    let sealed = std::process::Command::new(env!("CARGO_BIN_EXE_sekisho-proxy"))
        .arg("--config")
        .arg(config)
        .args(["dev-session", "--host", host])
        .args(args)
        .output()
        .unwrap();
    assert!(sealed.status.success(), "{sealed:?}");
    String::from_utf8(sealed.stdout).unwrap().trim().to_owned()
}
