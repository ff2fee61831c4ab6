//! One client connection: which protocol it speaks, HTTP/1.1 keep-alive that holds no buffers
//! while idle, HTTP/2, upgrades, the idle timeout and graceful shutdown.
//!
//! **Parking.** hyper's HTTP/1.1 connection keeps an 8 KiB read buffer and an 8 KiB header
//! buffer for its whole life, so ten thousand idle keep-alive clients would cost 160 MiB. A
//! connection that has been quiet for [`PARK_AFTER`] (no request in flight, nothing moved, no
//! write waiting on the client) is therefore taken apart with `into_parts`: the socket is kept,
//! any bytes hyper had read but not parsed are kept, and everything else is freed. When the
//! socket turns readable, a new hyper connection starts on it with those bytes in front. A busy
//! connection never parks, so this costs nothing under load.
//!
//! **Upgrades.** Because a parked-and-resumed connection must be a plain hyper `Connection`
//! (not `UpgradeableConnection`, which cannot be taken apart), HTTP/1.1 upgrades are done here
//! by hand: the pipeline leaves the upstream's upgrade in [`ConnState`], and when hyper stops
//! after writing the `101`, this module takes the client socket back and splices the two.
//!
//! **Shutdown.** An HTTP/2 connection gets GOAWAY, which tells the client which requests were
//! taken, and lingers after it ([`super::linger`]) so that the client gets to read it. HTTP/1.1 has no such word, and a keep-alive connection closed while the client sends
//! its next request fails that request. So a draining HTTP/1.1 connection is not closed at
//! once: each response it still gives says `Connection: close` (and hyper closes after it),
//! and one with nothing in flight is closed once it has been quiet for a [`PARK_AFTER`] tick,
//! as a parked one is at once.
//!
//! This module must not know about routes or upstreams beyond that hand-off.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::linger::Lingering;
use crate::config::Limits;
use crate::respond::body::ResponseBody;
use crate::state::client::ConnState;
use crate::state::{Shared, stopped};

/// How long an HTTP/1.1 connection stays quiet before it gives its buffers back.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface, which an h2c client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A socket that can wait for incoming bytes without reading them.
pub(crate) trait Readiness {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Readiness for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

/// A client's TLS stream. Boxed: rustls's connection state is over 1 KiB, and the connection
/// task would otherwise carry it inline several times over (async state machines keep each
/// moved copy), idle or not.
pub(crate) type TlsClient = Box<tokio_rustls::server::TlsStream<TcpStream>>;

impl Readiness for TlsClient {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.get_ref().0.readable()
    }
}

/// Serves a plain-TCP connection: HTTP/2 when it opens with the h2c preface, else HTTP/1.1.
pub(crate) async fn serve_plain(
    shared: Arc<Shared>,
    stream: TcpStream,
    state: ConnState,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
) {
    match sniff_h2c(&stream, limits.header_read_timeout).await {
        // HTTP/2's connection (2 KiB) lives out of line, so that the far more common HTTP/1.1
        // connection's task does not keep room for it.
        Some(true) => Box::pin(serve_h2(shared, stream, state, limits, shutdown)).await,
        Some(false) => serve_h1(shared, stream, state, limits, shutdown).await,
        None => {}
    }
}

/// Serves a TLS connection by its ALPN choice.
pub(crate) async fn serve_tls(
    shared: Arc<Shared>,
    stream: TlsClient,
    state: ConnState,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
) {
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(serve_h2(shared, stream, state, limits, shutdown)).await;
    } else {
        serve_h1(shared, stream, state, limits, shutdown).await;
    }
}

/// Whether the client opens with the HTTP/2 preface; `None` when it closes or sends nothing
/// within the header timeout. Peeks, so nothing is consumed.
async fn sniff_h2c(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let sniff = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // A preface cut short: peek sees the same bytes until more arrive.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(limit, sniff).await.ok().flatten()
}

/// The request pipeline as a hyper service for one connection. With `close_when_draining`
/// (HTTP/1.1), responses given while the process drains say `Connection: close`.
fn service(
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    close_when_draining: bool,
) -> impl HttpService<Incoming, ResBody = ResponseBody, Error = Infallible, Future: Send + 'static>
+ Clone
+ Unpin
+ Send
+ 'static {
    service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let state = state.clone();
        async move {
            let mut response =
                crate::request::pipeline::serve_request(shared.clone(), state, req).await;
            if close_when_draining
                && shared.is_draining()
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    })
}

