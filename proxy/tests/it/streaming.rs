//! Bodies stream through the proxy: a gibibyte up and a gibibyte down with the proxy's memory
//! bounded (the proxy runs as its own process so its peak RSS can be read), and server-sent
//! events that reach the client one by one.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::support::*;

const GIB: u64 = 1 << 30;

/// The proxy's peak resident memory while a gibibyte passes must stay under this.
const PEAK_RSS_LIMIT: u64 = 96 * 1024 * 1024;

/// A gibibyte through TLS in a debug build takes seconds; this bounds a stuck transfer.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

/// Every other wait in this file ends within this.
const LIMIT: Duration = Duration::from_secs(10);

/// A gibibyte through TLS keeps a core busy for seconds; two at once on a small machine starve
/// the other tests' timers, so the big transfers take turns.
static BIG_TRANSFER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `sekisho-proxy` binary as a child process, killed when dropped (also on panic).
struct ProxyProcess {
    child: Child,
    https: SocketAddr,
    /// Standard error so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    /// Starts the binary with `LISTEN` followed by `rest`, and learns the HTTPS address from
    /// its "serving" log line.
    async fn start(rest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sekisho.yaml");
        std::fs::write(&config, format!("{LISTEN}{rest}")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sekisho-proxy"))
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the proxy binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (serving_tx, serving_rx) = oneshot::channel();
        {
            let log = log.clone();
            // Drains standard error for the child's whole life so that it never blocks on it.
            std::thread::spawn(move || {
                let mut serving_tx = Some(serving_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(https) = serving_address(&line)
                        && let Some(tx) = serving_tx.take()
                    {
                        let _ = tx.send(https);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut process = Self {
            child,
            https: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            _dir: dir,
        };
        match timeout(LIMIT, serving_rx).await {
            Ok(Ok(https)) => process.https = https,
            _ => panic!(
                "the proxy did not report serving; stderr:\n{}",
                process.log.lock().unwrap().join("\n")
            ),
        }
        process
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }
}

/// The HTTPS address from the JSON line `{"message":"sekisho-proxy is serving","https":...}`.
fn serving_address(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value["message"] != "sekisho-proxy is serving" {
        return None;
    }
    value["https"].as_str()?.parse().ok()
}

fn big_site(pki: &Pki, upstream: &Upstream) -> String {
    let (cert, key) = pki.write_leaf("site", &["big.test"]);
    format!(
        "{certs}access_log: false
upstreams:
  big: {{endpoints: ['{upstream}']}}
hosts:
  - host: big.test
    public: true
    default: big
",
        certs = certificates_yaml(&[(cert, key)]),
        upstream = upstream.url(),
    )
}

fn assert_small(proxy: &ProxyProcess, what: &str) {
    let peak = proxy.peak_rss();
    eprintln!("peak RSS after {what}: {} KiB", peak >> 10);
    assert!(
        peak < PEAK_RSS_LIMIT,
        "the proxy's peak RSS reached {} MiB during {what} (limit {} MiB)",
        peak >> 20,
        PEAK_RSS_LIMIT >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_upload_streams_through_with_bounded_proxy_memory() {
    let _turn = BIG_TRANSFER.lock().await;
    let pki = Pki::new();
    let upstream = Upstream::start("big").await;
    let proxy = ProxyProcess::start(&big_site(&pki, &upstream)).await;
    let client = TlsClient::new(&pki, proxy.https, false);

    // No length: HTTP/1.1 chunked, produced as hyper asks for it.
    let req = Request::post("/count")
        .header("host", "big.test")
        .body(zeros(GIB))
        .unwrap();
    let (status, _, body) = timeout(TRANSFER_LIMIT, async {
        read_text(client.send("big.test", req).await).await
    })
    .await
    .expect("the upload finishes within the limit");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, GIB.to_string(), "the upstream counted every byte");
    assert_small(&proxy, "a 1 GiB upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_download_over_http2_streams_through_with_bounded_proxy_memory() {
    let _turn = BIG_TRANSFER.lock().await;
    let pki = Pki::new();
    let upstream = Upstream::start("big").await;
    let proxy = ProxyProcess::start(&big_site(&pki, &upstream)).await;
    let client = TlsClient::new(&pki, proxy.https, true);

    let received = timeout(TRANSFER_LIMIT, async {
        let response = client
            .send(
                "big.test",
                request("big.test", &format!("/bytes/{GIB}"), true),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("the body arrives whole").into_data() {
                received += data.len() as u64;
            }
        }
        received
    })
    .await
    .expect("the download finishes within the limit");
    assert_eq!(received, GIB, "every byte arrived");
    assert_small(&proxy, "a 1 GiB download");
}

/// An upstream that answers every request with an event stream the test writes to: each
/// request hands the test a sender, and each `Bytes` sent is one chunk on the wire.
struct EventUpstream {
    addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let streams_tx = streams_tx.clone();
                let service = service_fn(move |_req: Request<Incoming>| {
                    let (tx, rx) = mpsc::channel::<Bytes>(1);
                    let _ = streams_tx.send(tx);
                    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                        let chunk = rx.recv().await?;
                        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
                    });
                    let response = Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(StreamBody::new(chunks))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            streams,
            task,
        }
    }
}

/// Reads from `body` until `len` bytes have arrived (a chunk may come in pieces).
async fn read_exactly(body: &mut Incoming, len: usize) -> String {
    let mut text = Vec::new();
    while text.len() < len {
        let frame = body
            .frame()
            .await
            .expect("the stream is still open")
            .expect("the body arrives whole");
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test]
async fn server_sent_events_reach_the_client_before_the_next_one_is_sent() {
    let pki = Pki::new();
    let mut upstream = EventUpstream::start().await;
    let (cert, key) = pki.write_leaf("site", &["events.test"]);
    let proxy = Proxy::start(&format!(
        "{certs}upstreams:
  events: {{endpoints: ['http://{addr}']}}
hosts:
  - host: events.test
    public: true
    default: events
",
        certs = certificates_yaml(&[(cert, key)]),
        addr = upstream.addr,
    ));

    for http2 in [false, true] {
        let client = TlsClient::new(&pki, proxy.https(), http2);
        let req = request("events.test", "/events", http2);
        let response = tokio::spawn(async move { client.send("events.test", req).await });
        let events = timeout(LIMIT, upstream.streams.recv())
            .await
            .expect("the request reaches the upstream")
            .unwrap();
        let response = timeout(LIMIT, response)
            .await
            .expect("the response head arrives before any event")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "http2={http2}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();

        for event in ["data: one\n\n", "data: two\n\n", "data: three\n\n"] {
            events
                .send(Bytes::from_static(event.as_bytes()))
                .await
                .unwrap();
            // The next event is sent only after this one arrived: a proxy that buffers fails here.
            let received = timeout(LIMIT, read_exactly(&mut body, event.len()))
                .await
                .unwrap_or_else(|_| {
                    panic!("`{event:?}` was held back by the proxy (http2={http2})")
                });
            assert_eq!(received, event, "http2={http2}");
        }
        drop(events);
        let rest = timeout(LIMIT, body.collect())
            .await
            .expect("the end of the stream reaches the client")
            .unwrap();
        assert!(rest.to_bytes().is_empty(), "http2={http2}");
    }
}
