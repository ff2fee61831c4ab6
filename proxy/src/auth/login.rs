//! The endpoints the proxy answers itself: `/.sekisho/*` on every host, and the auth host
//! (login, callback, back-channel logout, the JWKS of identity assertions). The CLI's endpoints
//! under `/.sekisho/cli/` are in [`crate::auth::cli_login`]. See `docs/identity.md` for the flow.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use sekisho_identity::oidc::PendingLogin;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::access::{cookie_session, current_session, session_set_cookie};
use crate::auth::endpoint::{CLI_PREFIX, auth_origin, login_again_url, login_error};
use crate::auth::identity::IdentityRuntime;
use crate::auth::once::SpendError;
use crate::auth::revocation::{Revoked, provider_session_key, session_id_for};
use crate::auth::session::{SessionId, SessionRecord, clear_cookie, unix_now};
use crate::auth::who::who_from_record;
use crate::observe::metrics::Metrics;
use crate::policy::Decision;
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::page;
use crate::respond::{html, json_error, param, query, redirect};
use crate::routing::snapshot::Snapshot;

const LOGIN_COOKIE: &str = "__Host-sekisho-login";
/// How long a login may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);
const MAX_LOGOUT_TOKEN_BODY: usize = 64 * 1024;

/// What the login cookie holds between the redirect to the provider and the callback.
#[derive(Serialize, Deserialize)]
struct LoginState {
    pending: PendingLogin,
    rd: String,
}

/// Answers a request for the auth host or a `/.sekisho/` path (other than the CLI's).
pub(crate) async fn serve_identity_page(
    snapshot: &Snapshot,
    metrics: &Metrics,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let on_auth_host = ctx.host == identity.auth_host;
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match (path, on_auth_host) {
        ("/.sekisho/login", true) if get => login(snapshot, metrics, identity, ctx, &req).await,
        ("/.sekisho/callback", true) if get => {
            callback(snapshot, metrics, identity, ctx, &req).await
        }
        ("/.sekisho/backchannel-logout", true) if req.method() == Method::POST => {
            backchannel_logout(identity, req).await
        }
        ("/.well-known/sekisho/jwks.json", true) if get => {
            let mut response = Response::new(ResponseBody::full(identity.jwks_json.clone()));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            );
            response
        }
        ("/.sekisho/handoff", false) if get => handoff(identity, ctx, &req).await,
        ("/.sekisho/logout", _) if get => logout(identity, ctx, req.headers(), on_auth_host).await,
        ("/.sekisho/me", _) if get => me(snapshot, identity, ctx, req.headers()),
        ("/", true) if get => match current_session(identity, ctx, req.headers()) {
            Some(_) => redirect("/.sekisho/me", None),
            // Where a provider's sign-out sends the person back (`state=signed-out`).
            None if param(&query(&req), "state") == Some("signed-out") => html(
                StatusCode::OK,
                page::signed_out(true, Some(&sign_in_url(identity, ctx))),
            ),
            None => html(
                StatusCode::OK,
                page::not_signed_in(&sign_in_url(identity, ctx)),
            ),
        },
        _ => ctx.page(StatusCode::NOT_FOUND, "nothing is served at this path"),
    }
}

/// The login that returns to the auth host's `/.sekisho/me`.
fn sign_in_url(identity: &IdentityRuntime, ctx: &RequestCtx) -> String {
    login_again_url(
        identity,
        ctx,
        &format!("{}/.sekisho/me", auth_origin(identity, ctx)),
    )
}

/// A return URL is acceptable when it is `https` on a host some route serves, on the port this
/// request came in on (every host is served on the same one), or one of the auth host's own
/// pages a login returns to, without credentials, and with a path in its normal form (no
/// `//`, `\\` or dot segments, which browsers and servers resolve differently): anything else
/// would make the login an open redirect.
fn check_return_url(
    snapshot: &Snapshot,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    rd: &str,
) -> Option<Url> {
    let port = ctx
        .port_suffix()
        .strip_prefix(':')
        .and_then(|p| p.parse().ok());
    return_url(rd, &identity.auth_host, port, &|host| {
        snapshot.routes.names_host(host)
    })
}

