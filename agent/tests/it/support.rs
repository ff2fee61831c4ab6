//! Test support: a throwaway PKI, a fake proxy that speaks the real agent protocol (TLS, the
//! upgrade with a verified credential, then the HTTP/2 client side), local targets on
//! 127.0.0.1:0 and the agent run in-process. Everything real: sockets, TLS, hyper both sides.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sekisho_agent::Agent;
use sekisho_agent::backoff::Backoff;
use sekisho_agent::config::{Config, Overrides, Proxy, Settings};
use sekisho_wire::agent_auth::{AgentCredential, AgentPublicKey};
use sekisho_wire::{AGENT_AUTH_HEADER, AGENT_CONNECT_PATH, AGENT_PROTOCOL, h2};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a test waits for anything that should happen soon.
pub(crate) const SOON: Duration = Duration::from_secs(10);

pub(crate) type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

/// A temporary directory with a CA (`ca.pem`), a leaf for `localhost` signed by it, and an
/// agent key (`agent.key`).
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) public_key: AgentPublicKey,
    server_tls: Arc<rustls::ServerConfig>,
}

impl Setup {
    pub(crate) fn new() -> Self {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Sekisho agent test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let key_path = dir.path().join("state/agent.key");
        let public_key = sekisho_agent::key::create(&key_path, false)
            .unwrap()
            .public_key();

        let mut server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            dir,
            ca_path,
            key_path,
            public_key,
            server_tls: Arc::new(server_tls),
        }
    }

    /// A fake proxy that accepts this setup's agent key.
    pub(crate) async fn peer(&self) -> Peer {
        self.peer_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A fake proxy that accepts this setup's agent key, listening on `addr`.
    pub(crate) async fn peer_at(&self, addr: SocketAddr) -> Peer {
        Peer::start(Arc::clone(&self.server_tls), self.public_key, addr).await
    }

    /// A fake proxy that knows only some other key.
    pub(crate) async fn peer_with_key(&self, key: AgentPublicKey) -> Peer {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Peer::start(Arc::clone(&self.server_tls), key, any).await
    }

    /// Settings for an agent named `nas` that dials `peer` and allows the given targets.
    pub(crate) fn settings(
        &self,
        peer: &Peer,
        tcp: &[SocketAddr],
        http: &[SocketAddr],
    ) -> Settings {
        self.settings_at(peer.addr, tcp, http)
    }

    /// Settings for an agent named `nas` that dials `proxy` (where a peer may start later).
    pub(crate) fn settings_at(
        &self,
        proxy: SocketAddr,
        tcp: &[SocketAddr],
        http: &[SocketAddr],
    ) -> Settings {
        let port = proxy.port();
        Config::empty()
            .settings(
                None,
                Overrides {
                    name: Some("nas".into()),
                    key_file: Some(self.key_path.clone()),
                    proxies: vec![Proxy {
                        url: format!("https://localhost:{port}").parse().unwrap(),
                        address: Some(proxy.to_string().parse().unwrap()),
                    }],
                    ca_file: Some(self.ca_path.clone()),
                    allow_tcp: tcp.iter().map(|a| a.to_string().parse().unwrap()).collect(),
                    allow_http: http
                        .iter()
                        .map(|a| a.to_string().parse().unwrap())
                        .collect(),
                },
            )
            .unwrap()
    }
}

