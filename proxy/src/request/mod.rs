//! The request pipeline. Each request passes named phases with one context:
//!
//! 1. `request_filter`: request id, host, framing, and the one normal path every later phase
//!    uses (see [`crate::routing::path`]; targets that cannot be made unambiguous are a 400 here);
//! 2. `route`: host and path to a route (404 for unknown hosts and paths);
//! 3. (the access phase of the identity layer goes here, before an upstream is chosen);
//! 4. `upstream_peer`: an endpoint of the route's upstream;
//! 5. `upstream_request_filter`: hop-by-hop and forwarding headers, the upstream URI;
//! 6. `forward`: the exchange, under the response-header timeout;
//! 7. `response_filter`: hop-by-hop headers off, request id on;
//! 8. logging, when the response body is done (see [`crate::forward::body`]).
//!
//! Errors carry where they came from, and that decides the status: 4xx for what the client
//! sent, 502/504 for what the upstream did, 503 when nothing can serve.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::auth::access::{self, Access, Who};
use crate::auth::identity::IdentityRuntime;
use crate::auth::login;
use crate::forward::body::{ClientBodyError, Completion, RequestBody, ResponseBody};
use crate::forward::upstream::{ConnectError, Endpoint, SendError, Upstream};
use crate::frontdoor::connection::ConnState;
use crate::frontdoor::server::Shared;
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics::{self, Name, UpstreamErrorLabels};
use crate::routing::path::{
    PathError, decode_slashes, normalize_path, normalize_path_keeping_encoded_slashes,
    without_parameters,
};
use crate::routing::snapshot::{Route, Snapshot};
use crate::routing::table::normalize_host;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Named only for an `h2c` upgrade (RFC 7540 §3.2.1), which never passes.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a failure came from and what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has no valid host")]
    BadHost,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    BadPath(#[from] PathError),
    #[error("the request uses a transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("the request body is malformed or was cut short")]
    ClientBody(#[source] BoxError),
    #[error("no site is served for this host")]
    UnknownHost,
    #[error("nothing is served at this path")]
    NoRoute,
    #[error("the upstream has no endpoint")]
    NoEndpoint,
    #[error("could not connect to the upstream")]
    UpstreamConnect(#[source] BoxError),
    #[error("the upstream did not accept the connection in time")]
    UpstreamConnectTimeout(#[source] BoxError),
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream exchange failed")]
    UpstreamProtocol(#[source] BoxError),
    #[error("the upstream switched protocols without being asked")]
    UnexpectedUpgrade,
    #[error("the agent that reaches the upstream is not connected")]
    AgentOffline,
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Downstream,
    Upstream,
    Internal,
}

impl ProxyError {
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::BadHost
            | Self::BadRequest(_)
            | Self::BadPath(_)
            | Self::UnsupportedTransferCoding
            | Self::ClientBody(_)
            | Self::UnknownHost
            | Self::NoRoute => ErrorSource::Downstream,
            Self::NoEndpoint => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadHost | Self::BadRequest(_) | Self::BadPath(_) | Self::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::UnknownHost | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoint | Self::AgentOffline => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnectTimeout(_) | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::UnexpectedUpgrade => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The `kind` label of the upstream error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "connect",
            Self::UpstreamConnectTimeout(_) => "connect_timeout",
            Self::UpstreamTimeout => "response_timeout",
            Self::UpstreamProtocol(_) => "protocol",
            Self::UnexpectedUpgrade => "unexpected_upgrade",
            Self::NoEndpoint => "no_endpoint",
            Self::AgentOffline => "agent_offline",
            Self::BadHost
            | Self::BadRequest(_)
            | Self::BadPath(_)
            | Self::UnsupportedTransferCoding
            | Self::ClientBody(_)
            | Self::UnknownHost
            | Self::NoRoute => "downstream",
        }
    }
}

/// What the pipeline learns about one request.
pub(crate) struct RequestCtx {
    start: Instant,
    pub(crate) request_id: HeaderValue,
    /// Normalised: lowercase, no port.
    pub(crate) host: String,
    /// As the client sent it, for `X-Forwarded-Host` and the upstream authority.
    raw_host: Option<HeaderValue>,
    /// The path routing and access decide on, when it is not the request's (normal) path:
    /// without path parameters, or with encoded slashes decoded.
    decided_path: Option<Box<str>>,
    /// The path keeps `%2F`: only a route that allows it may serve the request.
    encoded_slashes: bool,
    route: Option<Arc<Route>>,
    endpoint: Option<Arc<str>>,
    /// Who the access phase identified, for the access log.
    user: Option<Arc<str>>,
    /// A refreshed session cookie to send back.
    set_cookie: Option<HeaderValue>,
}

impl RequestCtx {
    /// The path routing and every access check decide on, given the request's normal path
    /// (after [`request_filter`], `req.uri().path()`).
    pub(crate) fn decided_path<'a>(&'a self, normal_path: &'a str) -> &'a str {
        self.decided_path.as_deref().unwrap_or(normal_path)
    }

    /// `:PORT` when the client's `Host` names a port, for URLs back to this proxy.
    pub(crate) fn port_suffix(&self) -> &str {
        let raw = self
            .raw_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        match raw.rfind(':') {
            Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                &raw[i..]
            }
            _ => "",
        }
    }

    /// A small status page naming the request id.
    pub(crate) fn page(&self, status: StatusCode, message: &str) -> Response<ResponseBody> {
        status_page(status, message, &self.request_id)
    }
}

/// Serves one request on a listener that proxies.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let in_flight = conn.request_started();
    let snapshot = shared.snapshot.load_full();
    let mut ctx = RequestCtx {
        start: Instant::now(),
        request_id: HeaderValue::from_static("-"),
        host: String::new(),
        raw_host: None,
        decided_path: None,
        encoded_slashes: false,
        route: None,
        endpoint: None,
        user: None,
        set_cookie: None,
    };
    let mut req = req;
    let method = req.method().clone();
    let log = snapshot.access_log;
    let received = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));

    let filtered = request_filter(&mut ctx, &mut req);
    // The path as forwarded (the raw one when it was refused).
    let path = if log {
        req.uri().path().to_owned()
    } else {
        String::new()
    };
    let outcome = match filtered {
        Ok(()) => proxy(&shared, &snapshot, &conn, &mut ctx, req, received.clone()).await,
        Err(err) => Err(err),
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(err) => {
            report_error(&shared, &ctx, &err);
            error_response(&err, &ctx.request_id)
        }
    };
    response_filter(&mut response, &ctx);

    let status = response.status().as_u16();
    let elapsed = ctx.start.elapsed().as_secs_f64();
    match &ctx.route {
        Some(route) => route.metrics.record(&method, status, elapsed),
        None => shared.unrouted.record(&method, status, elapsed),
    }

    let completion = Completion {
        shared: shared.clone(),
        in_flight,
        log,
        received,
        record: AccessRecord {
            start: ctx.start,
            request_id: ctx.request_id,
            client: conn.peer.ip(),
            host: ctx.host,
            route: ctx.route.map(|r| r.name.0.clone()),
            method,
            path,
            status,
            upstream: ctx.endpoint,
            user: ctx.user,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
        },
    };
    response.map(|body| body.with_completion(completion))
}

