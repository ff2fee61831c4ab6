//! Phase 3 of the pipeline: who is asking, and may they pass this route.
//!
//! In order: a `public` route passes at once; a webhook route checks the body's signature; else
//! the identity comes from a bearer token (routes with `bearer: true`) or the host's session
//! cookie, the route's policy decides on the normalised path, and the decision is logged once.
//! An anonymous request that a login could let through is sent to the login (browsers) or gets
//! 401 with JSON (everything else); a refused one gets the 403 page.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use sekisho_identity::webhook::WebhookError;

use crate::auth::endpoint::auth_origin;
use crate::auth::identity::IdentityRuntime;
use crate::auth::revocation::SessionFacts;
use crate::auth::session::{SessionRecord, session_cookie, set_cookie, unix_now};
use crate::auth::who::{Who, bearer_identity, who_from_record};
use crate::forward::body::RequestBody;
use crate::observe::metrics::{DecisionKind, DecisionReason, Metrics};
use crate::policy::{Decision, RouteAccess, RuleRef};
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::page;
use crate::respond::{html, json_error};
use crate::routing::snapshot::{Route, Snapshot};

#[allow(
    clippy::large_enum_variant,
    reason = "a return value, moved once; boxing would allocate per request"
)]
pub(crate) enum Access {
    /// Go on to the upstream; `set_cookie` refreshes the session's idle timer.
    Pass {
        who: Option<Arc<Who>>,
        set_cookie: Option<HeaderValue>,
    },
    /// Answer now; `user` names who was refused, when someone was identified.
    Respond {
        response: Response<ResponseBody>,
        user: Option<Arc<str>>,
    },
}

impl Access {
    fn respond(response: Response<ResponseBody>) -> Self {
        Self::Respond {
            response,
            user: None,
        }
    }
}

/// Why a bearer token was refused. Each message can be shown to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BearerRejection {
    #[error("this route does not accept bearer tokens")]
    NotAccepted,
    #[error("the session this token was issued from has ended")]
    SessionEnded,
    #[error("the token is not valid here")]
    NoIssuer,
    #[error(transparent)]
    Invalid(#[from] sekisho_identity::bearer::BearerError),
}

/// What the access phase decided about one request, before it is logged (once) and answered.
struct Verdict {
    who: Option<Arc<Who>>,
    set_cookie: Option<HeaderValue>,
    outcome: Outcome,
}

enum Outcome {
    Allowed(RuleRef),
    BadBearer(BearerRejection),
    LoginRequired(RuleRef),
    /// Allowed, but the login is older, or idle longer, than the route takes.
    LoginAgain(RuleRef),
    Denied(RuleRef, &'static str),
}

/// Decides one request on `route`: decides, logs the decision once, answers. The request body
/// is replaced only on webhook routes.
pub(crate) async fn check(
    snapshot: &Snapshot,
    metrics: &Metrics,
    ctx: &RequestCtx,
    route: &Route,
    req: &mut Request<RequestBody>,
) -> Access {
    if let Some(webhook) = &route.webhook {
        let access = check_webhook(ctx, route, webhook, req).await;
        let verdict = match access {
            Access::Pass { .. } => DecisionKind::Allowed,
            Access::Respond { .. } => DecisionKind::Denied,
        };
        metrics.decision(verdict, DecisionReason::Webhook);
        return access;
    }
    if matches!(route.access, RouteAccess::Public) {
        metrics.decision(DecisionKind::Allowed, DecisionReason::PublicRoute);
        return Access::Pass {
            who: None,
            set_cookie: None,
        };
    }
    let verdict = decide(snapshot, ctx, route, req).await;
    log_verdict(ctx, route, req, &verdict);
    count_verdict(metrics, &verdict.outcome);
    let user = verdict.who.as_ref().map(|w| &*w.user);
    match verdict.outcome {
        Outcome::Allowed(_) => Access::Pass {
            who: verdict.who,
            set_cookie: verdict.set_cookie,
        },
        Outcome::BadBearer(rejection) => Access::respond(json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &crate::error_chain(&rejection),
            None,
        )),
        Outcome::LoginRequired(_) | Outcome::LoginAgain(_) => {
            Access::respond(login_required(snapshot, ctx, req))
        }
        Outcome::Denied(..) => Access::Respond {
            response: denied(ctx, route, user),
            user: verdict.who.as_ref().map(|w| w.user.clone()),
        },
    }
}

