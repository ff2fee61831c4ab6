//! Tunnel requests from `sekisho tunnel`: the host's tunnel route, the bearer token, the
//! policy decision, the stream to the target, and its re-authorisation while it is open.
//!
//! A refusal is a status and a JSON body with a stable code ([`TunnelError`]). An accepted
//! request gets `101`, and the client socket is spliced to the target: a TCP connection the
//! proxy dials, or an HTTP/2 `CONNECT` stream through the target's agent. Every
//! [`RECHECK_EVERY`] the token is verified again and the current policy asked again; the stream
//! is cut when the token expires or is revoked, or the policy stops allowing it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sekisho_wire::tunnel::{StreamStatus, TunnelError};
use sekisho_wire::{COPY_BUFFER, STREAM_HEADER, TUNNEL_PROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::stream::{Stream, StreamId, lock};
use crate::auth::access::{bearer_token, decision_reason, verify_bearer};
use crate::auth::endpoint::auth_origin;
use crate::auth::session::unix_now;
use crate::auth::who::bearer_identity;
use crate::observe::metrics::{DecisionKind, DecisionReason};
use crate::observe::metrics::{DirectionLabels, ReasonLabels};
use crate::policy::{Decision, Identity};
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::json_error;
use crate::routing::snapshot::{Snapshot, TunnelRoute};
use crate::state::Shared;
use crate::state::client::ConnState;

/// How often an open tunnel's token and policy are checked again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Answers a tunnel request.
pub(crate) async fn open_tunnel(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match open(shared, snapshot, ctx, &req).await {
        Ok((target, stream)) => {
            let shared = shared.clone();
            let id = HeaderValue::from_str(&hex(&stream.id)).expect("hex is a valid header value");
            // Marks the stream closed however the hand-off ends, even if it never runs (the
            // client went away before the `101`), so the hub forgets it in time.
            let accepted = Accepted(stream);
            conn.take_over(Box::new(move |client, _shutdown| {
                Box::pin(async move {
                    let stream = &accepted.0;
                    match target {
                        Target::Direct(tcp) => relay(&shared, client, tcp, stream).await,
                        Target::Agent(upgraded) => {
                            relay(&shared, client, TokioIo::new(upgraded), stream).await
                        }
                    }
                })
            }));
            let mut response = super::registry::switching_protocols(TUNNEL_PROTOCOL);
            response.headers_mut().insert(STREAM_HEADER, id);
            response
        }
        Err((error, detail)) => {
            shared
                .metrics
                .tunnel
                .stream_failures
                .get_or_create(&ReasonLabels {
                    reason: error.code(),
                })
                .inc();
            let login_url = snapshot
                .identity
                .as_deref()
                .filter(|_| error == TunnelError::NotLoggedIn)
                .map(|identity| format!("{}/", auth_origin(identity, ctx)));
            let message = match detail {
                Some(detail) => format!("{}: {detail}", error.message()),
                None => error.message().to_owned(),
            };
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            json_error(status, error.code(), &message, login_url.as_deref())
        }
    }
}

/// An accepted stream, for as long as its relay may run.
struct Accepted(Arc<Stream>);

impl Drop for Accepted {
    fn drop(&mut self) {
        if self.0.closed_since().is_none() {
            self.0.close(None, "the connection ended".to_owned());
        }
    }
}

/// The other end of an accepted tunnel.
enum Target {
    Direct(TcpStream),
    Agent(hyper::upgrade::Upgraded),
}

/// `None` while the tunnel may stay open; else why it must close.
async fn still_allowed(shared: &Shared, stream: &Stream) -> Option<(TunnelError, &'static str)> {
    let snapshot = shared.snapshot.load_full();
    let Some(route) = snapshot.tunnels.get(&stream.host) else {
        return Some((TunnelError::UnknownHost, "the tunnel route was removed"));
    };
    let Some(identity) = snapshot.identity.as_deref() else {
        return Some((TunnelError::NotLoggedIn, "login is no longer configured"));
    };
    let token = lock(&stream.token).clone();
    let person = match verify_bearer(identity, &token, unix_now()).await {
        Ok(claims) => bearer_identity(claims),
        Err(_) => {
            return Some((
                TunnelError::NotLoggedIn,
                "the login expired or was revoked (run `sekisho login`)",
            ));
        }
    };
    match decide(route, &person) {
        Decision::Allow { .. } => None,
        _ => Some((TunnelError::Denied, "the policy no longer allows you here")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stream_id(text: &str) -> Option<StreamId> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

type Refusal = (TunnelError, Option<String>);

/// Checks the request, then opens the stream to the target.
async fn open(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<(Target, Arc<Stream>), Refusal> {
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(TUNNEL_PROTOCOL.as_bytes())
    });
    if req.method() != Method::GET || req.version() != Version::HTTP_11 || !upgrade {
        return Err((
            TunnelError::BadRequest,
            Some(format!(
                "tunnels open with an HTTP/1.1 GET and `Upgrade: {TUNNEL_PROTOCOL}`"
            )),
        ));
    }
    let Some(route) = snapshot.tunnels.get(&ctx.host) else {
        return Err((TunnelError::UnknownHost, None));
    };
    let refuse = |error: TunnelError, user: Option<&str>, rule: &str, reason: &str| {
        log_decision(ctx, route, user, false, rule, reason);
        Err((error, Some(reason.to_owned())))
    };
    let metrics = &shared.metrics;
    let (Some(identity), Some(token)) = (snapshot.identity.as_deref(), bearer_token(req.headers()))
    else {
        metrics.decision(DecisionKind::LoginRequired, DecisionReason::BadToken);
        return refuse(TunnelError::NotLoggedIn, None, "bearer", "no bearer token");
    };
    let (issuer, subject, person) = match verify_bearer(identity, token, unix_now()).await {
        Ok(claims) => (
            claims.issuer.clone(),
            claims.subject.clone(),
            bearer_identity(claims),
        ),
        Err(rejection) => {
            metrics.decision(DecisionKind::Denied, DecisionReason::BadToken);
            let reason = crate::error_chain(&rejection);
            return refuse(TunnelError::NotLoggedIn, None, "bearer", &reason);
        }
    };
    let user: Arc<str> = Arc::from(person.verified_email().unwrap_or(&person.subject));
    let decision = decide(route, &person);
    let rule = decision.rule().to_string();
    let kind = match decision {
        Decision::Allow { .. } => DecisionKind::Allowed,
        _ => DecisionKind::Denied,
    };
    metrics.decision(kind, decision_reason(decision.rule()));
    match decision {
        Decision::Allow { .. } => log_decision(ctx, route, Some(&user), true, &rule, "allowed"),
        Decision::Deny { reason, .. } => {
            return refuse(TunnelError::Denied, Some(&user), &rule, reason);
        }
        Decision::LoginRequired { .. } => {
            let reason = "the policy allows no one here";
            return refuse(TunnelError::Denied, Some(&user), &rule, reason);
        }
    }

    let target = match &route.agent {
        None => {
            let dial =
                tokio::time::timeout(route.connect_timeout, TcpStream::connect(&route.target));
            match dial.await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    Target::Direct(tcp)
                }
                Ok(Err(error)) => {
                    return Err((TunnelError::TargetUnreachable, Some(error.to_string())));
                }
                Err(_) => return Err((TunnelError::TargetTimeout, None)),
            }
        }
        Some(agent) => Target::Agent(
            shared
                .hub
                .open_stream(agent, &route.target, route.connect_timeout)
                .await?,
        ),
    };
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(|_| {
        (
            TunnelError::BadRequest,
            Some("no random numbers".to_owned()),
        )
    })?;
    let stream = Arc::new(Stream {
        id,
        host: route.host.clone(),
        user,
        issuer,
        subject,
        token: Mutex::new(token.to_owned()),
        closed: Mutex::new(None),
    });
    shared.hub.add_stream(stream.clone());
    Ok((target, stream))
}

fn decide(route: &TunnelRoute, person: &Identity) -> Decision {
    route
        .access
        .decide(Some(person), &Method::CONNECT, "/", &HeaderMap::new())
}

/// Copies both ways until either side closes or the stream's check says it must close.
async fn relay<C, T>(shared: &Shared, client: C, target: T, stream: &Stream)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    enum End {
        Done,
        Broke(std::io::Error),
        Cut(TunnelError, &'static str),
    }
    let metrics = &shared.metrics.tunnel;
    metrics.streams_open.inc();
    let (mut client, mut target) = (Counted::new(client), Counted::new(target));
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut target,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        tokio::pin!(copy);
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.tick().await;
        loop {
            tokio::select! {
                result = &mut copy => break match result {
                    Ok(_) => End::Done,
                    // A client that went away without a TLS close_notify: ended all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => End::Done,
                    Err(e) => End::Broke(e),
                },
                _ = recheck.tick() => {
                    if let Some((error, why)) = still_allowed(shared, stream).await {
                        break End::Cut(error, why);
                    }
                }
            }
        }
    };
    metrics.streams_open.dec();
    let (to_target, to_client) = (client.read, target.read);
    for (direction, bytes) in [("to_target", to_target), ("to_client", to_client)] {
        metrics
            .bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(bytes);
    }
    let (host, user) = (&stream.host, &stream.user);
    match end {
        End::Done => {
            stream.close(None, "the connection ended".to_owned());
            tracing::debug!(%host, %user, to_target, to_client, "tunnel closed");
        }
        End::Broke(error) => {
            tracing::debug!(%host, %user, to_target, to_client, %error, "tunnel broke");
            stream.close(
                Some(TunnelError::TargetUnreachable),
                format!("the stream broke: {error}"),
            );
        }
        End::Cut(error, why) => {
            tracing::info!(target: "sekisho::access", %host, %user, reason = why, "tunnel cut");
            stream.close(Some(error), why.to_owned());
            // A clean TLS close, so the client reads an end of stream and asks why.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.inner.shutdown()).await;
        }
    }
}