async fn proxy(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Arc<ConnState>,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
    received: Option<Arc<AtomicU64>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Phase 2a: what the proxy answers itself, on the path the request is decided on.
    match own_endpoint(snapshot, ctx, req.uri().path())? {
        OwnEndpoint::Tunnel => {
            return Ok(crate::hub::tunnel(shared, snapshot, conn, ctx, req).await);
        }
        OwnEndpoint::TunnelRenew => {
            return Ok(crate::hub::tunnel_renew(shared, snapshot, ctx, &req).await);
        }
        OwnEndpoint::TunnelStatus => return Ok(crate::hub::tunnel_status(shared, &req)),
        OwnEndpoint::AgentConnect => {
            return Ok(crate::hub::agent_connect(shared, snapshot, conn, ctx, &req));
        }
        OwnEndpoint::Identity(identity) => {
            return Ok(login::handle(snapshot, identity, ctx, req).await);
        }
        OwnEndpoint::None => {}
    }
    // Phase 2b: the route.
    let route = route(snapshot, ctx, req.uri().path())?;

    let (mut parts, body) = req.into_parts();
    // Nothing the server layer attached is meant for the upstream, except the upgrade handle
    // this layer keeps for itself.
    let client_upgrade = std::mem::take(&mut parts.extensions).remove::<OnUpgrade>();
    let mut upstream_req = Request::from_parts(parts, RequestBody::new(body, received));

    // Phase 3: access. An upgrade first: a page on another origin may not open a WebSocket.
    if let Some(refused) =
        crate::forward::websocket::origin::check(snapshot, conn, ctx, &route, &upstream_req)
    {
        return Ok(refused);
    }
    let who = match access::check(snapshot, ctx, &route, &mut upstream_req).await {
        Access::Pass { who, set_cookie } => {
            ctx.user = who.as_ref().map(|w| w.user.clone());
            ctx.set_cookie = set_cookie;
            who
        }
        Access::Respond(response) => return Ok(response),
    };

    let upstream = &route.upstream;
    let endpoint = upstream_peer(upstream)?;
    ctx.endpoint = Some(endpoint.label.clone());
    // Only a protocol the route lets through is asked for; any other `Upgrade` is dropped
    // and the request goes on as an ordinary one.
    let upgrade = requested_upgrade(&upstream_req, &route);
    upstream_request_filter(
        &mut upstream_req,
        ctx,
        conn,
        snapshot,
        endpoint,
        upgrade.is_some(),
    );
    set_identity_headers(upstream_req.headers_mut(), snapshot, ctx, who.as_deref());
    let decided_path = upgrade
        .is_some()
        .then(|| ctx.decided_path(upstream_req.uri().path()).to_owned());

    let mut response = forward(shared, upstream, endpoint, upstream_req).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let switched_as_asked = upgrade.as_ref().is_some_and(|asked| {
            response
                .headers()
                .get(header::UPGRADE)
                .is_some_and(|to| to.as_bytes().eq_ignore_ascii_case(asked.as_bytes()))
        });
        if client_upgrade.is_none() || !switched_as_asked {
            return Err(ProxyError::UnexpectedUpgrade);
        }
        // The connection splices the two once hyper has written the `101` (see
        // [`crate::frontdoor::connection`]); the relay keeps the connection's admission and joins the
        // worker's connection tasks, so shutdown grants it the grace period. A signed-in
        // WebSocket is checked again while it stays open.
        let guard = who
            .and_then(|who| who.session.clone())
            .zip(decided_path)
            .map(|(session, path)| crate::forward::websocket::Guard {
                shared: shared.clone(),
                host: ctx.host.clone(),
                path,
                session,
            });
        conn.upgrade_to(hyper::upgrade::on(&mut response), guard);
    }
    Ok(response.map(ResponseBody::upstream))
}