/// [`check_return_url`] without the snapshot: `port` is the request's (none for 443), and
/// `knows_host` says whether a route serves a host.
fn return_url(
    rd: &str,
    auth_host: &str,
    port: Option<u16>,
    knows_host: &dyn Fn(&str) -> bool,
) -> Option<Url> {
    // The URL parser reads `\` as `/` in https URLs; a browser may not.
    if rd.contains('\\') {
        return None;
    }
    let url = Url::parse(rd).ok()?;
    if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    if url.port() != port.filter(|&p| p != 443) {
        return None;
    }
    if !crate::routing::path::normalize_path(url.path()).is_ok_and(|normal| normal == url.path()) {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(host) => host.to_ascii_lowercase(),
        _ => return None,
    };
    if host == auth_host {
        return is_auth_host_return_path(url.path()).then_some(url);
    }
    knows_host(&host).then_some(url)
}

/// The auth host's pages a login may return to: its home, `/.sekisho/me`, and the CLI's pages
/// under `/.sekisho/cli/` (authorize, device approval). Not the login, callback or logout
/// endpoints, nor anything else. The path is the parser's, with dot segments resolved.
fn is_auth_host_return_path(path: &str) -> bool {
    path == "/" || path == "/.sekisho/me" || path.starts_with(CLI_PREFIX)
}

async fn login(
    snapshot: &Snapshot,
    metrics: &Metrics,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let query = query(req);
    let Some(rd) = param(&query, "rd").and_then(|rd| check_return_url(snapshot, identity, ctx, rd))
    else {
        return login_error(
            ctx,
            StatusCode::BAD_REQUEST,
            "The address to return to after signing in is missing or is not a site served here.",
            "/",
        );
    };
    let slot = match (param(&query, "provider"), identity.providers.as_slice()) {
        (_, []) => {
            return login_error(
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "No identity provider is configured.",
                "/",
            );
        }
        (None, [only]) => only,
        (None, several) => {
            let links: Vec<(String, String)> = several
                .iter()
                .map(|p| {
                    let rd: String =
                        url::form_urlencoded::byte_serialize(rd.as_str().as_bytes()).collect();
                    (
                        p.display_name.clone(),
                        format!("/.sekisho/login?rd={rd}&provider={}", p.name),
                    )
                })
                .collect();
            let links: Vec<(&str, &str)> = links
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            return html(StatusCode::OK, page::choose_provider(&links));
        }
        (Some(name), _) => match identity.provider(name) {
            Some(slot) => slot,
            None => {
                return login_error(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    "There is no such identity provider.",
                    &login_again_url(identity, ctx, rd.as_str()),
                );
            }
        },
    };
    let provider = match slot.get(identity.http()).await {
        Ok(provider) => provider,
        Err(error) => {
            tracing::warn!(provider = %slot.name, error = %crate::error_chain(&error), "identity provider discovery failed");
            metrics.provider_error(&slot.name, "discovery");
            return login_error(
                ctx,
                StatusCode::BAD_GATEWAY,
                &format!("{} cannot be reached right now.", slot.display_name),
                &login_again_url(identity, ctx, rd.as_str()),
            );
        }
    };
    let Ok(callback) = Url::parse(&format!("{}/.sekisho/callback", auth_origin(identity, ctx)))
    else {
        return ctx.page(StatusCode::BAD_REQUEST, "the request has no valid host");
    };
    let (authorize, pending) = provider.begin_login(&callback);
    let state = LoginState {
        pending,
        rd: rd.to_string(),
    };
    let sealed = serde_json::to_vec(&state)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            identity
                .session_keys
                .seal_login(&identity.auth_host, &json)
                .map_err(|e| e.to_string())
        });
    let sealed = match sealed {
        Ok(sealed) => sealed,
        Err(error) => {
            tracing::warn!(%error, "cannot seal the login state");
            return login_error(
                ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The sign-in could not start.",
                "/",
            );
        }
    };
    let cookie = format!(
        "{LOGIN_COOKIE}={sealed}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        LOGIN_TTL.as_secs()
    );
    redirect(
        authorize.as_str(),
        HeaderValue::try_from(cookie).ok().map(|c| vec![c]),
    )
}

fn login_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|crumb| crumb.trim().split_once('='))
        .find(|(name, _)| *name == LOGIN_COOKIE)
        .map(|(_, value)| value)
}

fn clear_login_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-sekisho-login=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
    )
}