/// The fake proxy: accepts TLS, checks the upgrade request and its credential like the real
/// hub must, answers 101 and becomes the HTTP/2 client of the agent.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    agents: mpsc::UnboundedReceiver<AgentConn>,
    /// When each refused upgrade request arrived, on the runtime's clock (paused or not).
    refusals: watch::Receiver<Vec<tokio::time::Instant>>,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    async fn start(tls: Arc<rustls::ServerConfig>, key: AgentPublicKey, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (agents_tx, agents) = mpsc::unbounded_channel();
        let (refused, refusals) = watch::channel(Vec::new());
        let refused = Arc::new(refused);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let host = format!("localhost:{}", addr.port());
        let task = tokio::spawn({
            let refused = Arc::clone(&refused);
            async move {
                // Not cancel-safe concerns here: the test aborts the whole task.
                while let Ok((tcp, _)) = listener.accept().await {
                    // A second handle on the socket, so a test can cut it like a dying proxy.
                    let tcp = tcp.into_std().unwrap();
                    let socket = Arc::new(tcp.try_clone().unwrap());
                    let tcp = TcpStream::from_std(tcp).unwrap();
                    let frozen = Arc::new(AtomicBool::new(false));
                    let tcp = Freezable {
                        inner: tcp,
                        frozen: Arc::clone(&frozen),
                    };
                    let acceptor = acceptor.clone();
                    let agents_tx = agents_tx.clone();
                    let refused = Arc::clone(&refused);
                    let host = host.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req| {
                            let socket = Arc::clone(&socket);
                            let frozen = Arc::clone(&frozen);
                            let agents_tx = agents_tx.clone();
                            let refused = Arc::clone(&refused);
                            let host = host.clone();
                            async move {
                                Ok::<_, Infallible>(upgrade(
                                    req, &host, key, socket, frozen, agents_tx, &refused,
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            agents,
            refusals,
            task,
        }
    }

    /// The next agent connection, within [`SOON`].
    pub(crate) async fn next_agent(&mut self) -> AgentConn {
        tokio::time::timeout(SOON, self.agents.recv())
            .await
            .expect("no agent connection in time")
            .expect("the peer stopped")
    }

    /// Whether another agent connection arrives within `within`.
    pub(crate) async fn agent_within(&mut self, within: Duration) -> Option<AgentConn> {
        tokio::time::timeout(within, self.agents.recv())
            .await
            .ok()
            .flatten()
    }

    pub(crate) fn refused(&self) -> usize {
        self.refusals.borrow().len()
    }

    /// Waits (within [`SOON`]) until `count` upgrade requests have been refused.
    pub(crate) async fn wait_for_refusals(&mut self, count: usize) {
        self.refusal_times(count, SOON).await;
    }

    /// When the first `count` refused upgrade requests arrived, waiting (within `within`) for
    /// them.
    pub(crate) async fn refusal_times(
        &mut self,
        count: usize,
        within: Duration,
    ) -> Vec<tokio::time::Instant> {
        let waited = tokio::time::timeout(within, self.refusals.wait_for(|t| t.len() >= count))
            .await
            .map(|times| times.expect("the peer stopped")[..count].to_vec());
        waited.unwrap_or_else(|_| panic!("only {} refusals within {within:?}", self.refused()))
    }
}

fn upgrade(
    mut req: Request<Incoming>,
    host: &str,
    key: AgentPublicKey,
    socket: Arc<std::net::TcpStream>,
    frozen: Arc<AtomicBool>,
    agents: mpsc::UnboundedSender<AgentConn>,
    refused: &watch::Sender<Vec<tokio::time::Instant>>,
) -> Response<Full<Bytes>> {
    let status = |status: StatusCode| {
        let mut response = Response::new(Full::default());
        *response.status_mut() = status;
        response
    };
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if req.method() != Method::GET
        || req.uri().path() != AGENT_CONNECT_PATH
        || header(header::HOST.as_str()) != host
        || !header(header::CONNECTION.as_str()).eq_ignore_ascii_case("upgrade")
        || header(header::UPGRADE.as_str()) != AGENT_PROTOCOL
    {
        return status(StatusCode::BAD_REQUEST);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let credential = match AgentCredential::parse(&header(AGENT_AUTH_HEADER))
        .and_then(|c| c.verify(host, &[key], now, 60).map(|()| c))
    {
        Ok(credential) => credential,
        Err(_) => {
            refused.send_modify(|times| times.push(tokio::time::Instant::now()));
            return status(StatusCode::UNAUTHORIZED);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = on_upgrade.await.unwrap();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2::STREAM_WINDOW)
            .initial_connection_window_size(h2::CONNECTION_WINDOW)
            .max_frame_size(h2::MAX_FRAME)
            .max_send_buf_size(h2::MAX_SEND_BUF);
        let (sender, connection) = builder.handshake(io).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let _ = agents.send(AgentConn {
            credential,
            sender,
            driver,
            socket,
            frozen,
        });
    });
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    response
        .headers_mut()
        .insert(header::CONNECTION, "upgrade".parse().unwrap());
    response
        .headers_mut()
        .insert(header::UPGRADE, AGENT_PROTOCOL.parse().unwrap());
    response
}

/// One agent connection, seen from the proxy's side.
pub(crate) struct AgentConn {
    pub(crate) credential: AgentCredential,
    pub(crate) sender: hyper::client::conn::http2::SendRequest<TestBody>,
    driver: JoinHandle<()>,
    socket: Arc<std::net::TcpStream>,
    frozen: Arc<AtomicBool>,
}

impl AgentConn {
    pub(crate) async fn request(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        tokio::time::timeout(SOON, self.sender.send_request(req))
            .await
            .expect("no answer in time")
            .unwrap()
    }

    /// `CONNECT target` on a new stream.
    pub(crate) async fn connect(&mut self, target: SocketAddr) -> Response<Incoming> {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(empty())
            .unwrap();
        self.request(req).await
    }

    /// An extended `CONNECT` (RFC 8441, `:protocol` `echo`) for `http://target/path`.
    pub(crate) async fn upgrade(&mut self, target: SocketAddr, path: &str) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("http://{target}{path}"))
            .body(empty())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("echo"));
        self.request(req).await
    }

    /// A byte stream to `target`, which must be accepted.
    pub(crate) async fn tunnel(&mut self, target: SocketAddr) -> TokioIo<Upgraded> {
        let response = self.connect(target).await;
        assert_eq!(response.status(), StatusCode::OK);
        TokioIo::new(hyper::upgrade::on(response).await.unwrap())
    }

    /// Cuts the connection without a word, like a proxy that died, even with streams open.
    pub(crate) fn kill(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.driver.abort();
    }

    /// Stops reading and writing without closing, like a proxy behind a dead network path.
    pub(crate) fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Waits (within [`SOON`]) for the connection to end.
    pub(crate) async fn closed(self) {
        let Self { sender, driver, .. } = self;
        drop(sender);
        tokio::time::timeout(SOON, driver)
            .await
            .expect("the connection is still open")
            .unwrap();
    }
}

/// A socket that can be made to hang: once frozen, every read and write stays pending.
struct Freezable {
    inner: TcpStream,
    frozen: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes `bytes` and reads the echo back.
pub(crate) async fn round_trip(io: &mut TokioIo<Upgraded>, bytes: &[u8]) {
    tokio::time::timeout(SOON, async {
        // Read while writing: a large write would otherwise wait on its own echo.
        let (mut read, mut write) = tokio::io::split(&mut *io);
        let mut back = vec![0; bytes.len()];
        let (written, read) = tokio::join!(write.write_all(bytes), read.read_exact(&mut back));
        written.unwrap();
        read.unwrap();
        assert!(back == bytes, "the echo differs");
    })
    .await
    .expect("no echo in time");
}

pub(crate) async fn body_text(response: Response<Incoming>) -> String {
    let bytes = tokio::time::timeout(SOON, response.into_body().collect())
        .await
        .expect("no body in time")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A TCP server that echoes every connection.
pub(crate) struct Echo {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = tcp.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A local HTTP/1.1 server. `POST` answers with the length of the body it read; anything else
/// with the method, path and `x-test` header it saw. Responses carry hop-by-hop headers the
/// agent must remove.
pub(crate) struct HttpServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_http(tcp));
            }
        });
        Self { addr, task }
    }
}