async fn serve_h2<IO>(
    shared: Arc<Shared>,
    io: IO,
    state: ConnState,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = state.peer;
    let state = Arc::new(state);
    let io = TokioIo::new(ActivityIo {
        inner: Lingering::new(io, state.tracker.clone()),
        state: state.clone(),
    });
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(io, service(shared, state.clone(), false));
    tokio::pin!(conn);

    let idle = limits.idle_timeout;
    let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    // A client that completed TLS but sends no request gets GOAWAY at the header timeout and
    // is cut at twice that; the idle timeout is for connections that have served.
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %crate::error_chain(&error), "connection ended");
                }
                break;
            }
            () = &mut first_request, if !state.started.load(Ordering::Relaxed) => {
                if closing {
                    // Not even the GOAWAY was answered: closed at once.
                    break;
                }
                // A GOAWAY that takes no stream: a request the client sends meanwhile is one
                // it knows was not processed, and sends again elsewhere; closed at once if the
                // client does not end the connection within the header timeout either.
                tracing::debug!(%peer, "no request within the header timeout");
                closing = true;
                conn.as_mut().graceful_shutdown();
                first_request
                    .as_mut()
                    .reset(tokio::time::Instant::now() + limits.header_read_timeout);
            }
            _ = idle_check.tick(), if !closing => {
                if state.idle_since_last_check() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = stopped(&mut shutdown), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// How an HTTP/1.1 connection's current hyper run ended.
enum Run<IO> {
    /// Done: closed, failed or shut down.
    Closed,
    /// Quiet: the socket and the bytes hyper had read ahead, to resume with.
    Parked(IO, Bytes),
}

async fn serve_h1<IO>(
    shared: Arc<Shared>,
    io: IO,
    state: ConnState,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: Readiness + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(state);
    let service = service(shared, state.clone(), true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);

    let mut io = io;
    let mut read_ahead = Bytes::new();
    // Quiet time already spent before parking counts toward the idle timeout.
    let mut idle_for = Duration::ZERO;
    // A new connection goes to hyper at once: with TLS, the request may already sit decrypted
    // inside rustls (it often arrives with the client's Finished), where socket readiness
    // would never announce it. Only a parked connection waits for the socket.
    let mut parked = false;
    loop {
        if parked && read_ahead.is_empty() {
            let wait = limits.idle_timeout.saturating_sub(idle_for);
            tokio::select! {
                ready = io.readable() => if ready.is_err() { return },
                _ = tokio::time::sleep(wait) => return,
                _ = stopped(&mut shutdown) => return,
            }
        }
        let run = run_h1(
            &builder,
            Rewind::new(read_ahead, io),
            &state,
            service.clone(),
            limits,
            &mut shutdown,
        )
        .await;
        match run {
            Run::Closed => return,
            Run::Parked(rest, bytes) => {
                (io, read_ahead) = (rest, bytes);
                idle_for = PARK_AFTER;
                parked = true;
            }
        }
    }
}

/// Runs hyper on the connection until it closes or parks.
async fn run_h1<IO, S>(
    builder: &http1::Builder,
    io: Rewind<IO>,
    state: &Arc<ConnState>,
    service: S,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Run<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = ResponseBody> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    enum Event {
        Done(Result<(), hyper::Error>),
        Tick,
        Stop,
    }
    let peer = state.peer;
    let io = TokioIo::new(ActivityIo {
        inner: io,
        state: state.clone(),
    });
    // Boxed so the parked task does not keep room for a whole hyper connection.
    let mut conn = Box::new(builder.serve_connection(io, service));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PARK_AFTER, PARK_AFTER);
    let mut quiet = Duration::ZERO;
    let mut closing = false;
    // Draining: responses say `Connection: close` (the service adds it), and the connection
    // closes at the first tick with nothing in flight.
    let mut stopping = false;
    loop {
        let event = tokio::select! {
            result = &mut *conn => Event::Done(result),
            _ = tick.tick(), if !closing => Event::Tick,
            _ = stopped(shutdown), if !closing && !stopping => Event::Stop,
        };
        match event {
            Event::Done(Err(error)) => {
                tracing::debug!(%peer, error = %crate::error_chain(&error), "connection ended");
                return Run::Closed;
            }
            // hyper has shut the socket down, unless it stopped for an upgrade.
            Event::Done(Ok(())) => {
                if let Some(takeover) = state.take_upgrade() {
                    let parts = conn.into_parts();
                    let (client, read_ahead) =
                        parts.io.into_inner().inner.into_parts(parts.read_buf);
                    let client = Rewind::new(read_ahead, client);
                    let served = takeover(Box::new(client), shutdown.clone());
                    // The connection stays admitted while its new owner runs.
                    let held = state.clone();
                    state.tracker.spawn(async move {
                        served.await;
                        drop(held);
                    });
                }
                return Run::Closed;
            }
            Event::Tick => {
                if !state.idle_since_last_check() {
                    quiet = Duration::ZERO;
                    continue;
                }
                quiet += PARK_AFTER;
                if stopping || quiet >= limits.idle_timeout {
                    closing = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                } else if state.can_park() {
                    let parts = conn.into_parts();
                    let (client, read_ahead) =
                        parts.io.into_inner().inner.into_parts(parts.read_buf);
                    return Run::Parked(client, read_ahead);
                }
            }
            Event::Stop => stopping = true,
        }
    }
}

