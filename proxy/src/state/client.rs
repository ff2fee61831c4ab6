//! One client connection's state, as the request pipeline and the connection's task share it:
//! the peer, whether it is TLS, requests in flight, and what takes the socket over after an
//! upgrade. A leaf: it depends on no other part of the proxy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::header::HeaderValue;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::task::TaskTracker;

/// One client connection, as the request pipeline sees it.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub peer: SocketAddr,
    /// The peer's IP, formatted once for the forwarding headers.
    pub peer_ip_header: HeaderValue,
    pub tls: bool,
    /// Keying material exported from the TLS 1.3 connection, that a relay request from
    /// another replica proves itself with (`crate::hub::relay`).
    pub(crate) binding: Option<[u8; 32]>,
    /// The worker's connection tasks: an upgraded connection's relay joins them, so shutdown
    /// waits for it like for any other connection.
    pub(crate) tracker: TaskTracker,
    pub(crate) active: AtomicBool,
    /// A write to the client is waiting for the socket: hyper may hold unsent bytes.
    pub(crate) write_blocked: AtomicBool,
    /// Bytes of a request arrived that hyper has not handed to the pipeline yet.
    pub(crate) partial: AtomicBool,
    pub(crate) inflight: AtomicUsize,
    /// A request has started on this connection (HTTP/2: until then the header timeout, not
    /// the idle timeout, bounds how long a client may stay silent).
    pub(crate) started: AtomicBool,
    /// What takes the socket over once the `101` on its way to the client is written.
    upgrade: Mutex<Option<TakeoverSlot>>,
    /// Held as long as anything uses the connection, including an upgrade's relay task.
    _admission: Admission,
}

/// One request in flight on a connection; see [`ConnState::request_started`].
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.active.store(true, Ordering::Relaxed);
    }
}

/// A client connection's place under the connection limit and in the open-connections gauge.
#[derive(Debug)]
pub(crate) struct Admission {
    #[allow(
        dead_code,
        reason = "held for its Drop: the connection's place under the limit"
    )]
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) open: Gauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl ConnState {
    pub(crate) fn new(
        peer: SocketAddr,
        tls: bool,
        admission: Admission,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            peer,
            peer_ip_header: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            tls,
            binding: None,
            tracker,
            active: AtomicBool::new(true),
            write_blocked: AtomicBool::new(false),
            partial: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            upgrade: Mutex::new(None),
            _admission: admission,
        }
    }

    /// Counts a request as in flight until the returned guard is dropped, whether the request
    /// completes or its future is dropped (client gone, HTTP/2 stream reset).
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
        self.partial.store(false, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Whether hyper can be taken off the connection without losing anything: no write waits
    /// on the client, and no request is half read (parking then would restart the header-read
    /// timeout, which a slow client could use to hold the connection forever).
    pub(crate) fn can_park(&self) -> bool {
        !self.write_blocked.load(Ordering::Relaxed) && !self.partial.load(Ordering::Relaxed)
    }

    /// Says what takes the socket over once the `101` the pipeline answers with is written.
    pub(crate) fn take_over(&self, takeover: Takeover) {
        *self.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(TakeoverSlot(takeover));
    }

    /// What was set to take the socket over, once.
    pub(crate) fn take_upgrade(&self) -> Option<Takeover> {
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|slot| slot.0)
    }

    /// True when nothing happened since the previous call and no request is in flight.
    pub(crate) fn idle_since_last_check(&self) -> bool {
        let was_active = self.active.swap(false, Ordering::Relaxed);
        !was_active && self.inflight.load(Ordering::Relaxed) == 0
    }
}

/// A client socket after a `101`, with whatever hyper had read ahead in front.
pub(crate) type ClientIo = Box<dyn ClientStream>;

pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

/// What takes a client socket over after an HTTP/1.1 `101`: a splice to the upstream's
/// upgraded connection (WebSocket), or the proxy's own handler (agent links, tunnels). It gets
/// the socket and the worker's shutdown flag, and the connection counts as open until it
/// returns.
pub(crate) type Takeover = Box<
    dyn FnOnce(ClientIo, watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// A [`Takeover`] with a `Debug` that says what it is.
struct TakeoverSlot(Takeover);

impl std::fmt::Debug for TakeoverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}
