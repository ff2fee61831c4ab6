//! Upstreams: endpoints chosen round robin, passive ejection of failing endpoints, and pooled
//! keep-alive connections over HTTP/1.1, HTTP/2 (ALPN) or h2c, plain or TLS.
//!
//! Each endpoint has one connection pool per worker thread, so a request never waits on a pool
//! shared with another runtime and connections are driven on the thread that uses them. The
//! connector dials the endpoint's own address whatever the request URI says, so requests keep the
//! client's host as their authority (`Host` / `:authority`).
//!
//! Endpoints that can only speak HTTP/1.1 (plain `http://` unless h2c is asked for, and
//! `https://` with `protocol: http1`) use [`Http1Pool`]: the worker's open connections in a
//! `Vec`, and a request goes to the first one whose connection is idle. That is the whole
//! checkout: no pool key, no hashing, no waiter queue, and no task per request to hand the
//! connection back, which is what hyper-util's general-purpose client spends its time on. The
//! others (HTTP/2 by ALPN, h2c) use hyper-util's client, which multiplexes HTTP/2 for us.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::Mutex;

use http::uri::Scheme;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{Ejection, UpstreamConfig, UpstreamProtocol};
use crate::forward::body::RequestBody;
use crate::frontdoor::tls::{self, TlsError};
use crate::frontdoor::worker;

pub(crate) type HttpClient = Client<Connector, RequestBody>;

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {address} timed out")]
    Timeout { address: String },
    #[error("connecting to {address} failed")]
    Refused {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {address} failed")]
    Tls {
        address: String,
        #[source]
        source: io::Error,
    },
}

/// Why an exchange with an upstream failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the HTTP/1.1 handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("the upstream exchange failed")]
    Exchange(#[source] hyper::Error),
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The connection could not be made (as opposed to failing once made).
    pub(crate) fn connect_error(&self) -> Option<&ConnectError> {
        match self {
            Self::Connect(err) => Some(err),
            Self::Client(err) => {
                let mut source = std::error::Error::source(err);
                while let Some(cause) = source {
                    if let Some(connect) = cause.downcast_ref::<ConnectError>() {
                        return Some(connect);
                    }
                    source = cause.source();
                }
                None
            }
            _ => None,
        }
    }

    /// True when no connection could be made.
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Handshake(_) => true,
            Self::Client(err) => err.is_connect(),
            Self::Exchange(_) => false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Upstream {
    pub name: Arc<str>,
    /// The configuration it was built from, so an unchanged upstream survives a reload with its
    /// connection pools.
    pub config: UpstreamConfig,
    endpoints: Box<[Endpoint]>,
    next: AtomicUsize,
    epoch: Instant,
}

#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `scheme://host:port`, for logs and metrics.
    pub label: Arc<str>,
    pub scheme: Scheme,
    pools: Pools,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the upstream's epoch until which the endpoint is out; 0 when healthy.
    ejected_until: AtomicU64,
}

#[derive(Debug)]
enum Pools {
    Http1(Box<[Http1Pool]>),
    Client(Box<[HttpClient]>),
}

impl Endpoint {
    /// True when requests go out over this crate's HTTP/1.1 pool, which sends them as they are:
    /// origin-form URI and a `Host` header (hyper-util's client derives both from the URI).
    pub(crate) fn speaks_http1_only(&self) -> bool {
        matches!(self.pools, Pools::Http1(_))
    }

    /// Sends a request over the calling worker's pool and waits for the response head.
    pub(crate) async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        match &self.pools {
            Pools::Http1(pools) => pools[worker::current() % pools.len()].send(req).await,
            Pools::Client(clients) => {
                let client = &clients[worker::current() % clients.len()];
                Ok(client.request(req).await?)
            }
        }
    }
}

