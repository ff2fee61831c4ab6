//! WebSocket upgrades through the TLS listener: messages both ways, a clean close, a 502 (not a
//! hang) when the upstream is down, and a 403 for a handshake from a page on another origin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, accept_async, client_async};

use crate::support::*;

/// Every wait in this file ends within this.
const LIMIT: Duration = Duration::from_secs(10);

/// An upstream that accepts a WebSocket on every connection and echoes its text and binary
/// messages. It counts the connections it accepted, and for each session reports whether the
/// client closed it with a Close frame.
struct EchoUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    sessions: mpsc::UnboundedReceiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, sessions) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let report = report.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = accept_async(stream).await else {
                        let _ = report.send(false);
                        return;
                    };
                    let mut closed_by_client = false;
                    // Keeps reading after a Close so that tungstenite sends the reply.
                    while let Some(message) = ws.next().await {
                        match message {
                            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                if ws.send(m).await.is_err() {
                                    break;
                                }
                            }
                            Ok(Message::Close(_)) => closed_by_client = true,
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = report.send(closed_by_client);
                });
            }
        });
        Self {
            addr,
            connections,
            sessions,
            task,
        }
    }
}

fn site(pki: &Pki, endpoint: &str) -> String {
    let (cert, key) = pki.write_leaf("site", &["ws.test"]);
    format!(
        "{certs}upstreams:
  ws: {{endpoints: ['{endpoint}']}}
hosts:
  - host: ws.test
    public: true
    default: ws
",
        certs = certificates_yaml(&[(cert, key)]),
    )
}

type Connected = Result<
    (
        WebSocketStream<TlsStream<TcpStream>>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
>;

/// Opens `wss://ws.test{path}` through the proxy's TLS listener, over HTTP/1.1.
async fn connect(pki: &Pki, proxy: SocketAddr, path: &str) -> Connected {
    connect_from(pki, proxy, path, None).await
}

/// As [`connect`], with `Origin: origin` when given, as a page's script would send it.
async fn connect_from(pki: &Pki, proxy: SocketAddr, path: &str, origin: Option<&str>) -> Connected {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]))
        .connect(ServerName::try_from("ws.test").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let mut request = format!("wss://ws.test{path}")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    client_async(request, tls).await
}

async fn next_message(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Option<Message> {
    timeout(LIMIT, ws.next())
        .await
        .expect("a message within the limit")
        .map(|m| m.expect("a well-formed message"))
}

#[tokio::test]
async fn websocket_messages_pass_both_ways_through_the_tls_listener_and_close_cleanly() {
    let pki = Pki::new();
    let mut echo = EchoUpstream::start().await;
    let proxy = Proxy::start(&site(&pki, &format!("http://{}", echo.addr)));

    let (mut ws, response) = timeout(LIMIT, connect(&pki, proxy.https(), "/echo"))
        .await
        .expect("the upgrade completes within the limit")
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello through sekisho"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text("hello through sekisho"))
    );

    // Large enough to span many frames and TLS records on both legs.
    let blob: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::binary(blob)));

    ws.send(Message::text("after binary")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text("after binary"))
    );

    ws.close(None).await.unwrap();
    let reply = next_message(&mut ws).await;
    assert!(
        matches!(reply, Some(Message::Close(_))),
        "the upstream answers the close: {reply:?}"
    );
    assert_eq!(next_message(&mut ws).await, None, "then the stream ends");
    let clean = timeout(LIMIT, echo.sessions.recv()).await.unwrap();
    assert_eq!(
        clean,
        Some(true),
        "the upstream saw the client's Close frame"
    );
}

#[tokio::test]
async fn a_websocket_upgrade_to_an_upstream_that_is_down_gets_502() {
    let pki = Pki::new();
    let closed = closed_port();
    let proxy = Proxy::start(&site(&pki, &format!("http://{closed}")));

    let outcome = timeout(LIMIT, connect(&pki, proxy.https(), "/echo"))
        .await
        .expect("an answer within the limit, not a hang");
    match outcome {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            assert!(response.headers().contains_key("x-request-id"));
        }
        Err(other) => panic!("expected an HTTP 502, got {other}"),
        Ok(_) => panic!("the upgrade succeeded to an upstream that is down"),
    }
}