/// Phase 1: the request id, the host, the framing and the one normal path.
fn request_filter(ctx: &mut RequestCtx, req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    ctx.request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if is_acceptable_request_id(id.as_bytes()) => id.clone(),
        _ => new_request_id(),
    };
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "the request has more than one Host header",
        ));
    }
    let raw_host = match req.uri().authority() {
        Some(authority) => {
            // HTTP/2 (RFC 9113 §8.3.1): `Host` and `:authority` must name one host. In an
            // HTTP/1.1 absolute-form target the target wins, and `Host` is replaced upstream.
            if req.version() == Version::HTTP_2
                && host_header.is_some_and(|h| {
                    !h.as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes())
                })
            {
                return Err(ProxyError::BadRequest(
                    "the Host header and the request target name different hosts",
                ));
            }
            HeaderValue::from_str(authority.as_str()).ok()
        }
        None => host_header.cloned(),
    }
    .ok_or(ProxyError::BadHost)?;
    let host = raw_host
        .to_str()
        .ok()
        .and_then(normalize_host)
        .ok_or(ProxyError::BadHost)?;
    ctx.host = host.into_owned();
    ctx.raw_host = Some(raw_host);
    check_transfer_coding(req.headers())?;
    normalize_request_path(ctx, req)
}

/// A request body is framed by `Content-Length` or by `Transfer-Encoding: chunked` alone. Any
/// other coding (`gzip, chunked`, `identity, chunked`) is refused (RFC 9112 §6.1), never
/// rewritten: a server behind that reads the codings differently would frame the body
/// differently.
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(coding) = codings.next() else {
        return Ok(());
    };
    if codings.next().is_some() {
        return Err(ProxyError::BadRequest(
            "the request has more than one Transfer-Encoding header",
        ));
    }
    if !coding
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
    {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(())
}

