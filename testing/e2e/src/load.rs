//! Steady HTTPS load for the tests that restart or upgrade proxies: HTTP/1.1 and HTTP/2
//! clients that ask one request at a time and count every request the proxy may have seen and
//! did not answer `200 ok` as failed (what the server said it did not process, or what the
//! client never sent, is sent again, as every HTTP client does); and the upstream that answers
//! them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{PROXY_HOST, Pki};

/// An HTTP/1.1 upstream on `listener` answering `ok` to every request but `GET /hang`, which
/// it never answers (and reports on the receiver). Keep-alive, one thread per connection; it
/// lives as long as the test process.
pub fn ok_upstream(listener: TcpListener) -> Result<(SocketAddr, mpsc::Receiver<()>)> {
    let addr = listener.local_addr()?;
    let (hung, hanging) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let hung = hung.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut writer = &stream;
                let mut line = String::new();
                loop {
                    // A request head (the proxy forwards GETs without a body).
                    let mut head = Vec::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => head.push(line.clone()),
                        }
                    }
                    if head
                        .first()
                        .is_some_and(|first| first.starts_with("GET /hang "))
                    {
                        let _ = hung.send(());
                        // Until the proxy closes the connection.
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {}
                        return;
                    }
                    if head.is_empty() {
                        return;
                    }
                    let response = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                    if writer.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, hanging))
}

/// What a load client counts.
#[derive(Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Requests the client never sent because the connection it had was closing (GOAWAY,
    /// `Connection: close`): sent again on a new connection, as every HTTP client does.
    pub unsent: AtomicU64,
    /// HTTP/2 requests the server said it did not process (on a stream above the last one its
    /// final GOAWAY takes, or reset with REFUSED_STREAM): safe to send again (RFC 9113, 8.7),
    /// and sent again, as browsers do.
    pub refused: AtomicU64,
    pub connections: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 20 {
            // When (Unix seconds), to find it in the proxies' logs.
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            errors.push(format!("at {:.3}: {what}", at.as_secs_f64()));
        }
    }

    pub fn summary(&self, name: &str) -> String {
        format!(
            "{name}: {} ok, {} failed, {} not sent and sent again, {} refused unprocessed and \
             sent again, {} connections; errors: {:?}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.unsent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.errors.lock().unwrap_or_else(|e| e.into_inner())
        )
    }
}

#[derive(Clone, Copy)]
pub enum Protocol {
    Http1,
    Http2,
}

/// One connection of a load client.
pub enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

pub struct Load {
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    /// The name asked for (SNI and `Host`).
    host: String,
    pub stop: AtomicBool,
    pub http1: Counts,
    pub http2: Counts,
}

/// At most this many requests per client, and for at most this long, whatever happens.
const MAX_REQUESTS_PER_CLIENT: u64 = 200_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(300);

impl Load {
    /// Clients of `PROXY_HOST` at `addr`.
    pub fn new(pki: &Pki, addr: SocketAddr) -> Result<Arc<Self>> {
        Self::for_host(pki, addr, PROXY_HOST)
    }