/// Who is asking (a bearer token where the route takes them, else the host's session cookie)
/// and what the route's policy says.
async fn decide(
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    route: &Route,
    req: &Request<RequestBody>,
) -> Verdict {
    let identity = snapshot.identity.as_deref();
    let path = ctx.decided_path(req.uri().path());
    let now = unix_now();

    // Bearer tokens, where the route takes them: a bad one is refused outright, never
    // mistaken for "no credentials".
    let (who, set_cookie) = match bearer_token(req.headers()) {
        Some(token) => {
            let verified = match identity {
                Some(identity) if route.bearer => verify_bearer(identity, token, now).await,
                _ => Err(BearerRejection::NotAccepted),
            };
            match verified {
                Ok(claims) => (Some(Arc::new(bearer_who(token, claims))), None),
                Err(rejection) => {
                    return Verdict {
                        who: None,
                        set_cookie: None,
                        outcome: Outcome::BadBearer(rejection),
                    };
                }
            }
        }
        None => match identity {
            Some(identity) => from_session(identity, &ctx.host, req.headers(), now),
            None => (None, None),
        },
    };

    let decision = route.access.decide(
        who.as_ref().map(|w| &w.identity),
        req.method(),
        path,
        req.headers(),
    );
    // A route may ask for a recent login, or a shorter idle time.
    if let (Decision::Allow { rule }, Some(session)) =
        (decision, who.as_ref().and_then(|w| w.session.as_ref()))
    {
        let too_old = route
            .max_session_age
            .is_some_and(|max| now.saturating_sub(session.auth_time) > max.as_secs());
        let idle_too_long = route
            .session_idle_timeout
            .is_some_and(|max| now.saturating_sub(session.last_seen) > max.as_secs());
        if too_old || idle_too_long {
            return Verdict {
                who: None,
                set_cookie: None,
                outcome: Outcome::LoginAgain(rule),
            };
        }
    }
    let outcome = match decision {
        Decision::Allow { rule } => Outcome::Allowed(rule),
        Decision::LoginRequired { rule } => Outcome::LoginRequired(rule),
        Decision::Deny { rule, reason } => Outcome::Denied(rule, reason),
    };
    Verdict {
        who,
        set_cookie,
        outcome,
    }
}

/// The decision's count in `sekisho_access_decisions_total`.
fn count_verdict(metrics: &Metrics, outcome: &Outcome) {
    let (verdict, reason) = match outcome {
        Outcome::Allowed(rule) => (DecisionKind::Allowed, decision_reason(*rule)),
        Outcome::BadBearer(_) => (DecisionKind::Denied, DecisionReason::BadToken),
        Outcome::LoginRequired(rule) => (DecisionKind::LoginRequired, decision_reason(*rule)),
        Outcome::LoginAgain(_) => (DecisionKind::LoginRequired, DecisionReason::SessionAge),
        Outcome::Denied(rule, _) => (DecisionKind::Denied, decision_reason(*rule)),
    };
    metrics.decision(verdict, reason);
}

/// The metric's `reason` for the part of a policy that decided.
pub(crate) fn decision_reason(rule: RuleRef) -> DecisionReason {
    match rule {
        RuleRef::Rule(_) => DecisionReason::Rule,
        RuleRef::Allow => DecisionReason::Allow,
        RuleRef::CorsPreflight => DecisionReason::CorsPreflight,
        RuleRef::DefaultDeny => DecisionReason::DefaultDeny,
        RuleRef::PublicRoute => DecisionReason::PublicRoute,
        RuleRef::NoPolicy => DecisionReason::NoPolicy,
    }
}

/// The identity of a verified bearer token; its session id (for the assertion cache) is a hash
/// of the token.
fn bearer_who(token: &str, claims: sekisho_identity::bearer::BearerClaims) -> Who {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut session_id = [0u8; 16];
    session_id.copy_from_slice(&digest.as_ref()[..16]);
    Who::new(session_id, bearer_identity(claims), None)
}