/// Puts the request's normal path in its URI, for every later phase and the upstream, and
/// records the path decisions are made on when it differs (see [`crate::routing::path`]).
fn normalize_request_path(
    ctx: &mut RequestCtx,
    req: &mut Request<Incoming>,
) -> Result<(), ProxyError> {
    let raw = req.uri().path();
    let (normal, encoded_slashes) = match normalize_path(raw) {
        Ok(normal) => (normal, false),
        Err(PathError::EncodedSlash) => (normalize_path_keeping_encoded_slashes(raw)?, true),
        Err(error) => return Err(error.into()),
    };
    ctx.decided_path = if encoded_slashes {
        let decoded = decode_slashes(&normal)?;
        Some(without_parameters(&decoded).into())
    } else {
        match without_parameters(&normal) {
            Cow::Borrowed(_) => None,
            Cow::Owned(decided) => Some(decided.into()),
        }
    };
    ctx.encoded_slashes = encoded_slashes;
    if let Cow::Owned(normal) = normal {
        let uri = with_path(req.uri(), normal)?;
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// `uri` with another path and the same query.
fn with_path(uri: &Uri, mut path: String) -> Result<Uri, ProxyError> {
    if let Some(query) = uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::from_maybe_shared(path)
            .map_err(|_| ProxyError::BadRequest("the request target is not valid"))?,
    );
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("the request target is not valid"))
}

/// What the proxy answers itself rather than routing.
enum OwnEndpoint<'s> {
    Tunnel,
    TunnelRenew,
    TunnelStatus,
    AgentConnect,
    /// The auth host and `/.sekisho/` paths, when login is configured.
    Identity(&'s IdentityRuntime),
    None,
}

/// Phase 2a: the tunnel hub's endpoints (on every host, with or without login configured) and
/// the identity layer's pages, found on the path the request is decided on.
fn own_endpoint<'s>(
    snapshot: &'s Snapshot,
    ctx: &RequestCtx,
    normal_path: &str,
) -> Result<OwnEndpoint<'s>, ProxyError> {
    let decided = ctx.decided_path(normal_path);
    let own = match decided {
        sekisho_wire::TUNNEL_PATH => OwnEndpoint::Tunnel,
        sekisho_wire::TUNNEL_RENEW_PATH => OwnEndpoint::TunnelRenew,
        sekisho_wire::TUNNEL_STATUS_PATH => OwnEndpoint::TunnelStatus,
        sekisho_wire::AGENT_CONNECT_PATH => OwnEndpoint::AgentConnect,
        _ => match snapshot.own_endpoint(&ctx.host, decided) {
            Some(identity) => OwnEndpoint::Identity(identity),
            None => OwnEndpoint::None,
        },
    };
    // The proxy's own pages are never reached through an encoded slash.
    if ctx.encoded_slashes && !matches!(own, OwnEndpoint::None) {
        return Err(PathError::EncodedSlash.into());
    }
    Ok(own)
}