/// Why a login callback did not end in a session. Each failure knows its status and the
/// sentence the person is shown; its cause is logged once, where the callback answers.
#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error("This sign-in expired or was started in another browser.")]
    NoPendingLogin,
    #[error("The identity provider refused: {0}")]
    ProviderRefused(String),
    #[error("The identity provider's answer is incomplete.")]
    Incomplete,
    #[error("That identity provider is no longer configured.")]
    UnknownProvider,
    #[error("The identity provider cannot be reached.")]
    ProviderUnreachable(#[source] sekisho_identity::oidc::DiscoveryError),
    #[error("The sign-in could not be verified.")]
    NotVerified(#[source] sekisho_identity::oidc::LoginError),
    #[error("The address to return to is not valid.")]
    BadReturnAddress,
    #[error("The sign-in could not complete.")]
    NoRandomness(#[source] crate::auth::session::RandomUnavailable),
    #[error("The sign-in could not complete.")]
    Seal(#[source] crate::auth::session::SealError),
}

impl CallbackError {
    /// The `result` of `sekisho_logins_total`, and what was asked of the provider when it
    /// failed (for `sekisho_provider_errors_total`).
    fn outcome(&self) -> (&'static str, Option<&'static str>) {
        use sekisho_identity::oidc::LoginError;
        match self {
            Self::ProviderUnreachable(_) => ("failed", Some("discovery")),
            Self::NotVerified(LoginError::CodeExchange(_)) => ("failed", Some("token")),
            Self::NotVerified(LoginError::Keys(_)) => ("failed", Some("discovery")),
            Self::NoRandomness(_) | Self::Seal(_) => ("failed", None),
            _ => ("refused", None),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::ProviderUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::NoRandomness(_) | Self::Seal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The provider's redirect back: the pending login's cookie, the code, a session, and the
/// handoff to the host the person came from. A failure is logged once and shown with a link to
/// try again.
async fn callback(
    snapshot: &Snapshot,
    metrics: &Metrics,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let state = login_cookie(req.headers())
        .and_then(|value| {
            identity
                .session_keys
                .open_login(value, &identity.auth_host)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<LoginState>(&json).ok());
    let (result, retry) = match &state {
        Some(state) => (
            finish_callback(snapshot, identity, ctx, req, state).await,
            login_again_url(identity, ctx, &state.rd),
        ),
        None => {
            let home = format!("{}/", auth_origin(identity, ctx));
            (
                Err(CallbackError::NoPendingLogin),
                login_again_url(identity, ctx, &home),
            )
        }
    };
    let provider = state.as_ref().map_or("-", |s| s.pending.provider());
    let error = match result {
        Ok(response) => {
            metrics.login(provider, "success");
            return response;
        }
        Err(error) => error,
    };
    let (result, failed_operation) = error.outcome();
    metrics.login(provider, result);
    if let Some(operation) = failed_operation {
        metrics.provider_error(provider, operation);
    }
    match error.status() {
        StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::warn!(provider, error = %crate::error_chain(&error), "login failed")
        }
        _ => tracing::info!(provider, error = %crate::error_chain(&error), "login refused"),
    }
    let retry = match error {
        CallbackError::BadReturnAddress => "/".to_owned(),
        _ => retry,
    };
    login_error(ctx, error.status(), &error.to_string(), &retry)
}

async fn finish_callback(
    snapshot: &Snapshot,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
    state: &LoginState,
) -> Result<Response<ResponseBody>, CallbackError> {
    let query = query(req);
    if let Some(error) = param(&query, "error") {
        let detail = param(&query, "error_description").unwrap_or(error);
        return Err(CallbackError::ProviderRefused(detail.to_owned()));
    }
    let (Some(code), Some(returned_state)) = (param(&query, "code"), param(&query, "state")) else {
        return Err(CallbackError::Incomplete);
    };
    let slot = identity
        .provider(state.pending.provider())
        .ok_or(CallbackError::UnknownProvider)?;
    let provider = slot
        .get(identity.http())
        .await
        .map_err(CallbackError::ProviderUnreachable)?;
    let verified = provider
        .finish_login(&state.pending, code, returned_state)
        .await
        .map_err(CallbackError::NotVerified)?;
    let rd = Url::parse(&state.rd).map_err(|_| CallbackError::BadReturnAddress)?;
    let now = unix_now();
    let random = SessionId::random().map_err(CallbackError::NoRandomness)?;
    let provider_session = verified
        .sid
        .as_deref()
        .map(|sid| provider_session_key(&verified.issuer, sid));
    let id = SessionId(session_id_for(random.0, provider_session));
    let expires_at = now + identity.session_lifetime().as_secs();
    let record = SessionRecord {
        id,
        subject: verified.subject.clone(),
        // Only a verified email counts for policy, so only a verified one is kept.
        email: verified
            .email
            .clone()
            .filter(|_| verified.email_verified)
            .unwrap_or_default(),
        groups: verified.groups.clone(),
        issuer: verified.issuer.clone(),
        auth_time: now,
        issued_at: now,
        expires_at,
        last_seen: now,
        host: identity.auth_host.clone(),
        groups_trimmed: false,
    };
    identity
        .state
        .remember_login(id.0, verified.id_token.clone(), expires_at);
    // Before any cookie of the session exists: a back-channel logout of this subject earlier
    // in the same second must not end it.
    identity.state.revocations.session_started(
        &id.0,
        &record.issuer,
        &record.subject,
        record.issued_at,
    );
    tracing::info!(target: "sekisho::access", user = %record.email, subject = %record.subject, provider = %slot.name, "signed in");

    let mut cookies = vec![clear_login_cookie()];
    cookies.extend(session_set_cookie(identity, &record, now));
    let rd_host = rd.host_str().unwrap_or_default().to_ascii_lowercase();
    if rd_host == identity.auth_host
        || check_return_url(snapshot, identity, ctx, rd.as_str()).is_none()
    {
        return Ok(redirect(rd.as_str(), Some(cookies)));
    }
    let mut for_host = record;
    for_host.host = rd_host.clone();
    let mut return_path = rd.path().to_owned();
    if let Some(q) = rd.query() {
        return_path.push('?');
        return_path.push_str(q);
    }
    let sealed = identity
        .session_keys
        .seal_handoff(&for_host, &return_path, now, &|g| identity.group_needed(g))
        .map_err(CallbackError::Seal)?;
    let port = rd.port().map(|p| format!(":{p}")).unwrap_or_default();
    let location = format!(
        "https://{rd_host}{port}/.sekisho/handoff?code={}",
        sealed.code
    );
    Ok(redirect(&location, Some(cookies)))
}

async fn handoff(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let query = query(req);
    let now = unix_now();
    let opened = param(&query, "code")
        .ok_or("the code is missing".to_owned())
        .and_then(|code| {
            identity
                .session_keys
                .open_handoff(code, &ctx.host, now)
                .map_err(|e| e.to_string())
        });
    let spent = match opened {
        Ok(handoff) => identity
            .state
            .replay
            .spend(handoff.nonce, handoff.expires_at, now)
            .await
            .map(|()| handoff)
            .map_err(|e| e.to_string()),
        Err(reason) => Err(reason),
    };
    let handoff = match spent {
        Ok(handoff) => handoff,
        Err(reason) => {
            tracing::info!(host = %ctx.host, %reason, "handoff code refused");
            let back = format!("https://{}{}/", ctx.host, ctx.port_suffix());
            return login_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "This sign-in link is not valid here, or was already used.",
                &back,
            );
        }
    };
    let cookie = session_set_cookie(identity, &handoff.session, now);
    // `return_path` is a checked local path; the host is this one.
    let target = format!(
        "https://{}{}{}",
        ctx.host,
        ctx.port_suffix(),
        handoff.return_path
    );
    redirect(&target, cookie.map(|c| vec![c]))
}

/// The session this host's cookie holds, revoked or not.
async fn logout(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    on_auth_host: bool,
) -> Response<ResponseBody> {
    // Revoked already when the app host's logout came first: the same session id is on every
    // host of one login.
    let session = cookie_session(identity, ctx, headers);
    let id_token = match (&session, on_auth_host) {
        (Some(session), true) => identity.state.take_id_token(&session.id.0),
        _ => None,
    };
    if let Some(session) = &session {
        identity.state.revocations.revoke(Revoked::Session {
            id: session.id.0,
            until: session.expires_at,
        });
        tracing::info!(target: "sekisho::access", user = %session.email, subject = %session.subject, host = %ctx.host, "signed out");
    }
    let cookies = Some(vec![clear_cookie()]);
    if !on_auth_host {
        return redirect(
            &format!("{}/.sekisho/logout", auth_origin(identity, ctx)),
            cookies,
        );
    }
    // RP-initiated logout at the provider, when it offers it and the ID token is still known.
    let at_provider = session.zip(id_token).and_then(|(session, token)| {
        let provider = identity
            .providers
            .iter()
            .filter_map(|slot| slot.discovered())
            .find(|p| p.config().issuer == session.issuer)?;
        let back = Url::parse(&format!("{}/", auth_origin(identity, ctx))).ok()?;
        provider.end_session_url(&token, &back, "signed-out")
    });
    match at_provider {
        Some(url) => redirect(url.as_str(), cookies),
        None => {
            let mut response = html(
                StatusCode::OK,
                page::signed_out(false, Some(&sign_in_url(identity, ctx))),
            );
            response
                .headers_mut()
                .append(header::SET_COOKIE, clear_cookie());
            response
        }
    }
}

async fn backchannel_logout(
    identity: &IdentityRuntime,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_LOGOUT_TOKEN_BODY);
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body is too large",
                None,
            );
        }
    };
    let Some(token) = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "logout_token is missing",
            None,
        );
    };
    // The token's own `iss` picks the provider whose keys then verify it, so that a refusal
    // names the one reason that matters (and no other provider fetches keys for it).
    let issuer = sekisho_identity::oidc::unverified_issuer(&token);
    let slots = identity
        .providers
        .iter()
        .filter(|slot| Some(slot.issuer()) == issuer.as_deref());
    let mut candidates = 0;
    for slot in slots {
        candidates += 1;
        let provider = match slot.get(identity.http()).await {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(target: "sekisho::access", provider = %slot.name, error = %crate::error_chain(&error), "back-channel logout token not checked: the provider is not reachable");
                continue;
            }
        };
        let logout = match provider.verify_logout_token(&token).await {
            Ok(logout) => logout,
            Err(error) => {
                tracing::info!(target: "sekisho::access", provider = %slot.name, reason = %crate::error_chain(&error), "back-channel logout token refused");
                continue;
            }
        };
        let issuer = &provider.config().issuer;
        let now = unix_now();
        match identity
            .state
            .first_use_of_logout_token(issuer, &logout.jti, logout.replayable_until, now)
            .await
        {
            Ok(()) => {}
            Err(SpendError::AlreadyUsed) => {
                tracing::info!(target: "sekisho::access", provider = %slot.name, subject = logout.sub.as_deref().unwrap_or("-"), reason = "replay: this logout token (jti) was used before", "back-channel logout token refused");
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the logout token was already used",
                    None,
                );
            }
            // Only the provider can sign logout tokens, so this takes a flood of them. The logout
            // still happens: a replay can only end sessions that began before it.
            Err(SpendError::Full) => {
                tracing::warn!(provider = %slot.name, "too many logout tokens to remember: this one could be replayed");
            }
            // The logout ends sessions either way; only a replay elsewhere goes unnoticed.
            Err(SpendError::Unshared(error)) => {
                tracing::warn!(provider = %slot.name, error = %error, "cannot tell the other replicas this logout token was used: it could be replayed there");
            }
        }
        // A `sid` names one session at the provider: the sessions that logged in with it carry
        // its key in their ids, on every replica. Without one, every session of the subject.
        let by_sid = match (&logout.sid, &logout.sub) {
            (Some(sid), _) => {
                identity.state.revocations.revoke(Revoked::ProviderSession {
                    key: provider_session_key(issuer, sid),
                    until: now + identity.session_lifetime().as_secs(),
                });
                true
            }
            (None, Some(sub)) => {
                identity.state.revocations.revoke(Revoked::Subject {
                    issuer: issuer.clone(),
                    subject: sub.clone(),
                    at: now,
                });
                false
            }
            (None, None) => false,
        };
        tracing::info!(target: "sekisho::access", provider = %slot.name, subject = logout.sub.as_deref().unwrap_or("-"), by_sid, "back-channel logout");
        let mut response = Response::new(ResponseBody::empty());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    if candidates == 0 {
        let reason = match issuer {
            Some(_) => "no configured provider has the token's issuer",
            None => "the token is not a JWT with an issuer",
        };
        tracing::info!(target: "sekisho::access", reason, "back-channel logout token refused");
    }
    json_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the logout token is not valid",
        None,
    )
}