/// The decision's one log event. Refusals are logged at `info`; allowed requests are the
/// steady state (their line is the access-log line, which names the user and the route), so
/// their event is for debugging only.
fn log_verdict(ctx: &RequestCtx, route: &Route, req: &Request<RequestBody>, verdict: &Verdict) {
    if matches!(verdict.outcome, Outcome::Allowed(_))
        && !tracing::enabled!(target: "sekisho::access", tracing::Level::DEBUG)
    {
        return;
    }
    let (allowed, rule, reason) = match &verdict.outcome {
        Outcome::Allowed(rule) => (true, rule.to_string(), String::new()),
        Outcome::BadBearer(rejection) => (false, "bearer".into(), crate::error_chain(rejection)),
        Outcome::LoginRequired(rule) => (false, rule.to_string(), "login required".into()),
        Outcome::LoginAgain(rule) => (
            false,
            rule.to_string(),
            "the login is older, or idle longer, than the route allows".into(),
        ),
        Outcome::Denied(rule, reason) => (false, rule.to_string(), (*reason).to_owned()),
    };
    let user = verdict.who.as_ref().map(|w| &*w.user).unwrap_or("-");
    let path = ctx.decided_path(req.uri().path());
    if allowed {
        tracing::debug!(
            target: "sekisho::access",
            request_id = ctx.request_id.to_str().unwrap_or("-"),
            host = %ctx.host,
            route = %route.name.0,
            method = %req.method(),
            path,
            user,
            allowed,
            rule,
            "access decision"
        );
    } else {
        log_decision(
            ctx,
            route,
            req.method(),
            path,
            Some(user),
            allowed,
            &rule,
            &reason,
        );
    }
}

/// A bearer token's claims: Sekisho's own user token (signed with the assertion keys, its
/// session not revoked), else a JWT from a configured issuer.
pub(crate) async fn verify_bearer(
    identity: &IdentityRuntime,
    token: &str,
    now: u64,
) -> Result<sekisho_identity::bearer::BearerClaims, BearerRejection> {
    if let Ok(claims) = identity.user_tokens.verify(token, now) {
        // The session it came from, by id, and its user: a CLI token names the proxy as its
        // issuer, so a user's logout at any provider ends it.
        let revoked = <[u8; 16] as hex::FromHex>::from_hex(&claims.sid)
            .ok()
            .is_none_or(|sid| {
                identity.state.revocations.ends(SessionFacts {
                    id: &sid,
                    issuer: None,
                    subject: &claims.sub,
                    email: &claims.email,
                    issued_at: claims.iat,
                })
            });
        if revoked {
            return Err(BearerRejection::SessionEnded);
        }
        return Ok(sekisho_identity::bearer::BearerClaims {
            issuer: claims.iss,
            subject: claims.sub,
            email_verified: !claims.email.is_empty(),
            email: (!claims.email.is_empty()).then_some(claims.email),
            groups: claims.groups,
            claims: Default::default(),
            expires_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp),
        });
    }
    match identity.bearer().await {
        Some(verifier) => Ok(verifier.verify(token).await?),
        None => Err(BearerRejection::NoIssuer),
    }
}

/// The session on this host, if its cookie opens, is current and is not revoked; and the
/// refreshed cookie when the idle timer moved on by a minute.
fn from_session(
    identity: &IdentityRuntime,
    host: &str,
    headers: &HeaderMap,
    now: u64,
) -> (Option<Arc<Who>>, Option<HeaderValue>) {
    let value = match session_cookie(headers) {
        Ok(Some(value)) => value,
        Ok(None) => return (None, None),
        Err(error) => {
            tracing::debug!(%error, "session cookie ignored");
            return (None, None);
        }
    };
    let who = match identity.cached_session(value, host) {
        Some(who) => who,
        None => match identity
            .session_keys
            .open(value, host, now, identity.idle_timeout())
        {
            Ok(record) => identity.cache_session(value, Arc::new(who_from_record(record))),
            Err(error) => {
                tracing::debug!(%error, host, "session cookie refused");
                return (None, None);
            }
        },
    };
    let Some(record) = &who.session else {
        return (None, None);
    };
    // A cached session is checked as opening it would: time first, then revocations.
    if now >= record.expires_at
        || now.saturating_sub(record.last_seen) > identity.idle_timeout().as_secs()
        || identity.state.revocations.ends(record.into())
    {
        tracing::debug!(host, "session cookie of an ended session");
        return (None, None);
    }
    let minute = now / 60;
    if minute <= record.last_seen / 60 {
        return (Some(who), None);
    }
    let mut refreshed = who.refreshed.lock().unwrap_or_else(|e| e.into_inner());
    let cookie = match &*refreshed {
        Some((at, cookie)) if *at == minute => Some(cookie.clone()),
        _ => {
            let mut record = record.clone();
            record.touch(now);
            let cookie = session_set_cookie(identity, &record, now);
            *refreshed = cookie.clone().map(|c| (minute, c));
            cookie
        }
    };
    drop(refreshed);
    (Some(who), cookie)
}