/// Phase 2b: the route for the host and the path the request is decided on.
fn route(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    normal_path: &str,
) -> Result<Arc<Route>, ProxyError> {
    let route = match snapshot
        .routes
        .find(&ctx.host, ctx.decided_path(normal_path))
    {
        Some(route) => route.clone(),
        None if snapshot.routes.knows_host(&ctx.host) => return Err(ProxyError::NoRoute),
        None => return Err(ProxyError::UnknownHost),
    };
    ctx.route = Some(route.clone());
    if ctx.encoded_slashes && !route.allow_encoded_slashes {
        return Err(PathError::EncodedSlash.into());
    }
    Ok(route)
}

/// Phase 4: an endpoint of the upstream.
fn upstream_peer(upstream: &Upstream) -> Result<&Endpoint, ProxyError> {
    upstream.pick().ok_or(ProxyError::NoEndpoint)
}

/// Phase 5: what the upstream sees.
fn upstream_request_filter(
    req: &mut Request<RequestBody>,
    ctx: &RequestCtx,
    conn: &ConnState,
    snapshot: &Snapshot,
    endpoint: &Endpoint,
    upgrade: bool,
) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    set_forwarding_headers(
        headers,
        conn.peer.ip(),
        &conn.peer_ip_header,
        snapshot.is_trusted_proxy(conn.peer.ip()),
        conn.tls,
        ctx.raw_host.as_ref(),
    );
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());

    if endpoint.speaks_http1_only() {
        // Origin-form request target, and in `Host` the host the request was routed by (HTTP/2
        // clients send it as `:authority`; an absolute-form URI's authority beats `Host`).
        if let Some(host) = &ctx.raw_host {
            headers.insert(header::HOST, host.clone());
        }
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path_and_query = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path_and_query);
        }
    } else {
        // The connector dials the endpoint; the URI keeps the client's host as the authority so
        // HTTP/2 upstreams see the right `:authority` and HTTP/1.1 ones the right `Host`.
        let path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let authority = ctx
            .raw_host
            .as_ref()
            .and_then(|h| Authority::from_maybe_shared(Bytes::copy_from_slice(h.as_bytes())).ok());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if endpoint.scheme == Scheme::HTTPS {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = authority;
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    // HTTP/2 from the client, HTTP/1.1 or HTTP/2 to the upstream: the client library picks the
    // wire version from the connection.
    *req.version_mut() = Version::HTTP_11;
}

static X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
static X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
static X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
static X_SEKISHO_ASSERTION: HeaderName = HeaderName::from_static("x-sekisho-assertion");

/// Phase 5, identity part: whatever a gateway alone may say and the client claimed goes (see
/// [`crate::forward::header`]), the proxy's cookies go, and a verified identity is set.
fn set_identity_headers(
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    who: Option<&Who>,
) {
    let extra = snapshot
        .identity
        .as_deref()
        .map_or(&[][..], |i| i.strip_headers.as_slice());
    crate::forward::header::strip_gateway_claims(headers, extra);
    if headers.contains_key(header::COOKIE) {
        crate::auth::session::strip_session_cookies(headers);
    }
    let (Some(who), Some(identity)) = (who, snapshot.identity.as_deref()) else {
        return;
    };
    headers.remove(header::AUTHORIZATION);
    // Room for the four headers below at once, rather than growing the map on the way.
    headers.reserve(4);
    for (name, value) in [
        (&X_FORWARDED_USER, &who.headers.user),
        (&X_FORWARDED_EMAIL, &who.headers.email),
        (&X_FORWARDED_GROUPS, &who.headers.groups),
    ] {
        if let Some(value) = value {
            headers.insert(name.clone(), value.clone());
        }
    }
    let now = crate::auth::session::unix_now();
    if let Some(value) = who.cached_assertion(&ctx.host, now) {
        headers.insert(X_SEKISHO_ASSERTION.clone(), value);
        return;
    }
    let signer_identity = sekisho_identity::signing::Identity {
        subject: &who.identity.subject,
        email: who.email(),
        groups: &who.identity.groups,
    };
    match identity
        .assertions
        .assertion(who.session_id, &ctx.host, &signer_identity, now)
    {
        Ok(token) => {
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from_owner(ArcStrBytes(token)))
            {
                who.remember_assertion(&ctx.host, value.clone(), now + ASSERTION_REUSE_SECS);
                headers.insert(X_SEKISHO_ASSERTION.clone(), value);
            }
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot sign an identity assertion")
        }
    }
}

