//! The HTTP/2 service the agent runs on a turned-around connection: the proxy is the client and
//! opens one stream per thing it wants to reach.
//!
//! - `CONNECT host:port`: a byte stream to an allowed TCP target (`allow.tcp`);
//! - a request for `http://host:port/...`: forwarded to an allowed HTTP target (`allow.http`);
//! - an extended `CONNECT` (RFC 8441) for `http://host:port/...` with a `:protocol` (a
//!   WebSocket, say): the HTTP/1.1 upgrade made with an allowed HTTP target, then a byte stream;
//! - `POST` [`sekisho_wire::AGENT_DRAIN_PATH`]: the proxy is going away; the connection stops
//!   taking streams and the agent dials a new one;
//! - [`sekisho_wire::AGENT_PING_PATH`]: `204` at once, the proxy's check that the link answers;
//! - anything else: 404.
//!
//! Refusals carry the status of [`TunnelError::status`], so the proxy can tell the CLI why. Once
//! the agent is stopping, new streams are refused with `503` and
//! [`sekisho_wire::AGENT_DRAINING_HEADER`], so the proxy tries another link of the same agent,
//! while the open ones keep the whole grace period.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::server::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sekisho_wire::tunnel::TunnelError;
use sekisho_wire::{
    AGENT_DRAIN_PATH, AGENT_DRAINING_HEADER, AGENT_PING_PATH, COPY_BUFFER, KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT, h2,
};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::target::{AllowList, Target};

/// A response body: our own short texts, or a forwarded response streamed as it comes.
pub type ResponseBody = Either<Full<Bytes>, Incoming>;

/// The HTTP/2 server settings of an agent connection, from [`sekisho_wire::h2`], with pings
/// that notice a dead proxy within seconds.
pub fn builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(h2::STREAM_WINDOW)
        .initial_connection_window_size(h2::CONNECTION_WINDOW)
        .max_frame_size(h2::MAX_FRAME)
        .max_send_buf_size(h2::MAX_SEND_BUF)
        .max_concurrent_streams(h2::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(h2::MAX_HEADER_LIST)
        .enable_connect_protocol()
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// What every stream on every connection shares: the allow list, the dial timeout and the
/// HTTP client (with its pool of connections to local servers).
pub struct Streams {
    /// The agent's name: the authority of the proxy's own requests (drain, ping); requests for
    /// targets name `host:port`, so a client cannot make a forwarded request look like one.
    name: String,
    allow: AllowList,
    connect_timeout: Duration,
    client: Client<HttpConnector, Incoming>,
    /// Set once the agent is stopping: new streams are refused.
    stopping: AtomicBool,
}

impl Streams {
    pub fn new(name: String, allow: AllowList, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            name,
            allow,
            connect_timeout,
            client,
            stopping: AtomicBool::new(false),
        }
    }

    /// From now on, new streams are refused as "draining"; open ones go on.
    pub fn stop_taking_streams(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Answers one stream. `drain` is notified when the proxy asks this connection to drain.
    pub async fn handle(
        &self,
        drain: &Notify,
        mut req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let own = req.method() != Method::CONNECT
            && req.uri().authority().map(|a| a.as_str()) == Some(self.name.as_str());
        if own && req.uri().path() == AGENT_PING_PATH {
            let mut pong = Response::new(Either::Left(Full::default()));
            *pong.status_mut() = StatusCode::NO_CONTENT;
            return pong;
        }
        if own && req.method() == Method::POST && req.uri().path() == AGENT_DRAIN_PATH {
            tracing::debug!("the proxy asked this connection to drain");
            drain.notify_one();
            return text(StatusCode::OK, "draining\n".into());
        }
        if self.stopping.load(Ordering::Relaxed) {
            let mut refused = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is draining: it is stopping and takes no new streams\n".into(),
            );
            refused
                .headers_mut()
                .insert(AGENT_DRAINING_HEADER, HeaderValue::from_static("1"));
            return refused;
        }
        if req.method() == Method::CONNECT {
            if let Some(protocol) = req.extensions_mut().remove::<Protocol>() {
                return self.upgrade(protocol, req).await;
            }
            return self.connect(req).await;
        }
        if let Some(target) = http_target(req.uri()) {
            remove_hop_by_hop(req.headers_mut());
            return self.forward(target, req).await;
        }
        text(
            StatusCode::NOT_FOUND,
            "the agent serves CONNECT host:port and http://host:port/ requests only\n".into(),
        )
    }

    /// `CONNECT host:port`: dial, answer 200, then copy both ways in a task of its own, since the
    /// stream becomes a byte stream only once the 200 is sent.
    async fn connect(&self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let Some(target) = req.uri().authority().and_then(Target::from_authority) else {
            return text(
                StatusCode::BAD_REQUEST,
                "CONNECT needs an authority-form host:port\n".into(),
            );
        };
        if !self.allow.allows_tcp(&target) {
            tracing::info!(%target, "refused target {target} for a stream: not in allow.tcp");
            return refusal(
                TunnelError::TargetNotAllowed,
                format!("target {target} is not in this agent's allow list (allow.tcp)\n"),
            );
        }
        let dialing = TcpStream::connect((target.host(), target.port()));
        let tcp = match tokio::time::timeout(self.connect_timeout, dialing).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                tracing::warn!(%target, %error, "cannot connect to target {target}");
                return refusal(
                    TunnelError::TargetUnreachable,
                    format!("cannot connect to {target}: {error}\n"),
                );
            }
            Err(_) => {
                tracing::warn!(%target, "connecting to target {target} timed out");
                return refusal(
                    TunnelError::TargetTimeout,
                    format!(
                        "connecting to {target} timed out after {:?}\n",
                        self.connect_timeout
                    ),
                );
            }
        };
        let _ = tcp.set_nodelay(true);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(stream) => splice(&target, stream, tcp).await,
                Err(error) => {
                    tracing::debug!(%target, %error, "the stream ended before the tunnel opened");
                }
            }
        });
        Response::new(Either::Left(Full::default()))
    }

    /// An HTTP request for an allowed target, forwarded over HTTP/1.1 with both bodies
    /// streamed as they come.
    async fn forward(&self, target: Target, mut req: Request<Incoming>) -> Response<ResponseBody> {
        if let Some(refused) = self.refuse_http(&target) {
            return refused;
        }
        // The local server speaks HTTP/1.1; the client refuses a request marked HTTP/2.
        *req.version_mut() = Version::HTTP_11;
        match self.client.request(req).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Right(body))
            }
            Err(error) => {
                tracing::warn!(%target, error = %crate::error_chain(&error), "forwarding to {target} failed");
                let what = if error.is_connect() {
                    "cannot connect to"
                } else {
                    "no answer from"
                };
                refusal(TunnelError::TargetUnreachable, format!("{what} {target}\n"))
            }
        }
    }

    /// An extended `CONNECT` for `http://host:port/path` with a `:protocol`: the same request
    /// as an HTTP/1.1 `GET` with `Upgrade: <protocol>` to the target. When the target switches
    /// protocols, the answer is `200` with the target's headers, and the two streams are
    /// spliced in a task of their own; any other answer of the target is passed on as it is,
    /// except a success that did not switch (`502`: the client asked for a byte stream).
    async fn upgrade(
        &self,
        protocol: Protocol,
        mut req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let Some(target) = http_target(req.uri()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "an extended CONNECT needs an http://host:port/ target\n".into(),
            );
        };
        if let Some(refused) = self.refuse_http(&target) {
            return refused;
        }
        let Ok(protocol) = HeaderValue::from_str(protocol.as_str()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "a :protocol that is no header value\n".into(),
            );
        };
        let from_proxy = hyper::upgrade::on(&mut req);
        remove_hop_by_hop(req.headers_mut());
        *req.method_mut() = Method::GET;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        let mut response = match self.client.request(req).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%target, error = %crate::error_chain(&error), "upgrading with {target} failed");
                return refusal(
                    TunnelError::TargetUnreachable,
                    format!("no answer from {target}\n"),
                );
            }
        };
        match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => {}
            status if status.is_success() => {
                tracing::warn!(%target, %status, "{target} answered an upgrade without switching");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("{target} answered {status} instead of switching protocols\n"),
                );
            }
            _ => {
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                return Response::from_parts(parts, Either::Right(body));
            }
        }
        let from_target = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(from_proxy, from_target) {
                Ok((proxy, local)) => splice(&target, proxy, TokioIo::new(local)).await,
                Err(error) => {
                    tracing::debug!(%target, %error, "the upgraded stream ended before it opened");
                }
            }
        });
        let (mut parts, _) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.status = StatusCode::OK;
        Response::from_parts(parts, Either::Left(Full::default()))
    }

    /// The refusal for a target that is not in `allow.http`.
    fn refuse_http(&self, target: &Target) -> Option<Response<ResponseBody>> {
        if self.allow.allows_http(target) {
            return None;
        }
        tracing::info!(%target, "refused target {target} for a stream: not in allow.http");
        Some(refusal(
            TunnelError::TargetNotAllowed,
            format!("target {target} is not in this agent's allow list (allow.http)\n"),
        ))
    }
}