impl Upstream {
    pub(crate) fn build(
        name: &str,
        config: &UpstreamConfig,
        workers: usize,
    ) -> Result<Self, TlsError> {
        let alpn: &[&[u8]] = match config.protocol {
            UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::Http2 => &[b"h2"],
        };
        let tls_config = config
            .endpoints
            .iter()
            .any(|e| e.is_https())
            .then(|| tls::client_config(&config.tls, alpn))
            .transpose()?;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let tls = match &tls_config {
                Some(client) if endpoint.is_https() => {
                    let name = config.tls.server_name.as_deref().unwrap_or(endpoint.host());
                    let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
                        TlsError::BadCertificate {
                            path: Default::default(),
                            message: format!("`{name}` is not a valid TLS server name"),
                        }
                    })?;
                    Some((client.clone(), server_name))
                }
                _ => None,
            };
            let connector = Connector {
                target: Arc::new(Target {
                    host: endpoint.host().to_string(),
                    port: endpoint.port(),
                    tls,
                    connect_timeout: config.connect_timeout,
                }),
            };
            let http1_only = match config.protocol {
                UpstreamProtocol::Http1 => true,
                UpstreamProtocol::Auto => !endpoint.is_https(),
                UpstreamProtocol::Http2 => false,
            };
            let http2_only = config.protocol == UpstreamProtocol::Http2;
            let workers = workers.max(1);
            let pools = if http1_only {
                Pools::Http1(
                    (0..workers)
                        .map(|_| Http1Pool::new(connector.clone()))
                        .collect(),
                )
            } else {
                Pools::Client(
                    (0..workers)
                        .map(|_| client(connector.clone(), http2_only))
                        .collect(),
                )
            };
            endpoints.push(Endpoint {
                label: endpoint.to_string().into(),
                scheme: endpoint.scheme.clone(),
                pools,
                consecutive_failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
            });
        }
        Ok(Self {
            name: name.into(),
            config: config.clone(),
            endpoints: endpoints.into(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// The next endpoint in rotation, skipping ejected ones. When every endpoint is ejected, the
    /// one whose ejection ends first is used anyway: better a likely failure than none at all.
    pub(crate) fn pick(&self) -> Option<&Endpoint> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut now = None;
        let mut soonest: Option<(u64, &Endpoint)> = None;
        for i in 0..count {
            let endpoint = &self.endpoints[(start + i) % count];
            let until = endpoint.ejected_until.load(Ordering::Relaxed);
            if until == 0 {
                return Some(endpoint);
            }
            let now = *now.get_or_insert_with(|| self.now_ms());
            if until <= now {
                return Some(endpoint);
            }
            if soonest.is_none_or(|(t, _)| until < t) {
                soonest = Some((until, endpoint));
            }
        }
        soonest.map(|(_, endpoint)| endpoint)
    }

    /// Records the outcome of using an endpoint. Returns true when this failure ejected it.
    pub(crate) fn report(&self, endpoint: &Endpoint, healthy: bool) -> bool {
        if healthy {
            if endpoint.consecutive_failures.load(Ordering::Relaxed) != 0
                || endpoint.ejected_until.load(Ordering::Relaxed) != 0
            {
                endpoint.consecutive_failures.store(0, Ordering::Relaxed);
                endpoint.ejected_until.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let Ejection {
            consecutive_failures,
            duration,
        } = self.config.ejection;
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures >= consecutive_failures {
            let until = self.now_ms() + duration.as_millis() as u64;
            endpoint
                .ejected_until
                .store(until.max(1), Ordering::Relaxed);
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

fn client(connector: Connector, http2_only: bool) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(http2_only)
        .http2_adaptive_window(true)
        .http2_max_frame_size(64 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10));
    builder.build(connector)
}

type TrySendError = hyper::client::conn::TrySendError<Request<RequestBody>>;

/// Connections kept per worker and endpoint. Beyond this many, a request that finds no idle
/// connection gets one of its own that closes after the exchange.
const MAX_POOLED_PER_WORKER: usize = 256;

/// One worker's HTTP/1.1 connections to one endpoint.
///
/// Every open connection stays in `senders`, busy or idle; a request takes the first idle one
/// (hyper's `SendRequest::is_ready`, an atomic load) and dials a new one when none is idle.
/// Closed connections are dropped as the scan meets them. The `Mutex` is never contended: the
/// pool belongs to one worker's single-threaded runtime, and the lock is held only while
/// scanning, never across an `await`.
#[derive(Debug)]
pub(crate) struct Http1Pool {
    connector: Connector,
    senders: Mutex<Vec<http1::SendRequest<RequestBody>>>,
}

impl Http1Pool {
    fn new(connector: Connector) -> Self {
        Self {
            connector,
            senders: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let req = match self.try_idle(req) {
            Ok(exchange) => match exchange.await {
                Ok(response) => return Ok(response),
                // The connection closed before the request went out (the upstream timed the
                // idle connection out as we picked it): safe to send again on a new one.
                Err(mut err) => match err.take_message() {
                    Some(req) => req,
                    None => return Err(SendError::Exchange(err.into_error())),
                },
            },
            Err(req) => req,
        };
        let mut sender = self.dial().await?;
        let exchange = sender.send_request(req);
        self.keep(sender);
        exchange.await.map_err(SendError::Exchange)
    }

    /// Starts the exchange on an idle pooled connection, or gives the request back.
    #[allow(clippy::result_large_err)]
    fn try_idle(
        &self,
        req: Request<RequestBody>,
    ) -> Result<
        impl Future<Output = Result<Response<Incoming>, TrySendError>> + use<>,
        Request<RequestBody>,
    > {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = 0;
        while i < senders.len() {
            if senders[i].is_closed() {
                senders.swap_remove(i);
                continue;
            }
            if senders[i].is_ready() {
                return Ok(senders[i].try_send_request(req));
            }
            i += 1;
        }
        Err(req)
    }

    fn keep(&self, sender: http1::SendRequest<RequestBody>) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.len() < MAX_POOLED_PER_WORKER {
            senders.push(sender);
        }
    }

    async fn dial(&self) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let io = self.connector.target.connect().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(error = %crate::error_chain(&error), "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[derive(Debug)]
struct Target {
    host: String,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Target {
    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn connect(&self) -> Result<UpstreamIo, ConnectError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            address: self.address(),
        })?
        .map_err(|source| ConnectError::Refused {
            address: self.address(),
            source,
        })?;
        // Nagle delays small writes by up to 40 ms; requests and responses are latency-bound.
        let _ = tcp.set_nodelay(true);
        let Some((config, server_name)) = &self.tls else {
            return Ok(UpstreamIo::Plain(TokioIo::new(tcp)));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let handshake = connector.connect(server_name.clone(), tcp);
        let stream = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout {
                address: self.address(),
            })?
            .map_err(|source| ConnectError::Tls {
                address: self.address(),
                source,
            })?;
        Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
    }
}

/// Dials one endpoint, ignoring the request URI.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    target: Arc<Target>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move { target.connect().await })
    }
}

/// A connection to an upstream.
pub(crate) enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(_) => Connected::new(),
            Self::Tls(stream) => {
                let (_, session) = stream.inner().get_ref();
                if session.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            UpstreamIo::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            UpstreamIo::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(endpoints: &[&str], failures: u32) -> Upstream {
        let config = UpstreamConfig {
            endpoints: endpoints
                .iter()
                .map(|e| e.to_string().try_into().unwrap())
                .collect(),
            protocol: UpstreamProtocol::Auto,
            connect_timeout: Duration::from_secs(1),
            response_header_timeout: Duration::from_secs(1),
            tls: Default::default(),
            ejection: Ejection {
                consecutive_failures: failures,
                duration: Duration::from_secs(60),
            },
            agent: None,
        };
        Upstream::build("test", &config, 1).unwrap()
    }

    fn labels(upstream: &Upstream, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| upstream.pick().unwrap().label.to_string())
            .collect()
    }

    #[test]
    fn endpoints_are_used_in_turn() {
        let up = upstream(&["http://a:1", "http://b:1", "http://c:1"], 1);
        assert_eq!(
            labels(&up, 4),
            ["http://a:1", "http://b:1", "http://c:1", "http://a:1"]
        );
    }

    #[test]
    fn an_endpoint_is_ejected_after_consecutive_failures_and_back_after_success() {
        let up = upstream(&["http://a:1", "http://b:1"], 2);
        let a = &up.endpoints()[0];
        assert!(!up.report(a, false));
        assert!(up.report(a, false), "second failure ejects");
        assert_eq!(labels(&up, 3), ["http://b:1"; 3]);
        up.report(a, true);
        assert!(labels(&up, 2).contains(&"http://a:1".to_string()));
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let up = upstream(&["http://a:1", "http://b:1"], 2);
        let a = &up.endpoints()[0];
        up.report(a, false);
        up.report(a, true);
        assert!(!up.report(a, false));
    }

    #[test]
    fn when_all_endpoints_are_ejected_one_is_still_tried() {
        let up = upstream(&["http://a:1"], 1);
        up.report(&up.endpoints()[0], false);
        assert_eq!(labels(&up, 1), ["http://a:1"]);
    }
}