/// How long a session reuses its assertion header value before asking the issuer again (which
/// re-signs well before expiry).
const ASSERTION_REUSE_SECS: u64 = 30;

/// A shared token as the bytes of a header value, without copying it.
struct ArcStrBytes(Arc<str>);

impl AsRef<[u8]> for ArcStrBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Phase 6: the exchange with the upstream, bounded by the response-header timeout.
async fn forward(
    shared: &Shared,
    upstream: &Upstream,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let exchange = async {
        match upstream.config.agent.as_deref() {
            Some(agent) => shared.hub.send_http(agent, &endpoint.label, req).await,
            None => endpoint.send(req).await.map_err(classify_send_error),
        }
    };
    let result = tokio::time::timeout(upstream.config.response_header_timeout, exchange).await;
    let error = match result {
        Ok(Ok(response)) => {
            upstream.report(endpoint, true);
            return Ok(response);
        }
        Err(_) => ProxyError::UpstreamTimeout,
        Ok(Err(err)) if caused_by_client_body(&err) => {
            return Err(ProxyError::ClientBody(Box::new(err)));
        }
        Ok(Err(err)) => err,
    };
    let down = matches!(
        error,
        ProxyError::UpstreamConnect(_) | ProxyError::UpstreamConnectTimeout(_)
    );
    if down && upstream.report(endpoint, false) {
        tracing::warn!(
            upstream = %upstream.name,
            endpoint = %endpoint.label,
            "endpoint ejected after consecutive connection failures"
        );
        shared
            .metrics
            .endpoint_ejections
            .get_or_create(&metrics::EndpointLabels {
                upstream: Name(upstream.name.clone()),
                endpoint: Name(endpoint.label.clone()),
            })
            .inc();
    }
    Err(error)
}

/// Whether an exchange failed because the client's request body did.
fn caused_by_client_body(err: &ProxyError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(error) = source {
        if error.is::<ClientBodyError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn classify_send_error(err: SendError) -> ProxyError {
    match err.connect_error() {
        Some(ConnectError::Timeout { .. }) => ProxyError::UpstreamConnectTimeout(Box::new(err)),
        Some(_) => ProxyError::UpstreamConnect(Box::new(err)),
        None if err.is_connect() => ProxyError::UpstreamConnect(Box::new(err)),
        None => ProxyError::UpstreamProtocol(Box::new(err)),
    }
}

/// Phase 7: what the client sees.
fn response_filter<B>(response: &mut Response<B>, ctx: &RequestCtx) {
    let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    if let Some(cookie) = &ctx.set_cookie {
        headers.append(header::SET_COOKIE, cookie.clone());
    }
}

fn report_error(shared: &Shared, ctx: &RequestCtx, err: &ProxyError) {
    if err.source_kind() == ErrorSource::Downstream {
        return;
    }
    let upstream = ctx
        .route
        .as_ref()
        .map_or_else(|| Arc::from(""), |r| r.upstream.name.clone());
    shared
        .metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            upstream: Name(upstream.clone()),
            kind: err.metric_label(),
        })
        .inc();
    tracing::warn!(
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        %upstream,
        endpoint = ctx.endpoint.as_deref().unwrap_or("-"),
        error = %crate::error_chain(err),
        "upstream request failed"
    );
}

/// A response made by the proxy itself, naming the request id.
pub(crate) fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ResponseBody> {
    status_page(err.status(), &err.to_string(), request_id)
}

pub(crate) fn status_page(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = format!(
        "{} {}\n{message}\nrequest id: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        request_id.to_str().unwrap_or("-"),
    );
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

fn is_acceptable_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, byte) in random.to_be_bytes().iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
}

