//! The request pipeline. Each request passes named phases with one context
//! ([`RequestCtx`]):
//!
//! 1. `request_filter`: request id, host, framing, and the one normal path every later phase
//!    uses (see [`crate::routing::path`]; targets that cannot be made unambiguous are a 400 here);
//! 2. `dispatch`: on the plain-HTTP listener, an ACME HTTP-01 challenge route first (`GET` and
//!    `HEAD` only), then, in `http_mode: redirect`, the redirect to HTTPS for everything else;
//!    then what the proxy answers itself (`own_endpoint`: the tunnel hub, login and CLI pages);
//! 3. `route`: host and path to a route (404 for unknown hosts and paths);
//! 4. `access`: who is asking and may they pass ([`crate::auth::access`]);
//! 5. `upstream_peer`: an endpoint of the route's upstream;
//! 6. `upstream_request_filter`: hop-by-hop and forwarding headers, identity headers, the
//!    upstream URI;
//! 7. `forward`: the exchange, under the response-header timeout;
//! 8. `response_filter`: hop-by-hop headers off, request id on;
//! 9. logging, when the response body is done (see [`crate::respond::body`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::context::RequestCtx;
use super::error::{
    ErrorSource, ProxyError, caused_by_client_body, classify_send_error, error_response,
};
use crate::auth::access::{self, Access};
use crate::auth::endpoint::CLI_PREFIX;
use crate::auth::identity::IdentityRuntime;
use crate::auth::who::Who;
use crate::auth::{cli_login, login};
use crate::forward::body::RequestBody;
use crate::forward::header::{
    is_upgrade_request, remove_hop_by_hop, set_forwarding_headers, strip_gateway_claims,
};
use crate::forward::upstream::{Endpoint, Upstream};
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics::{self, DecisionKind, DecisionReason, Name, UpstreamErrorLabels};
use crate::respond::body::{Completion, ResponseBody};
use crate::respond::{Format, X_REQUEST_ID, is_acceptable_request_id, new_request_id, status_page};
use crate::routing::path::{
    PathError, decode_slashes, normalize_path, normalize_path_keeping_encoded_slashes,
    without_parameters,
};
use crate::routing::snapshot::{Route, Snapshot};
use crate::routing::table::normalize_host;
use crate::state::Shared;
use crate::state::client::ConnState;