/// A stream that counts the bytes read from it.
struct Counted<T> {
    inner: T,
    read: u64,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Self { inner, read: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `POST` [`sekisho_wire::TUNNEL_RENEW_PATH`]: the stream named in [`STREAM_HEADER`] goes on
/// under the fresh token this request carries, if it is for the same person.
pub(crate) async fn renew(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let refuse = |status: StatusCode, error: TunnelError, message: &str| {
        json_error(status, error.code(), message, None)
    };
    if req.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            TunnelError::BadRequest,
            "use POST",
        );
    }
    let stream = req
        .headers()
        .get(STREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(stream_id)
        .and_then(|id| shared.hub.stream(&id))
        .filter(|s| s.closed_since().is_none());
    let Some(stream) = stream else {
        return refuse(
            StatusCode::NOT_FOUND,
            TunnelError::BadRequest,
            "no such open stream",
        );
    };
    let (Some(identity), Some(token)) = (snapshot.identity.as_deref(), bearer_token(req.headers()))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            TunnelError::NotLoggedIn,
            "no bearer token",
        );
    };
    match verify_bearer(identity, token, unix_now()).await {
        Ok(claims) if claims.issuer == stream.issuer && claims.subject == stream.subject => {
            *lock(&stream.token) = token.to_owned();
            tracing::debug!(host = %ctx.host, user = %stream.user, "tunnel token renewed");
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Ok(_) => refuse(
            StatusCode::FORBIDDEN,
            TunnelError::Denied,
            "the token is for someone else than the stream's",
        ),
        Err(rejection) => refuse(
            StatusCode::UNAUTHORIZED,
            TunnelError::NotLoggedIn,
            &crate::error_chain(&rejection),
        ),
    }
}