/// The protocol an upgrade request asks for, when it names one and the route lets it through.
fn requested_upgrade<B>(req: &Request<B>, route: &Route) -> Option<HeaderValue> {
    if !is_upgrade_request(req) {
        return None;
    }
    let mut values = req.headers().get_all(header::UPGRADE).iter();
    let protocol = values.next()?;
    let one = values.next().is_none() && !protocol.as_bytes().contains(&b',');
    (one && route.allows_upgrade(protocol.as_bytes().trim_ascii())).then(|| protocol.clone())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1): the
/// fixed list and whatever `Connection` names. `Upgrade` survives on upgrade exchanges, and
/// `TE: trailers` (which gRPC needs) survives on requests.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names says which of these are present; only those are looked up.
    let present = headers
        .keys()
        .fold(0, |present, name| present | hop_by_hop_bit(name));
    if present == 0 && !upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Every `Connection` header's tokens. `keep-alive` names a header the fixed list
        // removes anyway, and `close` names none: neither needs a lookup.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(',').map(str::trim))
            .filter(|token| {
                !(token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("te")
                    || (upgrade && token.eq_ignore_ascii_case("upgrade")))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        let bit = 1 << index;
        if present & bit == 0 {
            continue;
        }
        let keep = match bit {
            TE_BIT => headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers")),
            UPGRADE_BIT => upgrade,
            _ => false,
        };
        if !keep {
            headers.remove(*name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The headers that are always connection-level. A message's set of them is a bit mask:
/// bit `i` stands for `HOP_BY_HOP[i]`.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &header::CONNECTION,
    &header::TE,
    &header::UPGRADE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
];
const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 1;
const UPGRADE_BIT: u16 = 1 << 2;

fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    HOP_BY_HOP
        .iter()
        .position(|hop| name == *hop)
        .map_or(0, |index| 1 << index)
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `X-Real-IP`. From a trusted proxy, the chain is
/// extended and its proto and host kept; from anyone else, whatever the client claimed is
/// replaced (and `Forwarded` dropped).
fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_header: &HeaderValue,
    trusted: bool,
    tls: bool,
    raw_host: Option<&HeaderValue>,
) {
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if trusted {
        let chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let value = if chain.is_empty() {
            peer_header.clone()
        } else {
            HeaderValue::from_str(&format!("{chain}, {peer}")).unwrap_or(peer_header.clone())
        };
        headers.insert(X_FORWARDED_FOR.clone(), value);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = raw_host
        {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP.clone(), peer_header.clone());
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer_header.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
        match raw_host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.insert(X_REAL_IP.clone(), peer_header.clone());
        headers.remove(&FORWARDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn headers_named_in_any_connection_header_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("connection", "x-second-hop, close"),
            ("x-second-hop", "1"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn te_trailers_and_upgrades_survive() {
        let mut map = headers(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["te"], "trailers");
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
    }

    #[test]
    fn untrusted_clients_cannot_forge_forwarding_headers() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let host = HeaderValue::from_static("app.test");
        set_forwarding_headers(
            &mut map,
            peer,
            &HeaderValue::from_static("192.0.2.7"),
            false,
            true,
            Some(&host),
        );
        assert_eq!(map["x-forwarded-for"], "192.0.2.7");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "app.test");
        assert_eq!(map["x-real-ip"], "192.0.2.7");
        assert!(!map.contains_key("forwarded"));
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        set_forwarding_headers(
            &mut map,
            peer,
            &HeaderValue::from_static("10.0.0.9"),
            true,
            false,
            None,
        );
        assert_eq!(
            map["x-forwarded-for"],
            "198.51.100.1, 198.51.100.2, 10.0.0.9"
        );
        assert_eq!(map["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids_are_random_hex_and_client_ids_are_checked() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
        assert!(is_acceptable_request_id(b"abc-123_x.y"));
        assert!(!is_acceptable_request_id(b""));
        assert!(!is_acceptable_request_id(b"a b"));
        assert!(!is_acceptable_request_id(&[b'a'; 129]));
    }

    #[test]
    fn error_statuses_follow_the_error_source() {
        assert_eq!(ProxyError::UnknownHost.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ProxyError::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::UpstreamConnect("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::UpstreamConnect("x".into()).source_kind(),
            ErrorSource::Upstream
        );
    }
}
