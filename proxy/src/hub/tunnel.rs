//! Tunnel requests from `sekisho tunnel`: the host's tunnel route, the bearer token, the
//! policy decision, the stream to the target, and its re-authorisation while it is open.
//!
//! A refusal is a status and a JSON body with a stable code ([`TunnelError`]). An accepted
//! request gets `101`, and the client socket is spliced to the target: a TCP connection the
//! proxy dials, or an HTTP/2 `CONNECT` stream through the target's agent. Every
//! [`RECHECK_EVERY`], and at once when a revocation arrives, the token is verified again and the
//! current policy asked again; the stream is cut when the token expires or is revoked, or the
//! policy stops allowing it.
//!
//! However a stream ends, its end is recorded once ([`StreamEnd`]): kept for the client to ask
//! about, logged as one `tunnel closed` line (target `sekisho::access`) with the bytes each
//! way, and counted in `sekisho_tunnel_stream_ends_total{cause}`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sekisho_wire::tunnel::{StreamEnd, StreamStatus, TunnelError};
use sekisho_wire::{COPY_BUFFER, RESUMABLE_HEADER, RESUME_HEADER, STREAM_HEADER, TUNNEL_PROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::relay::Ask;
use super::resume::{Resumed, owner};
use super::stream::{Stream, StreamId, lock};
use crate::auth::access::{bearer_token, decision_reason, verify_bearer};
use crate::auth::endpoint::auth_origin;
use crate::auth::revocation::next_change;
use crate::auth::session::{SessionKeys, unix_now};
use crate::auth::who::bearer_identity;
use crate::observe::metrics::{CauseLabels, DirectionLabels, ReasonLabels};
use crate::observe::metrics::{DecisionKind, DecisionReason};
use crate::policy::{Decision, Identity};
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::{json, json_error};
use crate::routing::snapshot::{Snapshot, TunnelRoute};
use crate::state::client::ConnState;
use crate::state::{Shared, stopped};

/// How often an open tunnel's token and policy are checked again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// How long before the end of the shutdown grace an open tunnel is closed, so that its end is
/// recorded and its client gets a clean close before the worker stops.
const CLOSE_BEFORE_GRACE_ENDS: Duration = Duration::from_millis(500);

/// Answers a tunnel request.
pub(crate) async fn open_tunnel(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match open(shared, snapshot, ctx, &req).await {
        Ok(Opened {
            target,
            stream,
            peer_received,
        }) => {
            // Only the replica holding the agent keeps a stream waiting when its connection is
            // lost: a relayed stream can be resumed, a stream ending here cannot.
            let resumable = matches!(target, Target::Relayed(_));
            let shared = shared.clone();
            let id = HeaderValue::from_str(&hex::encode(stream.id))
                .expect("hex is a valid header value");
            // Marks the stream closed however the hand-off ends, even if it never runs (the
            // client went away before the `101`), so the hub forgets it in time.
            let accepted = Accepted {
                shared: shared.clone(),
                stream,
            };
            conn.take_over(Box::new(move |client, shutdown| {
                Box::pin(async move {
                    let stream = &accepted.stream;
                    match target {
                        Target::Direct(tcp) => {
                            relay(&shared, client, tcp, stream, shutdown).await;
                        }
                        Target::Agent(upgraded) => {
                            let target = TokioIo::new(upgraded);
                            relay(&shared, client, target, stream, shutdown).await;
                        }
                        Target::Resumed(resumed) => {
                            relay(&shared, client, resumed, stream, shutdown).await;
                        }
                        Target::Relayed(upgraded) => {
                            let target = TokioIo::new(upgraded);
                            let (end, mut target) =
                                relay(&shared, client, target, stream, shutdown).await;
                            // The holder keeps the agent's stream waiting to be resumed when
                            // this connection is lost without a close: so it is closed cleanly
                            // unless this replica is stopping or the client's connection broke.
                            if !matches!(end, StreamEnd::ProxyShutdown | StreamEnd::ClientFailed) {
                                let closing = target.shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
                            }
                        }
                    }
                })
            }));
            let mut response = super::registry::switching_protocols(TUNNEL_PROTOCOL);
            let headers = response.headers_mut();
            headers.insert(STREAM_HEADER, id);
            if let Some(count) = peer_received {
                headers.insert(RESUME_HEADER, HeaderValue::from(count));
            }
            if resumable {
                headers.insert(RESUMABLE_HEADER, HeaderValue::from_static("1"));
            }
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
struct Accepted {
    shared: Arc<Shared>,
    stream: Arc<Stream>,
}

impl Drop for Accepted {
    /// Ends the stream if its relay did not: the client went away before the `101`, or the
    /// relay was dropped (the worker stopped).
    fn drop(&mut self) {
        let end = match self.shared.is_draining() {
            true => StreamEnd::ProxyShutdown,
            false => StreamEnd::ClientClosed,
        };
        end_stream(&self.shared, &self.stream, end, None, Bytes::default());
    }
}

/// The other end of an accepted tunnel.
enum Target {
    Direct(TcpStream),
    /// On a link held here.
    Agent(hyper::upgrade::Upgraded),
    /// Through the replica holding the agent.
    Relayed(hyper::upgrade::Upgraded),
    /// A stream that waited here to be resumed.
    Resumed(Resumed),
}

/// An accepted tunnel request.
struct Opened {
    target: Target,
    stream: Arc<Stream>,
    /// For a resumed stream: the bytes the far end has received from the client.
    peer_received: Option<u64>,
}

/// `None` while the tunnel may stay open; else why it must close.
async fn still_allowed(shared: &Shared, stream: &Stream) -> Option<(StreamEnd, &'static str)> {
    let snapshot = shared.snapshot.load_full();
    let Some(route) = snapshot.tunnels.get(&stream.host) else {
        return Some((StreamEnd::RouteRemoved, "the tunnel route was removed"));
    };
    let Some(identity) = snapshot.identity.as_deref() else {
        return Some((StreamEnd::LoginEnded, "login is no longer configured"));
    };
    let token = lock(&stream.token).clone();
    let person = match verify_bearer(identity, &token, unix_now()).await {
        Ok(claims) => bearer_identity(claims),
        Err(_) => {
            return Some((
                StreamEnd::LoginEnded,
                "the login expired or was revoked (run `sekisho login`)",
            ));
        }
    };
    match decide(route, &person) {
        Decision::Allow { .. } => None,
        _ => Some((
            StreamEnd::PolicyDenied,
            "the policy no longer allows you here",
        )),
    }
}

fn stream_id(text: &str) -> Option<StreamId> {
    hex::FromHex::from_hex(text).ok()
}

type Refusal = (TunnelError, Option<String>);

/// The stream a tunnel request asks to resume, and the bytes the client has received of it.
fn resume_request(headers: &HeaderMap) -> Result<Option<(StreamId, u64)>, Refusal> {
    let Some(count) = headers.get(RESUME_HEADER) else {
        return Ok(None);
    };
    let malformed = || {
        (
            TunnelError::BadRequest,
            Some(format!(
                "`{RESUME_HEADER}` is a byte count and comes with the stream's `{STREAM_HEADER}`"
            )),
        )
    };
    let count = count
        .to_str()
        .ok()
        .and_then(sekisho_wire::resume::parse_count)
        .ok_or_else(malformed)?;
    let id = headers
        .get(STREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(stream_id)
        .ok_or_else(malformed)?;
    Ok(Some((id, count)))
}

/// Checks the request, then opens the stream to the target.
async fn open(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<Opened, Refusal> {
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
    let resume = resume_request(req.headers())?;
    // Before the first configuration is read, every host would be unknown.
    if !shared.synced.load(std::sync::atomic::Ordering::Relaxed) {
        return Err((TunnelError::Starting, None));
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

    let id = match resume {
        Some((id, _))
            if shared
                .hub
                .stream(&id)
                .is_some_and(|s| s.closed_since().is_none()) =>
        {
            let detail = "the stream is still open here";
            return Err((TunnelError::StreamGone, Some(detail.to_owned())));
        }
        Some((id, _)) => id,
        None => new_stream_id()?,
    };
    let (target, peer_received) = match &route.agent {
        None if resume.is_some() => {
            let detail = "only streams through an agent can be resumed";
            return Err((TunnelError::StreamGone, Some(detail.to_owned())));
        }
        None => {
            let dial =
                tokio::time::timeout(route.connect_timeout, TcpStream::connect(&route.target));
            match dial.await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    (Target::Direct(tcp), None)
                }
                Ok(Err(error)) => {
                    return Err((TunnelError::TargetUnreachable, Some(error.to_string())));
                }
                Err(_) => return Err((TunnelError::TargetTimeout, None)),
            }
        }
        Some(agent) => {
            let ask = Ask {
                agent,
                target: &route.target,
                user: &user,
                timeout: route.connect_timeout,
                stream: id,
                owner: owner(&issuer, &subject),
                resume_from: resume.map(|(_, count)| count),
            };
            let keys = &identity.session_keys;
            agent_stream(shared, keys, &snapshot.replicas, route, ask).await?
        }
    };
    let stream = Arc::new(Stream {
        id,
        host: route.host.clone(),
        user,
        agent: route.agent.clone(),
        opened: Instant::now(),
        issuer,
        subject,
        token: Mutex::new(token.to_owned()),
        closed: Mutex::new(None),
    });
    shared.hub.add_stream(stream.clone());
    Ok(Opened {
        target,
        stream,
        peer_received,
    })
}

/// A new stream's id: random, from the system's CSPRNG.
fn new_stream_id() -> Result<StreamId, Refusal> {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(|_| {
        (
            TunnelError::BadRequest,
            Some("no random numbers".to_owned()),
        )
    })?;
    Ok(id)
}

/// A stream through the route's agent: on a link held here, else relayed to a replica that
/// holds one. A stream to resume is taken from those waiting here, else asked of the replicas
/// holding the agent; with the bytes the far end has received from the client.
async fn agent_stream(
    shared: &Shared,
    keys: &SessionKeys,
    replicas: &[std::net::SocketAddr],
    route: &TunnelRoute,
    ask: Ask<'_>,
) -> Result<(Target, Option<u64>), Refusal> {
    let relayed = |relayed: super::relay::Relayed| {
        super::carry::count(shared, "sent");
        (Target::Relayed(relayed.io), relayed.received)
    };
    if let Some(client_received) = ask.resume_from {
        // Held here: the stream may not have started waiting yet.
        let within = match shared.hub.connected(ask.agent) {
            0 => Duration::ZERO,
            _ => super::resume::NOTICE_WITHIN,
        };
        let (id, owner) = (&ask.stream, &ask.owner);
        let waiting = shared
            .hub
            .waiting
            .take(id, ask.agent, ask.target, owner, within)
            .await;
        let Some(held) = waiting else {
            let relay = shared.relay.open(keys, replicas, &route.host, ask).await;
            return relay.map(relayed);
        };
        let Some(resend) = held.sent.since(client_received) else {
            let detail = "what the client lacks of it is no longer kept";
            return Err((TunnelError::StreamGone, Some(detail.to_owned())));
        };
        super::carry::count_resume(shared, "resumed");
        let received = held.received;
        return Ok((
            Target::Resumed(Resumed::new(held.io, resend)),
            Some(received),
        ));
    }
    match shared
        .hub
        .open_stream(ask.agent, ask.target, ask.timeout)
        .await
    {
        Err((TunnelError::AgentOffline, detail)) if shared.hub.connected(ask.agent) == 0 => {
            match shared.relay.open(keys, replicas, &route.host, ask).await {
                Ok(stream) => Ok(relayed(stream)),
                Err((TunnelError::AgentOffline, relayed)) => {
                    Err((TunnelError::AgentOffline, relayed.or(detail)))
                }
                Err(refusal) => Err(refusal),
            }
        }
        Ok(upgraded) => Ok((Target::Agent(upgraded), None)),
        Err(refusal) => Err(refusal),
    }
}

fn decide(route: &TunnelRoute, person: &Identity) -> Decision {
    route
        .access
        .decide(Some(person), &Method::CONNECT, "/", &HeaderMap::new())
}

/// Copies both ways until either side closes, the stream's check says it must close, or the
/// proxy's shutdown grace is nearly over; then records how it ended. Gives back the target.
async fn relay<C, T>(
    shared: &Shared,
    client: C,
    target: T,
    stream: &Stream,
    mut shutdown: watch::Receiver<bool>,
) -> (StreamEnd, T)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &shared.metrics.tunnel;
    metrics.streams_open.inc();
    let (mut client, mut target) = (Counted::new(client), Counted::new(target));
    let cut = {
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut target,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        tokio::pin!(copy);
        let shutting_down = async {
            stopped(&mut shutdown).await;
            let grace = shared.snapshot.load().limits.shutdown_grace;
            tokio::time::sleep(grace.saturating_sub(CLOSE_BEFORE_GRACE_ENDS)).await;
        };
        tokio::pin!(shutting_down);
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.tick().await;
        // A revocation (here or on another replica) is acted on at once, not at the next tick.
        let mut revocations = shared
            .snapshot
            .load()
            .identity
            .as_deref()
            .map(|identity| identity.state.revocations.subscribe());
        loop {
            tokio::select! {
                // Each side keeps what happened to it; the result says nothing more.
                _ = &mut copy => break None,
                () = next_change(&mut revocations) => {
                    if let Some(cut) = still_allowed(shared, stream).await {
                        break Some(cut);
                    }
                }
                _ = recheck.tick() => {
                    if let Some(cut) = still_allowed(shared, stream).await {
                        break Some(cut);
                    }
                }
                () = &mut shutting_down => {
                    break Some((StreamEnd::ProxyShutdown, StreamEnd::ProxyShutdown.message()));
                }
            }
        }
    };
    metrics.streams_open.dec();
    let (end, reason) = match cut {
        Some((end, why)) => (end, Some(why.to_owned())),
        None => (
            classify(client.side(), target.side(), stream.agent.is_some()),
            None,
        ),
    };
    let bytes = Bytes {
        to_target: client.read,
        to_client: target.read,
    };
    end_stream(shared, stream, end, reason, bytes);
    if !end.is_normal() && end != StreamEnd::ClientFailed {
        // A clean TLS close, so the client reads an end of stream and asks why.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.inner.shutdown()).await;
    }
    (end, target.inner)
}

/// The bytes a stream carried each way.
#[derive(Debug, Clone, Copy, Default)]
struct Bytes {
    to_target: u64,
    to_client: u64,
}

/// Records the stream's end, if none is yet: kept for the client to ask about, one log line,
/// counted.
fn end_stream(
    shared: &Shared,
    stream: &Stream,
    end: StreamEnd,
    reason: Option<String>,
    bytes: Bytes,
) {
    if !stream.close(end, reason.unwrap_or_else(|| end.message().to_owned())) {
        return;
    }
    let metrics = &shared.metrics.tunnel;
    for (direction, count) in [
        ("to_target", bytes.to_target),
        ("to_client", bytes.to_client),
    ] {
        metrics
            .bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(count);
    }
    metrics
        .stream_ends
        .get_or_create(&CauseLabels { cause: end.code() })
        .inc();
    tracing::info!(
        target: "sekisho::access",
        host = %stream.host,
        user = %stream.user,
        agent = stream.agent.as_deref().unwrap_or("-"),
        cause = end.code(),
        to_target = bytes.to_target,
        to_client = bytes.to_client,
        duration_ms = stream.opened.elapsed().as_millis() as u64,
        "tunnel closed"
    );
}

/// What happened to one side of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Still open when the relay stopped.
    Open,
    /// It sent its end of stream (at this instant); what happened after does not matter.
    Ended(Instant),
    /// Reading, writing or closing it failed before it ended.
    Failed(std::io::ErrorKind),
}

/// How a stream ended, from what happened to its two sides (`via_agent`: the target side is
/// an agent's stream, whose failure means the agent's link failed).
///
/// The side that ended first closed the stream; a failure after a side ended is the other end
/// noticing. A client that goes away without a TLS close has closed all the same (ssh kills
/// its `ProxyCommand` when it is done).
fn classify(client: Side, target: Side, via_agent: bool) -> StreamEnd {
    match (client, target) {
        (Side::Ended(client), Side::Ended(target)) if target < client => StreamEnd::TargetClosed,
        (Side::Open | Side::Failed(_), Side::Ended(_)) => StreamEnd::TargetClosed,
        (_, Side::Failed(_)) if via_agent => StreamEnd::AgentGone,
        (_, Side::Failed(_)) => StreamEnd::TargetFailed,
        (Side::Failed(std::io::ErrorKind::UnexpectedEof), _) => StreamEnd::ClientClosed,
        (Side::Failed(_), _) => StreamEnd::ClientFailed,
        (Side::Ended(_) | Side::Open, Side::Ended(_) | Side::Open) => StreamEnd::ClientClosed,
    }
}

/// A stream that counts the bytes read from it, and keeps whether it ended or failed first.
struct Counted<T> {
    inner: T,
    read: u64,
    ended: Option<Instant>,
    failed: Option<std::io::ErrorKind>,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            read: 0,
            ended: None,
            failed: None,
        }
    }

    fn side(&self) -> Side {
        match (self.ended, self.failed) {
            (Some(at), _) => Side::Ended(at),
            (None, Some(kind)) => Side::Failed(kind),
            (None, None) => Side::Open,
        }
    }

    /// Keeps the first failure of a side that had not ended.
    fn note<R>(&mut self, polled: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if let Poll::Ready(Err(error)) = &polled
            && self.ended.is_none()
        {
            self.failed.get_or_insert(error.kind());
        }
        polled
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
        let read = buf.filled().len() - before;
        self.read += read as u64;
        if matches!(polled, Poll::Ready(Ok(())))
            && read == 0
            && buf.remaining() > 0
            && self.failed.is_none()
        {
            self.ended.get_or_insert_with(Instant::now);
        }
        self.note(polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(polled)
    }
}

/// `POST` [`sekisho_wire::TUNNEL_RENEW_PATH`]: the stream named in [`STREAM_HEADER`] goes on
/// under the fresh token this request carries, if it is for the same person. A stream another
/// replica keeps is renewed there ([`super::ask`]).
pub(crate) async fn renew(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            TunnelError::BadRequest,
            "use POST",
        );
    }
    let id = req
        .headers()
        .get(STREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(stream_id);
    let Some(id) = id else {
        return refuse(
            StatusCode::NOT_FOUND,
            TunnelError::BadRequest,
            NO_OPEN_STREAM,
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
    // A record closed here may be of a stream resumed through another replica since.
    let open_here = shared
        .hub
        .stream(&id)
        .filter(|s| s.closed_since().is_none());
    if let Some(stream) = open_here {
        return match renew_here(identity, &stream, token).await {
            Ok(()) => json(StatusCode::NO_CONTENT, Vec::new()),
            Err((status, error, message)) => refuse(status, error, &message),
        };
    }
    // Not here: once the token checks (a stranger makes no replica ask the others), the
    // replica keeping the stream renews it.
    if let Err(rejection) = verify_bearer(identity, token, unix_now()).await {
        let message = crate::error_chain(&rejection);
        return refuse(StatusCode::UNAUTHORIZED, TunnelError::NotLoggedIn, &message);
    }
    let keys = &identity.session_keys;
    let question = super::ask::Question::Renew(token);
    match shared
        .relay
        .ask(keys, &snapshot.replicas, &ctx.host, &id, question)
        .await
    {
        Some(answer) => json(answer.status, answer.body.to_vec()),
        None => refuse(
            StatusCode::NOT_FOUND,
            TunnelError::BadRequest,
            NO_OPEN_STREAM,
        ),
    }
}

const NO_OPEN_STREAM: &str = "no such open stream";

type RenewRefusal = (StatusCode, TunnelError, String);

/// Renews `stream`, kept here, with `token`, if it is open and the token is its person's.
async fn renew_here(
    identity: &crate::auth::identity::IdentityRuntime,
    stream: &Stream,
    token: &str,
) -> Result<(), RenewRefusal> {
    if stream.closed_since().is_some() {
        let gone = (
            StatusCode::NOT_FOUND,
            TunnelError::BadRequest,
            NO_OPEN_STREAM.into(),
        );
        return Err(gone);
    }
    match verify_bearer(identity, token, unix_now()).await {
        Ok(claims) if claims.issuer == stream.issuer && claims.subject == stream.subject => {
            *lock(&stream.token) = token.to_owned();
            tracing::debug!(host = %stream.host, user = %stream.user, "tunnel token renewed");
            Ok(())
        }
        Ok(_) => Err((
            StatusCode::FORBIDDEN,
            TunnelError::Denied,
            "the token is for someone else than the stream's".into(),
        )),
        Err(rejection) => Err((
            StatusCode::UNAUTHORIZED,
            TunnelError::NotLoggedIn,
            crate::error_chain(&rejection),
        )),
    }
}

/// `GET` [`sekisho_wire::TUNNEL_STATUS_PATH`]`?stream=ID`: open, or closed and why. The id is
/// the capability: only the client that opened the stream knows it. With a bearer token that
/// checks, a stream another replica keeps is asked about there ([`super::ask`]).
pub(crate) async fn status(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let id = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("stream="))
        .and_then(stream_id);
    if let Some(stream) = id.and_then(|id| shared.hub.stream(&id)) {
        return json(StatusCode::OK, status_body(&stream));
    }
    if let (Some(id), Some(identity), Some(token)) = (
        id,
        snapshot.identity.as_deref(),
        bearer_token(req.headers()),
    ) && verify_bearer(identity, token, unix_now()).await.is_ok()
    {
        let keys = &identity.session_keys;
        let question = super::ask::Question::Status;
        if let Some(answer) = shared
            .relay
            .ask(keys, &snapshot.replicas, &ctx.host, &id, question)
            .await
        {
            return json(answer.status, answer.body.to_vec());
        }
    }
    refuse(
        StatusCode::NOT_FOUND,
        TunnelError::BadRequest,
        "no such stream",
    )
}

/// `POST` [`super::ask::STREAM_PATH`]: another replica asks about a stream kept here, for a
/// client that reached it.
pub(crate) async fn answer_replica(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &ConnState,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let asked = match super::ask::check(snapshot, conn, req) {
        Ok(asked) => asked,
        Err(why) => {
            let what = "a question about a tunnel stream";
            return super::carry::refuse_stranger(shared, conn, what, why);
        }
    };
    let stream = shared.hub.stream(&asked.id);
    let (status, body) = match (stream, asked.token.as_deref(), snapshot.identity.as_deref()) {
        (None, _, _) => (StatusCode::NOT_FOUND, Vec::new()),
        (Some(stream), None, _) => (StatusCode::OK, status_body(&stream)),
        (Some(stream), Some(token), Some(identity)) => {
            match renew_here(identity, &stream, token).await {
                Ok(()) => (StatusCode::NO_CONTENT, Vec::new()),
                Err((status, error, message)) => (status, error_body(error, &message)),
            }
        }
        (Some(_), Some(_), None) => (StatusCode::NOT_FOUND, Vec::new()),
    };
    asked.sign(json(status, body.clone()), &body)
}

/// A stream's status, as JSON.
fn status_body(stream: &Stream) -> Vec<u8> {
    let status = match &*lock(&stream.closed) {
        None => StreamStatus {
            state: "open".into(),
            error: None,
            reason: None,
            cause: None,
        },
        Some(closed) => StreamStatus {
            state: "closed".into(),
            error: closed.end.tunnel_error(),
            reason: Some(closed.reason.clone()),
            cause: Some(closed.end),
        },
    };
    serde_json::to_vec(&status).expect("a status serialises")
}

fn error_body(error: TunnelError, message: &str) -> Vec<u8> {
    crate::respond::page::json_error(error.code(), message, None).into_bytes()
}

fn refuse(status: StatusCode, error: TunnelError, message: &str) -> Response<ResponseBody> {
    json_error(status, error.code(), message, None)
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

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    #[test]
    fn the_side_that_ended_first_closed_the_stream() {
        let (first, later) = (Instant::now(), Instant::now() + Duration::from_millis(1));
        let ended = |client, target| classify(client, target, true);
        assert_eq!(
            ended(Side::Ended(later), Side::Ended(first)),
            StreamEnd::TargetClosed
        );
        assert_eq!(
            ended(Side::Ended(first), Side::Ended(later)),
            StreamEnd::ClientClosed
        );
        assert_eq!(
            ended(Side::Open, Side::Ended(first)),
            StreamEnd::TargetClosed
        );
        assert_eq!(
            ended(Side::Ended(first), Side::Open),
            StreamEnd::ClientClosed
        );
        // Writing to a target that has ended fails; it ended first all the same.
        assert_eq!(
            ended(Side::Failed(ErrorKind::BrokenPipe), Side::Ended(first)),
            StreamEnd::TargetClosed
        );
    }

    #[test]
    fn a_failure_on_the_target_side_is_the_agent_going_away_when_an_agent_carries_it() {
        let failed = Side::Failed(ErrorKind::BrokenPipe);
        assert_eq!(classify(Side::Open, failed, true), StreamEnd::AgentGone);
        assert_eq!(classify(Side::Open, failed, false), StreamEnd::TargetFailed);
        // The client had sent everything and waited for the answer when the agent went.
        let done = Side::Ended(Instant::now());
        assert_eq!(classify(done, failed, true), StreamEnd::AgentGone);
    }

    #[test]
    fn a_client_gone_without_a_tls_close_has_closed_and_other_client_failures_broke() {
        let target = Side::Open;
        assert_eq!(
            classify(Side::Failed(ErrorKind::UnexpectedEof), target, true),
            StreamEnd::ClientClosed
        );
        assert_eq!(
            classify(Side::Failed(ErrorKind::ConnectionReset), target, true),
            StreamEnd::ClientFailed
        );
        assert_eq!(
            classify(Side::Open, Side::Open, false),
            StreamEnd::ClientClosed
        );
    }

    #[tokio::test]
    async fn a_side_keeps_its_end_of_stream_and_not_a_failure_after_it() {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let mut side = Counted::new(ours);
        let mut buf = [0u8; 8];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut side, &mut buf)
                .await
                .unwrap(),
            0
        );
        assert!(matches!(side.side(), Side::Ended(_)));
        assert!(side.write_all(b"late").await.is_err());
        assert!(matches!(side.side(), Side::Ended(_)), "{:?}", side.side());

        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let mut side = Counted::new(ours);
        assert!(side.write_all(b"first").await.is_err());
        assert_eq!(side.side(), Side::Failed(ErrorKind::BrokenPipe));
    }
}
