//! WebSocket upgrades through the TLS listener: messages both ways, a clean close, and a 502
//! (not a hang) when the upstream is down.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, accept_async, client_async};

use crate::support::*;

/// Every wait in this file ends within this.
const LIMIT: Duration = Duration::from_secs(10);

/// An upstream that accepts a WebSocket on every connection and echoes its text and binary
/// messages. For each session it reports whether the client closed it with a Close frame.
struct EchoUpstream {
    addr: SocketAddr,
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
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
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

/// Opens `wss://ws.test{path}` through the proxy's TLS listener, over HTTP/1.1.
async fn connect(
    pki: &Pki,
    proxy: SocketAddr,
    path: &str,
) -> Result<
    (
        WebSocketStream<TlsStream<TcpStream>>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]))
        .connect(ServerName::try_from("ws.test").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    client_async(format!("wss://ws.test{path}"), tls).await
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
    // The only connection slot is taken: another client waits.
    let waiting = tokio::spawn(connect_plain_tls(
        pki.client_config(&[b"http/1.1"]),
        proxy.https(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second client got past the limit");
    waiting.abort();

    // Shutdown begins; the WebSocket keeps working during the grace period.
    let stopped = proxy.shutdown_in_background();
    tokio::time::sleep(Duration::from_millis(300)).await;
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