/// Serves one request on a listener that proxies.
pub(crate) async fn serve_request(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let in_flight = conn.request_started();
    let snapshot = shared.snapshot.load_full();
    let mut ctx = RequestCtx::new();
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
    let outcome = match filtered.and_then(|()| dispatch(&shared, &snapshot, &conn, &mut ctx, &req))
    {
        Ok(Dispatch::Own(own)) => {
            Ok(serve_own_endpoint(own, &shared, &snapshot, &conn, &ctx, req).await)
        }
        Ok(Dispatch::Route(route)) => {
            serve_route(
                &shared,
                &snapshot,
                &conn,
                &mut ctx,
                route,
                req,
                received.clone(),
            )
            .await
        }
        Ok(Dispatch::Redirect) => Ok(redirect_to_https(&shared, &ctx, &req)),
        Err(err) => Err(err),
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(err) => {
            report_error(&shared, &ctx, &err);
            error_response(&err, &ctx.request_id, ctx.format)
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
        access_log: shared.access_log.clone(),
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

/// Phase 2's answer: the tunnel hub's and the identity layer's own endpoints.
async fn serve_own_endpoint(
    own: OwnEndpoint<'_>,
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Arc<ConnState>,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match own {
        OwnEndpoint::Tunnel => {
            crate::hub::tunnel::open_tunnel(shared, snapshot, conn, ctx, req).await
        }
        OwnEndpoint::TunnelRenew => crate::hub::tunnel::renew(shared, snapshot, ctx, &req).await,
        OwnEndpoint::TunnelStatus => crate::hub::tunnel::status(shared, snapshot, ctx, &req).await,
        OwnEndpoint::AgentConnect => {
            crate::hub::agent::accept_agent(shared, snapshot, conn, ctx, &req)
        }
        OwnEndpoint::Relay => crate::hub::carry::carry(shared, snapshot, conn, &req).await,
        OwnEndpoint::StreamQuestion => {
            crate::hub::tunnel::answer_replica(shared, snapshot, conn, &req).await
        }
        OwnEndpoint::CliLogin(identity) => {
            cli_login::serve_cli_endpoint(snapshot, identity, ctx, req).await
        }
        OwnEndpoint::Identity(identity) => {
            login::serve_identity_page(snapshot, &shared.metrics, identity, ctx, req).await
        }
    }
}

/// Phases 4 to 7, for a request that a route serves.
async fn serve_route(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &Arc<ConnState>,
    ctx: &mut RequestCtx,
    route: Arc<Route>,
    req: Request<Incoming>,
    received: Option<Arc<AtomicU64>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // Nothing the server layer attached is meant for the upstream, except the upgrade handle
    // this layer keeps for itself.
    let client_upgrade = std::mem::take(&mut parts.extensions).remove::<OnUpgrade>();
    let mut upstream_req = Request::from_parts(parts, RequestBody::new(body, received));

    // Phase 4: access. An upgrade first: a page on another origin may not open a WebSocket.
    if let Some(refused) =
        crate::forward::websocket::origin::check(snapshot, conn, ctx, &route, &upstream_req)
    {
        shared
            .metrics
            .decision(DecisionKind::Denied, DecisionReason::WebsocketOrigin);
        return Ok(refused);
    }
    let who = match access::check(snapshot, &shared.metrics, ctx, &route, &mut upstream_req).await {
        Access::Pass { who, set_cookie } => {
            ctx.user = who.as_ref().map(|w| w.user.clone());
            ctx.set_cookie = set_cookie;
            who
        }
        Access::Respond { response, user } => {
            ctx.user = user;
            return Ok(response);
        }
    };

    let upstream = &route.upstream;
    // Phase 5: an endpoint.
    let endpoint = upstream_peer(upstream)?;
    ctx.endpoint = Some(endpoint.label.clone());
    // Only a protocol the route lets through is asked for; any other `Upgrade` is dropped
    // and the request goes on as an ordinary one.
    let upgrade = requested_upgrade(&upstream_req, &route);
    // Phase 6: what the upstream sees.
    upstream_request_filter(
        &mut upstream_req,
        ctx,
        conn,
        snapshot,
        &route,
        endpoint,
        upgrade.is_some(),
    );
    set_identity_headers(
        upstream_req.headers_mut(),
        snapshot,
        ctx,
        &route,
        who.as_deref(),
    );
    let decided_path = upgrade
        .is_some()
        .then(|| ctx.decided_path(upstream_req.uri().path()).to_owned());

    // Phase 7: the exchange.
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
        // The connection hands its socket over once hyper has written the `101` (see
        // [`crate::frontdoor::connection`]); the splice keeps the connection's admission and
        // joins the worker's connection tasks, so shutdown grants it the grace period. A
        // signed-in WebSocket is checked again while it stays open.
        let guard = who
            .and_then(|who| who.session.clone())
            .zip(decided_path)
            .map(|(session, path)| crate::forward::websocket::Guard {
                shared: shared.clone(),
                host: ctx.host.clone(),
                path,
                session,
            });
        let upstream = hyper::upgrade::on(&mut response);
        conn.take_over(Box::new(move |client, _shutdown| {
            Box::pin(crate::forward::websocket::splice_upgraded(
                client, upstream, guard,
            ))
        }));
    }
    Ok(response.map(ResponseBody::upstream))
}

/// Phase 1: the request id, the host, the framing and the one normal path.
fn request_filter(ctx: &mut RequestCtx, req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    ctx.request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if is_acceptable_request_id(id.as_bytes()) => id.clone(),
        _ => new_request_id(),
    };
    ctx.format = Format::of(req.headers());
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
    /// A tunnel stream another replica relays to this one.
    Relay,
    /// Another replica asks about a tunnel stream kept here.
    StreamQuestion,
    /// The CLI's OAuth endpoints, when login is configured.
    CliLogin(&'s IdentityRuntime),
    /// The auth host and other `/.sekisho/` paths, when login is configured.
    Identity(&'s IdentityRuntime),
}

/// Phase 2: the tunnel hub's endpoints (on every host, with or without login configured) and
/// the identity layer's pages, found on the path the request is decided on.
fn own_endpoint<'s>(
    snapshot: &'s Snapshot,
    ctx: &RequestCtx,
    normal_path: &str,
) -> Result<Option<OwnEndpoint<'s>>, ProxyError> {
    let decided = ctx.decided_path(normal_path);
    let own = match decided {
        sekisho_wire::TUNNEL_PATH => Some(OwnEndpoint::Tunnel),
        sekisho_wire::TUNNEL_RENEW_PATH => Some(OwnEndpoint::TunnelRenew),
        sekisho_wire::TUNNEL_STATUS_PATH => Some(OwnEndpoint::TunnelStatus),
        sekisho_wire::AGENT_CONNECT_PATH => Some(OwnEndpoint::AgentConnect),
        crate::hub::relay::RELAY_PATH => Some(OwnEndpoint::Relay),
        crate::hub::ask::STREAM_PATH => Some(OwnEndpoint::StreamQuestion),
        _ => snapshot.own_endpoint(&ctx.host, decided).map(|identity| {
            match decided.starts_with(CLI_PREFIX) {
                true => OwnEndpoint::CliLogin(identity),
                false => OwnEndpoint::Identity(identity),
            }
        }),
    };
    // The proxy's own pages are never reached through an encoded slash.
    if ctx.encoded_slashes && own.is_some() {
        return Err(PathError::EncodedSlash.into());
    }
    Ok(own)
}

/// Who answers a request that passed the request filter.
enum Dispatch<'s> {
    /// The proxy itself.
    Own(OwnEndpoint<'s>),
    /// A route's upstream.
    Route(Arc<Route>),
    /// The same URL over HTTPS (the plain-HTTP listener in `http_mode: redirect`).
    Redirect,
}

/// Phases 2 and 3: who answers. On the plain-HTTP listener an ACME challenge comes first, and
/// in redirect mode everything else is redirected; then the proxy's own endpoints, then the
/// routes. The ACME table is never looked at on the HTTPS listener.
fn dispatch<'s>(
    shared: &Shared,
    snapshot: &'s Snapshot,
    conn: &ConnState,
    ctx: &mut RequestCtx,
    req: &Request<Incoming>,
) -> Result<Dispatch<'s>, ProxyError> {
    let normal_path = req.uri().path();
    if !conn.tls {
        if let Some(route) = acme_challenge(snapshot, ctx, req.method(), normal_path)? {
            return Ok(Dispatch::Route(route));
        }
        if shared.redirects_plain_http() {
            return match snapshot.routes.knows_host(&ctx.host) {
                true => Ok(Dispatch::Redirect),
                false => Err(ProxyError::UnknownHost),
            };
        }
    }
    if let Some(own) = own_endpoint(snapshot, ctx, normal_path)? {
        return Ok(Dispatch::Own(own));
    }
    route(snapshot, ctx, normal_path).map(Dispatch::Route)
}