/// `GET` [`sekisho_wire::TUNNEL_STATUS_PATH`]`?stream=ID`: open, or closed and why. The id is
/// the capability: only the client that opened the stream knows it.
pub(crate) fn status(shared: &Shared, req: &Request<Incoming>) -> Response<ResponseBody> {
    let stream = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("stream="))
        .and_then(stream_id)
        .and_then(|id| shared.hub.stream(&id));
    let Some(stream) = stream else {
        return json_error(
            StatusCode::NOT_FOUND,
            TunnelError::BadRequest.code(),
            "no such stream",
            None,
        );
    };
    let status = match &*lock(&stream.closed) {
        None => StreamStatus {
            state: "open".into(),
            error: None,
            reason: None,
        },
        Some(closed) => StreamStatus {
            state: "closed".into(),
            error: closed.error,
            reason: Some(closed.reason.clone()),
        },
    };
    let body = serde_json::to_vec(&status).expect("a status serialises");
    let mut response = Response::new(ResponseBody::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn log_decision(
    ctx: &RequestCtx,
    route: &TunnelRoute,
    user: Option<&str>,
    allowed: bool,
    rule: &str,
    reason: &str,
) {
    tracing::info!(
        target: "sekisho::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        host = %ctx.host,
        route = %format!("tunnel:{}", route.host),
        method = "CONNECT",
        target_addr = %route.target,
        agent = route.agent.as_deref().unwrap_or("-"),
        user = user.unwrap_or("-"),
        allowed,
        rule,
        reason,
        "access decision"
    );
}