/// Answers `GET /switch` with `Upgrade` by switching to an echo of the bytes it then gets;
/// otherwise with a text that describes the request.
async fn serve_http(tcp: TcpStream) {
    let service = service_fn(|mut req: Request<Incoming>| async move {
        if let Some(protocol) = req.headers().get(header::UPGRADE).cloned()
            && req.uri().path() == "/switch"
        {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                }
            });
            return Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, protocol)
                .header(header::CONNECTION, "upgrade")
                .header("x-served-by", "local")
                .body(Full::default())
                .unwrap());
        }
        let text = if req.method() == Method::POST {
            let body = req.into_body().collect().await?.to_bytes();
            format!("read {} bytes", body.len())
        } else {
            let test = req
                .headers()
                .get("x-test")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            format!(
                "{} {} host={} x-test={test}",
                req.method(),
                req.uri(),
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            )
        };
        Ok::<_, hyper::Error>(
            Response::builder()
                .header("x-served-by", "local")
                .header("keep-alive", "timeout=5")
                .header("connection", "x-private")
                .header("x-private", "1")
                .body(Full::new(Bytes::from(text)))
                .unwrap(),
        )
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades()
        .await;
}

/// The agent, run in-process until stopped.
pub(crate) struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunningAgent {
    pub(crate) fn start(settings: Settings) -> Self {
        Self::start_agent(Agent::new(settings).unwrap())
    }

    /// Runs the agent with `backoff` between its dials.
    pub(crate) fn start_with_backoff(settings: Settings, backoff: Backoff) -> Self {
        Self::start_agent(Agent::new(settings).unwrap().with_backoff(backoff))
    }

    fn start_agent(agent: Agent) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Asks the agent to stop, as SIGTERM does.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits (within `within`) for `run` to return.
    pub(crate) async fn finished(&mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the agent is still running")
            .unwrap();
    }
}