    /// Clients of `host` at `addr`.
    pub fn for_host(pki: &Pki, addr: SocketAddr, host: &str) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            tls: pki.client_config()?,
            addr,
            host: host.to_owned(),
            stop: AtomicBool::new(false),
            http1: Counts::default(),
            http2: Counts::default(),
        }))
    }

    fn counts(&self, protocol: Protocol) -> &Counts {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        }
    }

    pub async fn connect(&self, protocol: Protocol) -> Result<Sender> {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::Http2 => b"h2".to_vec(),
        }];
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(self.host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        self.counts(protocol)
            .connections
            .fetch_add(1, Ordering::Relaxed);
        Ok(match protocol {
            Protocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(connection);
                Sender::Http1(sender)
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .handshake(io)
                        .await?;
                tokio::spawn(connection);
                Sender::Http2(sender)
            }
        })
    }

    fn request(&self, protocol: Protocol) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
        self.request_to(protocol, "/ping")
    }

    pub fn request_to(
        &self,
        protocol: Protocol,
        path: &str,
    ) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
        let builder = match protocol {
            Protocol::Http1 => http::Request::get(path).header(http::header::HOST, &self.host),
            Protocol::Http2 => {
                http::Request::get(format!("https://{}:{}{path}", self.host, self.addr.port()))
            }
        };
        builder
            .body(http_body_util::Empty::new())
            .expect("a request is well formed")
    }

    /// Asks until told to stop (or its bounds are reached), one request at a time on one
    /// connection, and a new connection when that one closes. A request the proxy might have
    /// seen and that did not get `200 ok` is a failure; so is a connection that fails.
    pub async fn client(self: Arc<Self>, protocol: Protocol) {
        use http_body_util::BodyExt as _;
        let counts = self.counts(protocol);
        let started = Instant::now();
        let mut sender: Option<Sender> = None;
        let mut asked = 0;
        while !self.stop.load(Ordering::Relaxed)
            && asked < MAX_REQUESTS_PER_CLIENT
            && started.elapsed() < MAX_LOAD_TIME
        {
            let current = match sender.take() {
                Some(current) => current,
                None => match self.connect(protocol).await {
                    Ok(new) => new,
                    Err(error) => {
                        counts.fail(format!("connecting: {error:#}"));
                        continue;
                    }
                },
            };
            let request = self.request(protocol);
            // A connection that is closing takes no request: it comes back unsent.
            let (sent, current) = match current {
                Sender::Http1(mut s) => {
                    if s.ready().await.is_err() {
                        continue;
                    }
                    let sent = s.try_send_request(request).await;
                    let sent = sent.map_err(|mut e| {
                        let unsent = e.take_message().is_some();
                        (e.into_error(), unsent)
                    });
                    (sent, Sender::Http1(s))
                }
                Sender::Http2(mut s) => {
                    if s.ready().await.is_err() {
                        continue;
                    }
                    let sent = s.try_send_request(request).await;
                    let sent = sent.map_err(|mut e| {
                        let unsent = e.take_message().is_some();
                        (e.into_error(), unsent)
                    });
                    (sent, Sender::Http2(s))
                }
            };
            asked += 1;
            let response = match sent {
                Ok(response) => response,
                // Handed back unsent: the connection was closing before it was written.
                Err((_, true)) => {
                    counts.unsent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err((error, false)) if unprocessed(&error) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err((error, false)) => {
                    counts.fail(format!("request: {}", chain(&error)));
                    continue;
                }
            };
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => {
                    let body = body.to_bytes();
                    if status == http::StatusCode::OK && body == "ok" {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        sender = Some(current);
                    } else {
                        counts.fail(format!("{status}: {body:?}"));
                    }
                }
                Err(error) => counts.fail(format!("body: {}", chain(&error))),
            }
        }
    }

    /// Both protocols' counts, a line each.
    pub fn summary(&self) -> String {
        format!(
            "{}\n{}",
            self.http1.summary("HTTP/1.1"),
            self.http2.summary("HTTP/2")
        )
    }

    /// Requests that failed, both protocols.
    pub fn failed(&self) -> u64 {
        self.http1.failed.load(Ordering::Relaxed) + self.http2.failed.load(Ordering::Relaxed)
    }

    pub fn ok(&self) -> (u64, u64) {
        (
            self.http1.ok.load(Ordering::Relaxed),
            self.http2.ok.load(Ordering::Relaxed),
        )
    }
}

/// Whether an HTTP/2 server said it did not process the request: a graceful GOAWAY that the
/// request's stream is above (the error of such streams only), or REFUSED_STREAM.
fn unprocessed(error: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    let graceful_goaway =
        h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
    graceful_goaway || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// An error and its causes, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause} ({cause:?})"));
        source = cause.source();
    }
    text
}