/// A socket with bytes already read from it in front.
#[derive(Debug)]
struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The socket, and what was read from it but not consumed: `consumed_ahead` (what hyper
    /// read and did not parse) comes before whatever of the prefix hyper never read.
    ///
    /// The bytes are copied out: `consumed_ahead` is a view into hyper's 8 KiB read buffer,
    /// and holding even an empty view would keep that whole buffer alive while parked.
    fn into_parts(self, consumed_ahead: Bytes) -> (T, Bytes) {
        let rest = if consumed_ahead.is_empty() && self.prefix.is_empty() {
            Bytes::new()
        } else {
            let mut joined = BytesMut::with_capacity(consumed_ahead.len() + self.prefix.len());
            joined.extend_from_slice(&consumed_ahead);
            joined.extend_from_slice(&self.prefix);
            joined.freeze()
        };
        (self.inner, rest)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks its connection active whenever bytes move, for the idle timeout and parking, and
/// notes when a write is waiting on the client.
struct ActivityIo<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> ActivityIo<T> {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.state.active.store(true, Ordering::Relaxed);
                self.state.write_blocked.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.active.store(true, Ordering::Relaxed);
            if self.state.inflight.load(Ordering::Relaxed) == 0 {
                self.state.partial.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_hyper_read_ahead_come_before_the_unread_prefix() {
        let rewind = Rewind::new(Bytes::from_static(b"world"), ());
        let (_, rest) = rewind.into_parts(Bytes::from_static(b"hello "));
        assert_eq!(&rest[..], b"hello world");
    }

    #[test]
    fn a_parked_connection_keeps_no_part_of_hypers_read_buffer() {
        const FIRST: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for next in [&b""[..], b"GET /next"] {
            // hyper's read buffer: the parsed head is split off, and what it hands back on
            // `into_parts` is the rest, empty or the start of the next request.
            let mut read_buffer = BytesMut::with_capacity(8192);
            read_buffer.extend_from_slice(FIRST);
            read_buffer.extend_from_slice(next);
            let head = read_buffer.split_to(FIRST.len()).freeze();
            let (_, rest) = Rewind::new(Bytes::new(), ()).into_parts(read_buffer.freeze());
            assert_eq!(&rest[..], next);
            assert!(
                head.is_unique(),
                "the parked bytes still hold hyper's read buffer"
            );
        }
    }

    #[tokio::test]
    async fn a_rewound_socket_yields_its_prefix_first() {
        use tokio::io::AsyncReadExt;
        let mut rewind = Rewind::new(Bytes::from_static(b"GET "), &b"/ HTTP/1.1"[..]);
        let mut text = String::new();
        rewind.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "GET / HTTP/1.1");
    }
}