fn me(
    snapshot: &Snapshot,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let Some(record) = current_session(identity, ctx, headers) else {
        let back = format!("https://{}{}/.sekisho/me", ctx.host, ctx.port_suffix());
        return redirect(&login_again_url(identity, ctx, &back), None);
    };
    let now = unix_now();
    let who = who_from_record(record.clone());
    let routes = snapshot
        .route_list
        .iter()
        .map(|route| {
            let decision = route.access.decide(
                Some(&who.identity),
                &Method::GET,
                &route.path,
                &HeaderMap::new(),
            );
            page::RouteAccess {
                host: route.host.clone(),
                path: route.path.clone(),
                allowed: matches!(decision, Decision::Allow { .. }),
            }
        })
        .collect();
    let minutes = |secs: u64| format!("in {} minutes", secs / 60);
    let body = page::me(&page::MePage {
        email: record.email.clone(),
        subject: record.subject.clone(),
        issuer: record.issuer.clone(),
        groups: record.groups.clone(),
        session_expires: minutes(record.expires_at.saturating_sub(now)),
        idle_expires: minutes(
            (record.last_seen + identity.idle_timeout().as_secs()).saturating_sub(now),
        ),
        routes,
    });
    html(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "auth.example.com";

    fn accepted_on(port: Option<u16>, rd: &str) -> bool {
        return_url(rd, AUTH, port, &|host| host == "app.example.com").is_some()
    }

    fn accepted(rd: &str) -> bool {
        accepted_on(None, rd) || accepted_on(Some(8443), rd)
    }

    #[test]
    fn return_urls_on_route_hosts_are_accepted_with_any_normal_path() {
        for rd in [
            "https://app.example.com/",
            "https://app.example.com:8443/page?x=1",
            "https://APP.example.com/.sekisho/logout",
            "https://app.example.com/caf%C3%A9;v=1/?q=a//b#x",
        ] {
            assert!(accepted(rd), "{rd}");
        }
    }

    #[test]
    fn return_urls_must_be_on_the_port_the_login_came_in_on() {
        assert!(accepted_on(None, "https://app.example.com/"));
        assert!(accepted_on(None, "https://app.example.com:443/"));
        assert!(accepted_on(Some(443), "https://app.example.com/"));
        assert!(accepted_on(Some(8443), "https://app.example.com:8443/x"));
        assert!(!accepted_on(Some(8443), "https://app.example.com/x"));
        assert!(!accepted_on(None, "https://app.example.com:8443/x"));
        assert!(!accepted_on(Some(8443), "https://app.example.com:9443/x"));
        assert!(!accepted_on(
            Some(8443),
            "https://auth.example.com:1/.sekisho/me"
        ));
    }

    #[test]
    fn return_paths_that_a_browser_could_read_as_another_host_are_refused() {
        for rd in [
            "https://app.example.com//evil.example/",
            "https://app.example.com/\\evil.example/",
            "https://app.example.com/\\\\evil.example/",
            "https://app.example.com/a%2f%2fevil.example",
            "https://app.example.com/x/..;/y",
        ] {
            assert!(!accepted(rd), "{rd}");
        }
    }

    #[test]
    fn on_the_auth_host_only_its_home_its_me_page_and_the_cli_pages_are_return_urls() {
        for rd in [
            "https://auth.example.com/",
            "https://auth.example.com:8443/",
            "https://auth.example.com/.sekisho/me",
            "https://auth.example.com/.sekisho/cli/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2Fcb",
            "https://auth.example.com:8443/.sekisho/cli/device?user_code=BCDF-GHJK",
        ] {
            assert!(accepted(rd), "{rd}");
        }
        for rd in [
            "https://auth.example.com/.sekisho/logout",
            "https://auth.example.com/.sekisho/login?rd=https%3A%2F%2Fevil.example%2F",
            "https://auth.example.com/.sekisho/callback?code=x&state=y",
            "https://auth.example.com/.sekisho/backchannel-logout",
            "https://auth.example.com/.well-known/sekisho/jwks.json",
            "https://auth.example.com/.sekisho/cli",
            "https://auth.example.com/.sekisho/client/x",
            "https://auth.example.com/.sekisho/cli/../logout",
            "https://auth.example.com/.sekisho/cli/%2e%2e/logout",
            "https://auth.example.com/.sekisho/me/../logout",
            "https://auth.example.com/anything",
            "https://auth.example.com//.sekisho/cli/authorize",
        ] {
            assert!(!accepted(rd), "{rd}");
        }
    }

    #[test]
    fn other_hosts_schemes_and_credentials_are_refused() {
        for rd in [
            "https://evil.example/",
            "http://app.example.com/",
            "http://auth.example.com/.sekisho/cli/authorize",
            "https://user@app.example.com/",
            "https://user:pw@auth.example.com/.sekisho/cli/device",
            "https://127.0.0.1/",
            "//app.example.com/",
            "/relative",
            "javascript:alert(1)",
            "",
        ] {
            assert!(!accepted(rd), "{rd}");
        }
    }
}