#[tokio::test]
async fn an_open_websocket_counts_as_a_connection_and_outlives_the_start_of_a_shutdown() {
    let pki = Pki::new();
    let echo = EchoUpstream::start().await;
    let mut proxy = Proxy::start(&format!(
        "{}limits: {{max_connections: 1, shutdown_grace: 5s}}\n",
        site(&pki, &format!("http://{}", echo.addr))
    ));
    let (mut ws, _) = timeout(LIMIT, connect(&pki, proxy.https(), "/echo"))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
    assert_eq!(
        proxy
            .metric(r#"sekisho_open_connections{listener="https"}"#)
            .await,
        1.0,
        "the upgraded connection is still counted"
    );
    // The only connection slot is taken: another client waits, and gets through once the
    // WebSocket closes (so the wait is the limit's doing, not a broken client).
    let mut waiting = tokio::spawn(connect_plain_tls(
        pki.client_config(&[b"http/1.1"]),
        proxy.https(),
    ));
    assert!(
        timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a second client got past the limit"
    );
    ws.close(None).await.unwrap();
    let _ = next_message(&mut ws).await;
    drop(ws);
    timeout(LIMIT, waiting)
        .await
        .expect("the waiting client gets the slot once the WebSocket closed")
        .unwrap();
    let open = r#"sekisho_open_connections{listener="https"}"#;
    assert!(
        eventually(LIMIT, || async { proxy.metric(open).await == 0.0 }).await,
        "both connections are closed"
    );
    let (mut ws, _) = timeout(LIMIT, connect(&pki, proxy.https(), "/echo"))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("again")));

    // Shutdown begins (the listener closes); the WebSocket keeps working during the grace
    // period, and the shutdown waits for it.
    let https = proxy.https();
    let stopped = proxy.shutdown_in_background();
    assert!(
        eventually(LIMIT, || async { TcpStream::connect(https).await.is_err() }).await,
        "the proxy stops accepting once the shutdown begins"
    );
    assert!(
        !stopped.is_finished(),
        "shutdown did not wait for the open WebSocket"
    );
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("two")));
    ws.close(None).await.unwrap();
    let _ = next_message(&mut ws).await;
    drop(ws);
    // Well before the 5 s grace period runs out.
    let done = timeout(
        Duration::from_secs(3),
        tokio::task::spawn_blocking(move || stopped.join()),
    )
    .await
    .expect("shutdown ends once the WebSocket closed");
    assert!(done.is_ok());
}

/// A TLS handshake with the proxy (it only completes once the proxy accepts the connection).
async fn connect_plain_tls(config: std::sync::Arc<rustls::ClientConfig>, addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("ws.test").unwrap(), tcp)
        .await;
}

/// A public host that lets pages on `https://tools.example` open WebSockets, except on
/// `/own-only`.
fn site_with_origins(pki: &Pki, endpoint: &str) -> String {
    site(pki, endpoint).replace(
        "    default: ws\n",
        "    default: ws\n    websocket_origins: ['https://tools.example']\n    paths: [{path: /own-only, upstream: ws, websocket_origins: []}]\n",
    )
}

#[tokio::test]
async fn a_websocket_handshake_from_another_origin_gets_403_and_never_reaches_the_upstream() {
    let pki = Pki::new();
    let echo = EchoUpstream::start().await;
    let proxy = Proxy::start(&site_with_origins(&pki, &format!("http://{}", echo.addr)));

    for (path, origin) in [
        ("/echo", "https://evil.example"),
        ("/echo", "null"),
        ("/echo", "http://ws.test"),
        ("/own-only", "https://tools.example"),
    ] {
        let outcome = timeout(LIMIT, connect_from(&pki, proxy.https(), path, Some(origin)))
            .await
            .expect("an answer within the limit");
        match outcome {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(
                    response.status(),
                    StatusCode::FORBIDDEN,
                    "{path} from {origin}"
                );
                assert!(response.headers().contains_key("x-request-id"));
                let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], "cross_origin", "{body}");
            }
            Err(other) => panic!("{path} from {origin}: expected an HTTP 403, got {other}"),
            Ok(_) => panic!("{path} from {origin}: the upgrade succeeded"),
        }
    }
    assert_eq!(
        echo.connections.load(Ordering::SeqCst),
        0,
        "the upstream saw a handshake from another origin"
    );
}

#[tokio::test]
async fn a_websocket_handshake_from_the_sites_own_origin_a_listed_one_or_no_page_is_upgraded() {
    let pki = Pki::new();
    let echo = EchoUpstream::start().await;
    let proxy = Proxy::start(&site_with_origins(&pki, &format!("http://{}", echo.addr)));

    for (path, origin) in [
        // The client's `Host` is `ws.test`, without a port.
        ("/echo", Some("https://ws.test")),
        ("/own-only", Some("https://WS.test:443")),
        ("/echo", Some("https://tools.example")),
        // No `Origin`: not a page (a CLI, a program).
        ("/own-only", None),
    ] {
        let (mut ws, response) = timeout(LIMIT, connect_from(&pki, proxy.https(), path, origin))
            .await
            .expect("the upgrade completes within the limit")
            .unwrap_or_else(|error| panic!("{path} from {origin:?}: {error}"));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Some(Message::text("hello")));
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 4);
}
