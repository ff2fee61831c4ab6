//! Tunnel requests from `sekisho tunnel`: the host's tunnel route, the bearer token, the
//! policy decision, the stream to the target, and its re-authorisation while it is open.
//!
//! A refusal is a status and a JSON body with a stable code ([`TunnelError`]). An accepted
//! request gets `101`, and the client socket is spliced to the target: a TCP connection the
//! proxy dials, or an HTTP/2 `CONNECT` stream through the target's agent. Every
//! [`RECHECK_EVERY`] the token is verified again and the current policy asked again; the stream
//! is cut when the token expires or is revoked, or the policy stops allowing it.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sekisho_wire::tunnel::TunnelError;
use sekisho_wire::{COPY_BUFFER, TUNNEL_PROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::access::{auth_origin, bearer_identity, bearer_token, json_error, verify_bearer};
use crate::body::ResponseBody;
use crate::connection::{ConnState, Takeover};
use crate::metrics::{DirectionLabels, ReasonLabels};
use crate::policy::{Decision, Identity};
use crate::proxy::RequestCtx;
use crate::server::Shared;
use crate::session::unix_now;
use crate::snapshot::{Snapshot, TunnelRoute};

/// How often an open tunnel's token and policy are checked again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Answers a tunnel request.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match open(shared, snapshot, ctx, &req).await {
        Ok((stream, guard)) => {
            let shared = shared.clone();
            conn.take_over(Takeover::Own(Box::new(move |client, _shutdown| {
                Box::pin(async move {
                    match stream {
                        Target::Direct(tcp) => relay(&shared, client, tcp, guard).await,
                        Target::Agent(upgraded) => {
                            relay(&shared, client, TokioIo::new(upgraded), guard).await
                        }
                    }
                })
            })));
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static(TUNNEL_PROTOCOL));
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

/// The other end of an accepted tunnel.
enum Target {
    Direct(TcpStream),
    Agent(hyper::upgrade::Upgraded),
}

/// What a tunnel was allowed by, to ask again while it is open.
struct Guard {
    shared: Arc<Shared>,
    host: String,
    token: String,
    user: Arc<str>,
}

impl Guard {
    /// `None` while the tunnel may stay open; else why it must close.
    async fn check(&self) -> Option<&'static str> {
        let snapshot = self.shared.snapshot.load_full();
        let Some(route) = snapshot.tunnels.get(&self.host) else {
            return Some("the tunnel route was removed");
        };
        let Some(identity) = snapshot.identity.as_deref() else {
            return Some("login is no longer configured");
        };
        let identity = match verify_bearer(identity, &self.token, unix_now()).await {
            Ok(claims) => bearer_identity(claims),
            Err(_) => return Some("the token expired or was revoked"),
        };
        match decide(route, &identity) {
            Decision::Allow { .. } => None,
            _ => Some("the policy no longer allows it"),
        }
    }
}

type Refusal = (TunnelError, Option<String>);

/// Checks the request, then opens the stream to the target.
async fn open(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Result<(Target, Guard), Refusal> {
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
    let refuse = |error: TunnelError, user: Option<&str>, reason: &str| {
        log_decision(ctx, route, user, false, reason);
        Err((error, Some(reason.to_owned())))
    };
    let (Some(identity), Some(token)) = (snapshot.identity.as_deref(), bearer_token(req.headers()))
    else {
        return refuse(TunnelError::NotLoggedIn, None, "no bearer token");
    };
    let person = match verify_bearer(identity, token, unix_now()).await {
        Ok(claims) => bearer_identity(claims),
        Err(reason) => return refuse(TunnelError::NotLoggedIn, None, &reason),
    };
    let user: Arc<str> = Arc::from(person.verified_email().unwrap_or(&person.subject));
    match decide(route, &person) {
        Decision::Allow { rule } => {
            log_decision(ctx, route, Some(&user), true, &rule.to_string());
        }
        Decision::Deny { reason, .. } => {
            return refuse(TunnelError::Denied, Some(&user), reason);
        }
        Decision::LoginRequired { .. } => {
            return refuse(
                TunnelError::Denied,
                Some(&user),
                "the policy allows no one here",
            );
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
                .await
                .map_err(|error| (error, None))?,
        ),
    };
    let guard = Guard {
        shared: shared.clone(),
        host: route.host.clone(),
        token: token.to_owned(),
        user,
    };
    Ok((target, guard))
}

fn decide(route: &TunnelRoute, person: &Identity) -> Decision {
    route
        .access
        .decide(Some(person), &Method::CONNECT, "/", &HeaderMap::new())
}

/// Copies both ways until either side closes or the guard says the tunnel must close.
async fn relay<C, T>(shared: &Shared, mut client: C, mut target: T, guard: Guard)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &shared.metrics.tunnel;
    metrics.streams_open.inc();
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut target,
        COPY_BUFFER,
        COPY_BUFFER,
    );
    tokio::pin!(copy);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    let outcome = loop {
        tokio::select! {
            result = &mut copy => break result.map_err(|e| e.to_string()),
            _ = recheck.tick() => {
                if let Some(why) = guard.check().await {
                    break Err(why.to_owned());
                }
            }
        }
    };
    metrics.streams_open.dec();
    match outcome {
        Ok((to_target, to_client)) => {
            for (direction, bytes) in [("to_target", to_target), ("to_client", to_client)] {
                metrics
                    .bytes
                    .get_or_create(&DirectionLabels { direction })
                    .inc_by(bytes);
            }
            tracing::debug!(host = %guard.host, user = %guard.user, to_target, to_client, "tunnel closed");
        }
        Err(why) => {
            tracing::info!(
                target: "sekisho::access",
                host = %guard.host,
                user = %guard.user,
                reason = %why,
                "tunnel cut"
            );
        }
    }
}

fn log_decision(
    ctx: &RequestCtx,
    route: &TunnelRoute,
    user: Option<&str>,
    allowed: bool,
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
        rule = if allowed { reason } else { "tunnel" },
        reason,
        "access decision"
    );
}
