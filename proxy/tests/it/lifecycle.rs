//! Graceful shutdown: requests in flight finish, new connections are turned away, `/readyz`
//! says the proxy is draining, and the proxy stops.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::support::*;

/// Every wait in this file ends within this.
const LIMIT: Duration = Duration::from_secs(10);

/// A TCP relay in front of an upstream that reports each connection it accepts. The proxy
/// dials an upstream only to forward a request, so a report means a request is in flight.
struct Tap {
    addr: SocketAddr,
    connections: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, connections) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let _ = report.send(());
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }
}

/// True when a new connection to the proxy gets an HTTP answer; false when it is refused,
/// reset or closed before one (or nothing happens for a while). It asks for a host no route
/// serves, so the proxy answers 404 itself and never dials the upstream.
async fn answers_new_connections(pki: &Pki, https: SocketAddr, http2: bool) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(https).await.ok()?;
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tokio_rustls::TlsConnector::from(pki.client_config(alpn))
            .connect(ServerName::try_from("app.test").unwrap(), tcp)
            .await
            .ok()?;
        let io = TokioIo::new(tls);
        let req = request("nobody.test", "/", http2);
        let response = if http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .ok()?;
            tokio::spawn(conn);
            sender.send_request(req).await.ok()?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            sender.send_request(req).await.ok()?
        };
        Some(response.status())
    };
    matches!(timeout(Duration::from_secs(2), attempt).await, Ok(Some(_)))
}

async fn shutdown_finishes_the_request_in_flight(http2: bool) {
    let pki = Pki::new();
    let upstream = Upstream::start("app").await;
    let mut tap = Tap::start(upstream.addr).await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let mut proxy = Proxy::start(&format!(
        "{certs}upstreams:
  app: {{endpoints: ['http://{tap}']}}
hosts:
  - host: app.test
    public: true
    default: app
",
        certs = certificates_yaml(&[(cert, key)]),
        tap = tap.addr,
    ));
    let (https, admin) = (proxy.https(), proxy.admin());
    let (status, _, _) = plain_get(admin, "admin", "/readyz").await;
    assert_eq!(status, StatusCode::OK, "ready before the shutdown");
    assert!(answers_new_connections(&pki, https, http2).await);

    let client = TlsClient::new(&pki, https, http2);
    let in_flight = tokio::spawn(async move { client.get("app.test", "/slow/1500").await });
    timeout(LIMIT, tap.connections.recv())
        .await
        .expect("the request reaches the upstream");

    let stopping = proxy.shutdown_in_background();

    let (status, _, body) = timeout(LIMIT, plain_get(admin, "admin", "/readyz"))
        .await
        .expect("the admin listener answers while draining");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !stopping.is_finished(),
        "the slow request keeps the proxy running"
    );

    let turned_away = eventually(LIMIT, || async {
        !answers_new_connections(&pki, https, http2).await
    })
    .await;
    assert!(
        turned_away,
        "new connections are refused or closed after shutdown begins"
    );

    let (status, _, body) = timeout(LIMIT, in_flight)
        .await
        .expect("the request in flight finishes")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "app slept 1500 ms", "the whole body arrives");

    let stopped = eventually(LIMIT, || async { stopping.is_finished() }).await;
    assert!(stopped, "the proxy stops once the request is done");
    stopping.join().unwrap();
}

#[tokio::test]
async fn graceful_shutdown_completes_an_http1_request_in_flight_and_turns_new_connections_away() {
    shutdown_finishes_the_request_in_flight(false).await;
}

#[tokio::test]
async fn graceful_shutdown_completes_an_http2_request_in_flight_and_turns_new_connections_away() {
    shutdown_finishes_the_request_in_flight(true).await;
}

/// One site, `localhost`, served by `upstream` (with the development certificate).
fn site_yaml(upstream: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{endpoints: ['{}']}}\nhosts:\n  - host: localhost\n    public: true\n    default: app\n",
        upstream.url()
    )
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns the head and the body.
async fn read_one_response(conn: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "the proxy closed the connection");
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_keep_alive_connection_that_went_quiet_serves_its_next_requests() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start("app").await;
    let proxy = Proxy::start(&site_yaml(&upstream));
    let mut conn = tokio::net::TcpStream::connect(proxy.http()).await.unwrap();
    let request = b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n";
    conn.write_all(request).await.unwrap();
    let (head, body) = read_one_response(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("upstream: app\n"), "{body}");

    // Quiet for longer than the proxy waits before it parks the connection (1 s) … The quiet
    // is what is under test: the proxy's own timer parks the connection, on the proxy's
    // runtime and clock, and nothing outside shows that it has.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // … then a request that arrives in two pieces, and one pipelined behind it. The pause
    // between the pieces is under test too: it makes the proxy read the head in two parts.
    conn.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.write_all(b"st: localhost\r\n\r\nGET /three HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    for path in ["/two", "/three"] {
        let (head, body) = read_one_response(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(echoed(&body)["path"], path, "{body}");
    }
}

#[tokio::test]
async fn a_half_sent_request_is_cut_off_at_the_header_timeout_even_when_quiet() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start("app").await;
    let proxy = Proxy::start(&format!(
        "{}limits: {{header_read_timeout: 3s}}\n",
        site_yaml(&upstream)
    ));
    let mut conn = tokio::net::TcpStream::connect(proxy.http()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_one_response(&mut conn).await;
    // Half a head, then silence well past the parking delay: parking must not restart the
    // header timeout, or a client could hold the connection for ever.
    conn.write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "still open 8 s after a half-sent head");
    assert!(started.elapsed() >= Duration::from_millis(2500));
}