/// The target of an `http://host:port/...` URI.
fn http_target(uri: &http::Uri) -> Option<Target> {
    let authority = uri
        .authority()
        .filter(|_| uri.scheme() == Some(&Scheme::HTTP))?;
    Some(Target::new(
        authority.host(),
        authority.port_u16().unwrap_or(80),
    ))
}

/// Copies both ways between the proxy's stream and the local end until either closes.
async fn splice<L>(target: &Target, stream: hyper::upgrade::Upgraded, mut local: L)
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::debug!(%target, "stream open");
    let mut stream = TokioIo::new(stream);
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut local, COPY_BUFFER, COPY_BUFFER)
            .await;
    match copied {
        Ok((to_target, from_target)) => {
            tracing::debug!(%target, to_target, from_target, "stream closed");
        }
        Err(error) => tracing::debug!(%target, %error, "stream ended with an error"),
    }
}

/// The service `hyper` calls for each stream of one connection.
pub fn service(
    streams: Arc<Streams>,
    drain: Arc<Notify>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let streams = Arc::clone(&streams);
        let drain = Arc::clone(&drain);
        async move { Ok(streams.handle(&drain, req).await) }
    })
}

fn refusal(error: TunnelError, message: String) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    text(status, message)
}

fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1): the fixed list and whatever `Connection` names. `TE: trailers` survives.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for connection in headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect::<Vec<_>>()
    {
        for token in connection.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            if !token.eq_ignore_ascii_case("te")
                && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            {
                headers.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "te"]);
    }

    #[test]
    fn refusals_carry_the_status_the_proxy_maps_back() {
        for error in [
            TunnelError::TargetNotAllowed,
            TunnelError::TargetUnreachable,
            TunnelError::TargetTimeout,
        ] {
            let response = refusal(error, "x".into());
            assert_eq!(
                TunnelError::from_agent_status(response.status().as_u16()),
                error
            );
        }
    }
}