/// Phase 2 on the plain-HTTP listener: the ACME HTTP-01 challenge route for the host and the
/// path the request is decided on, if there is one. A validator sends `GET` (RFC 8555 §8.3);
/// `HEAD` is its body-less twin; any other method is refused here rather than passed on.
fn acme_challenge(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    method: &Method,
    normal_path: &str,
) -> Result<Option<Arc<Route>>, ProxyError> {
    let Some(route) = snapshot.acme.find(&ctx.host, ctx.decided_path(normal_path)) else {
        return Ok(None);
    };
    let route = chosen(ctx, route)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed { allow: "GET, HEAD" });
    }
    Ok(Some(route))
}

/// Phase 3: the route for the host and the path the request is decided on.
fn route(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    normal_path: &str,
) -> Result<Arc<Route>, ProxyError> {
    match snapshot
        .routes
        .find(&ctx.host, ctx.decided_path(normal_path))
    {
        Some(route) => chosen(ctx, route),
        None if snapshot.routes.knows_host(&ctx.host) => Err(ProxyError::NoRoute),
        None => Err(ProxyError::UnknownHost),
    }
}

/// Records the route found for the request (for its metrics and log line, even when it is
/// refused next), and refuses `%2F` unless the route lets it through.
fn chosen(ctx: &mut RequestCtx, route: &Arc<Route>) -> Result<Arc<Route>, ProxyError> {
    ctx.route = Some(route.clone());
    if ctx.encoded_slashes && !route.allow_encoded_slashes {
        return Err(PathError::EncodedSlash.into());
    }
    Ok(route.clone())
}

/// Phase 5: an endpoint of the upstream.
fn upstream_peer(upstream: &Upstream) -> Result<&Endpoint, ProxyError> {
    upstream.pick().ok_or(ProxyError::NoEndpoint)
}

/// Phase 6: what the upstream sees.
fn upstream_request_filter(
    req: &mut Request<RequestBody>,
    ctx: &RequestCtx,
    conn: &ConnState,
    snapshot: &Snapshot,
    route: &Route,
    endpoint: &Endpoint,
    upgrade: bool,
) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    // The client's claims go before the proxy adds its own forwarding headers: the built-in
    // ones, `identity.strip_headers` and the route's own identity headers.
    strip_gateway_claims(headers, &route.claims);
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

static X_SEKISHO_ASSERTION: HeaderName = HeaderName::from_static("x-sekisho-assertion");

/// Phase 6, identity part: the proxy's cookies go, and a verified identity is set in the
/// route's identity headers (whatever a gateway alone may say and the client claimed, in those
/// names too, is gone already: see [`upstream_request_filter`]).
fn set_identity_headers(
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    route: &Route,
    who: Option<&Who>,
) {
    if headers.contains_key(header::COOKIE) {
        crate::auth::session::strip_session_cookies(headers);
    }
    let (Some(who), Some(identity)) = (who, snapshot.identity.as_deref()) else {
        return;
    };
    headers.remove(header::AUTHORIZATION);
    // Room for the four headers below at once, rather than growing the map on the way.
    headers.reserve(4);
    let names = &route.identity_headers;
    for (name, value) in [
        (&names.user, &who.headers.user),
        (&names.email, &who.headers.email),
        (&names.groups, &who.headers.groups),
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

/// Phase 7: the exchange with the upstream, bounded by the response-header timeout.
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

/// Phase 8: what the client sees.
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

/// The plain-HTTP listener's answer in redirect mode: the same URL (its normal path) over
/// HTTPS, on the host the request was decided on.
fn redirect_to_https(
    shared: &Shared,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let port = match shared.redirect_port {
        443 => String::new(),
        port => format!(":{port}"),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", ctx.host);
    let mut response = status_page(
        StatusCode::PERMANENT_REDIRECT,
        "this site is served over HTTPS",
        &ctx.request_id,
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests;