pub(crate) fn cookie_session(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Option<SessionRecord> {
    let value = session_cookie(headers).ok()??;
    identity
        .session_keys
        .open(value, &ctx.host, unix_now(), identity.idle_timeout())
        .ok()
}

/// The session on this host, if any (revocations included).
pub(crate) fn current_session(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Option<SessionRecord> {
    let record = cookie_session(identity, ctx, headers)?;
    (!identity.state.revocations.ends((&record).into())).then_some(record)
}

/// The `Set-Cookie` for `record` on its host, valid until the session expires.
pub(crate) fn session_set_cookie(
    identity: &IdentityRuntime,
    record: &SessionRecord,
    now: u64,
) -> Option<HeaderValue> {
    match identity
        .session_keys
        .seal(record, &|g| identity.group_needed(g))
    {
        Ok(sealed) => {
            if sealed.dropped_groups() > 0 {
                tracing::info!(
                    user = %record.subject,
                    dropped = sealed.dropped_groups(),
                    "groups no policy names were left out of the session cookie to keep it small"
                );
            }
            let left = record.expires_at.saturating_sub(now);
            Some(set_cookie(&sealed, std::time::Duration::from_secs(left)))
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot seal a session cookie");
            None
        }
    }
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether the request comes from a browser navigating, which can follow a login redirect.
fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes() == b"navigate";
    }
    match headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) {
        Some(accept) if accept.contains("text/html") => true,
        Some(accept) if accept.contains("application/json") => false,
        _ => true,
    }
}

/// The login URL for coming back to this request.
fn login_url(identity: &IdentityRuntime, ctx: &RequestCtx, req: &Request<RequestBody>) -> String {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let back = format!("https://{}{}{path}", ctx.host, ctx.port_suffix());
    let rd: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    format!("{}/.sekisho/login?rd={rd}", auth_origin(identity, ctx))
}

fn login_required(
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    req: &Request<RequestBody>,
) -> Response<ResponseBody> {
    let Some(identity) = snapshot.identity.as_deref() else {
        return ctx.page(
            StatusCode::FORBIDDEN,
            "no login is configured for this site",
        );
    };
    let url = login_url(identity, ctx, req);
    if is_navigation(req.method(), req.headers()) {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::FOUND;
        if let Ok(location) = HeaderValue::from_str(&url) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sign in first",
        Some(&url),
    )
}

fn denied(ctx: &RequestCtx, route: &Route, user: Option<&str>) -> Response<ResponseBody> {
    let who = user.unwrap_or("nobody (not signed in)");
    let body = page::denied(
        who,
        &route.name.0,
        ctx.request_id.to_str().unwrap_or("-"),
        "/.sekisho/logout",
    );
    html(StatusCode::FORBIDDEN, body)
}

async fn check_webhook(
    ctx: &RequestCtx,
    route: &Route,
    webhook: &crate::routing::snapshot::RouteWebhook,
    req: &mut Request<RequestBody>,
) -> Access {
    let signature = req
        .headers()
        .get(sekisho_identity::webhook::HEADER_NAME)
        .map(|v| v.as_bytes().to_vec());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let refuse = |error: WebhookError| {
        log_decision(
            ctx,
            route,
            &method,
            &path,
            None,
            false,
            "webhook",
            &error.to_string(),
        );
        let status = match error {
            WebhookError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNAUTHORIZED,
        };
        Access::respond(json_error(
            status,
            "bad_signature",
            &error.to_string(),
            None,
        ))
    };
    // A missing or malformed signature is refused before the body is read.
    if let Err(error) = sekisho_identity::webhook::parse_signature(signature.as_deref()) {
        return refuse(error);
    }
    let body = std::mem::replace(req.body_mut(), RequestBody::buffered(Bytes::new()));
    let mut check = webhook.secret.start(webhook.max_body);
    let limited = http_body_util::Limited::new(
        body,
        usize::try_from(webhook.max_body).unwrap_or(usize::MAX),
    );
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return refuse(WebhookError::BodyTooLarge {
                max: webhook.max_body,
            });
        }
    };
    if let Err(error) = check
        .update(&bytes)
        .and_then(|()| check.finish(signature.as_deref()))
    {
        return refuse(error);
    }
    log_decision(ctx, route, &method, &path, None, true, "webhook", "");
    *req.body_mut() = RequestBody::buffered(bytes);
    Access::Pass {
        who: None,
        set_cookie: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn log_decision(
    ctx: &RequestCtx,
    route: &Route,
    method: &Method,
    path: &str,
    user: Option<&str>,
    allowed: bool,
    rule: &str,
    reason: &str,
) {
    tracing::info!(
        target: "sekisho::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        host = %ctx.host,
        route = %route.name.0,
        %method,
        path,
        user = user.unwrap_or("-"),
        allowed,
        rule,
        reason,
        "access decision"
    );
}
