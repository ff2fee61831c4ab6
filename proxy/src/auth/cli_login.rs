//! The proxy as the authorization server of the `sekisho` CLI: the endpoints under
//! `/.sekisho/cli/`, dispatched from [`crate::auth::login`]. The person logs in through the proxy's
//! ordinary browser login on the auth host; these endpoints turn that session into short-lived
//! Sekisho user tokens plus a refresh token for the CLI. See `docs/identity.md` for the flows.
//!
//! - `GET /.sekisho/cli/config` (any host): where the auth host is.
//! - `GET /.sekisho/cli/authorize` (auth host): a loopback redirect with PKCE (RFC 8252); the
//!   code is sealed, one-time and lives 60 s.
//! - `POST /.sekisho/cli/token` (auth host): RFC 6749 §5 answers for the `authorization_code`,
//!   `refresh_token` and device-code grants.
//! - `POST /.sekisho/cli/device`, `GET /.sekisho/cli/device`, `POST
//!   /.sekisho/cli/device/approve` (auth host): the device flow (RFC 8628).
//! - `POST /.sekisho/cli/revoke` (auth host): RFC 7009 for refresh tokens.
//!
//! Every issued or refused token is logged once at `info` (target `sekisho::access`) with the
//! user, the flow and the reason; never a token, code or verifier.

pub(crate) mod device;
mod form;
mod pkce;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use sekisho_identity::signing::Identity;
use serde_json::json;
use url::Url;

use crate::auth::access::current_session;
use crate::auth::endpoint::{auth_origin, login_again_url, login_error};
use crate::auth::identity::IdentityRuntime;
use crate::auth::once::SpendError;
use crate::auth::revocation::Revoked;
use crate::auth::session::{SessionRecord, unix_now};
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::page;
use crate::respond::{html, param, query, redirect};
use crate::routing::snapshot::Snapshot;

use device::{DEVICE_CODE_TTL, DecideError, DeviceError, Poll, UserCode};
use form::Form;

/// Every CLI endpoint is under this path.
const DEVICE_PATH: &str = "/.sekisho/cli/device";
const APPROVE_PATH: &str = "/.sekisho/cli/device/approve";
/// The grant type of the device flow (RFC 8628 §3.4).
pub(crate) const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Answers a request for a path under [`CLI_PREFIX`].
pub(crate) async fn serve_cli_endpoint(
    snapshot: &Snapshot,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let on_auth_host = ctx.host == identity.auth_host;
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let post = req.method() == Method::POST;
    match (req.uri().path(), on_auth_host) {
        ("/.sekisho/cli/config", _) if get => config(snapshot, identity, ctx, &req),
        ("/.sekisho/cli/authorize", true) if get => authorize(identity, ctx, &req),
        ("/.sekisho/cli/token", true) if post => token(identity, req).await,
        (DEVICE_PATH, true) if post => device_start(identity, ctx).await,
        (DEVICE_PATH, true) if get => device_page(identity, ctx, &req).await,
        (APPROVE_PATH, true) if post => device_decide(identity, ctx, req).await,
        ("/.sekisho/cli/revoke", true) if post => revoke(identity, req).await,
        _ => ctx.page(StatusCode::NOT_FOUND, "nothing is served at this path"),
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The name logs and answers give a person: the email, else the subject.
fn user_of(session: &SessionRecord) -> &str {
    if session.email.is_empty() {
        &session.subject
    } else {
        &session.email
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An RFC 6749 §5.2 error answer (400 unless the error says otherwise).
fn oauth_error(error: &str, description: &str) -> Response<ResponseBody> {
    let status = match error {
        "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// `GET /.sekisho/cli/config[?host=H]`: the auth origin; with `host`, also whether this proxy
/// serves that host (the CLI asks the auth host before it sends that host the auth host's
/// tokens, so that no other site can claim to belong to it).
fn config(
    snapshot: &Snapshot,
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let mut body = json!({"auth_origin": auth_origin(identity, ctx)});
    let query = query(req);
    if let Some(host) = param(&query, "host") {
        let host = crate::routing::table::normalize_host(host);
        let serves = host.is_some_and(|h| {
            h == identity.auth_host
                || snapshot.routes.names_host(&h)
                || snapshot.tunnels.contains_key(h.as_ref())
        });
        body["serves_host"] = serves.into();
    }
    json(StatusCode::OK, body)
}

/// A checked authorization request.
struct AuthorizeRequest {
    redirect_uri: Url,
    state: String,
    code_challenge: String,
}

impl AuthorizeRequest {
    fn parse(query: &[(String, String)]) -> Result<Self, String> {
        for (i, (name, _)) in query.iter().enumerate() {
            if query[..i].iter().any(|(seen, _)| seen == name) {
                return Err("a parameter is given twice".to_owned());
            }
        }
        let need = |name: &str| param(query, name).ok_or_else(|| format!("{name} is missing"));
        let redirect_uri =
            pkce::check_redirect_uri(need("redirect_uri")?).map_err(|e| e.to_string())?;
        let state = need("state")?;
        if !pkce::is_state(state) {
            return Err("the state is not 1 to 128 URL-safe characters".to_owned());
        }
        let code_challenge = need("code_challenge")?;
        if param(query, "code_challenge_method") != Some("S256") {
            return Err("code_challenge_method must be S256".to_owned());
        }
        if !pkce::is_s256_challenge(code_challenge) {
            return Err("the code challenge is not an S256 challenge".to_owned());
        }
        if param(query, "response_type").is_some_and(|t| t != "code") {
            return Err("response_type must be code".to_owned());
        }
        Ok(Self {
            redirect_uri,
            state: state.to_owned(),
            code_challenge: code_challenge.to_owned(),
        })
    }

    /// This request again, as a URL on the auth host (the login's return URL).
    fn url(&self, identity: &IdentityRuntime, ctx: &RequestCtx) -> String {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("state", &self.state)
            .append_pair("code_challenge", &self.code_challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        format!(
            "{}/.sekisho/cli/authorize?{query}",
            auth_origin(identity, ctx)
        )
    }
}

/// `GET /.sekisho/cli/authorize`: with a session on the auth host, a redirect to the CLI's
/// loopback listener with a sealed one-time code; without one, into the login and back.
fn authorize(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let request = match AuthorizeRequest::parse(&query(req)) {
        Ok(request) => request,
        Err(reason) => {
            tracing::info!(target: "sekisho::access", flow = "browser", %reason, "CLI authorization refused");
            return login_error(
                ctx,
                StatusCode::BAD_REQUEST,
                &format!("This command-line sign-in link is not valid: {reason}."),
                &format!("{}/", auth_origin(identity, ctx)),
            );
        }
    };
    let Some(session) = current_session(identity, ctx, req.headers()) else {
        let back = request.url(identity, ctx);
        return redirect(&login_again_url(identity, ctx, &back), None);
    };
    let now = unix_now();
    let sealed = identity.session_keys.seal_cli_code(
        &session,
        &request.code_challenge,
        request.redirect_uri.as_str(),
        now,
        &|g| identity.group_needed(g),
    );
    let code = match sealed {
        Ok(code) => code,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot seal a CLI authorization code");
            return login_error(
                ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The command-line sign-in could not complete.",
                &request.url(identity, ctx),
            );
        }
    };
    tracing::debug!(target: "sekisho::access", user = user_of(&session), flow = "browser", "CLI authorization code issued");
    let mut location = request.redirect_uri;
    location
        .query_pairs_mut()
        .append_pair("code", code.expose())
        .append_pair("state", &request.state);
    redirect(location.as_str(), None)
}

/// Reads a bounded form body; `Err` is the answer to send.
async fn read_form(req: Request<Incoming>) -> Result<Form, Response<ResponseBody>> {
    if !form::is_form(req.headers()) {
        return Err(oauth_error(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = http_body_util::Limited::new(req.into_body(), form::MAX_BODY);
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(oauth_error("invalid_request", "the body is too large")),
    };
    Form::parse(&bytes).map_err(|e| oauth_error("invalid_request", &e.to_string()))
}

/// `POST /.sekisho/cli/token`.
async fn token(identity: &IdentityRuntime, req: Request<Incoming>) -> Response<ResponseBody> {
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    match form.get("grant_type") {
        Some("authorization_code") => code_grant(identity, &form).await,
        Some("refresh_token") => refresh_grant(identity, &form),
        Some(DEVICE_GRANT) => device_grant(identity, &form).await,
        Some(_) => oauth_error("unsupported_grant_type", "this grant type is not supported"),
        None => oauth_error("invalid_request", "grant_type is missing"),
    }
}

/// Logs a refused token request once and answers it.
fn refuse(flow: &str, user: &str, error: &str, reason: &str) -> Response<ResponseBody> {
    tracing::info!(target: "sekisho::access", user, flow, error, reason, "CLI token refused");
    oauth_error(error, reason)
}

fn is_revoked(identity: &IdentityRuntime, session: &SessionRecord) -> bool {
    identity.state.revocations.ends(session.into())
}

async fn code_grant(identity: &IdentityRuntime, form: &Form) -> Response<ResponseBody> {
    const FLOW: &str = "browser";
    let (Some(code), Some(verifier), Some(redirect_uri)) = (
        form.get("code"),
        form.get("code_verifier"),
        form.get("redirect_uri"),
    ) else {
        return refuse(
            FLOW,
            "-",
            "invalid_request",
            "code, code_verifier and redirect_uri are required",
        );
    };
    let now = unix_now();
    let code = match identity
        .session_keys
        .open_cli_code(code, &identity.auth_host, now)
    {
        Ok(code) => code,
        Err(error) => {
            return refuse(
                FLOW,
                "-",
                "invalid_grant",
                &format!("the code is not valid: {error}"),
            );
        }
    };
    let user = user_of(&code.session);
    // The code is spent by the first attempt that opens it, right or wrong, so that a stolen
    // code gives one guess at most.
    match identity
        .state
        .replay
        .spend(code.nonce, code.expires_at, now)
        .await
    {
        Ok(()) => {}
        Err(SpendError::AlreadyUsed) => {
            return refuse(FLOW, user, "invalid_grant", "the code was already used");
        }
        Err(SpendError::Full) => {
            return refuse(
                FLOW,
                user,
                "temporarily_unavailable",
                "too many codes are in flight; try again",
            );
        }
        Err(SpendError::Unshared(error)) => {
            tracing::warn!(error = %error, "a CLI code could not be spent on every replica");
            return refuse(
                FLOW,
                user,
                "temporarily_unavailable",
                "the gate cannot reach its replicas' shared state; sign in again in a moment",
            );
        }
    }
    if redirect_uri != code.redirect_uri {
        return refuse(
            FLOW,
            user,
            "invalid_grant",
            "redirect_uri is not the one the code was sent to",
        );
    }
    if !pkce::verify_s256(verifier, &code.code_challenge) {
        return refuse(
            FLOW,
            user,
            "invalid_grant",
            "the code verifier does not match the challenge",
        );
    }
    if is_revoked(identity, &code.session) {
        return refuse(FLOW, user, "invalid_grant", "the session has ended");
    }
    issue(identity, &code.session, None, FLOW, now)
}

fn refresh_grant(identity: &IdentityRuntime, form: &Form) -> Response<ResponseBody> {
    const FLOW: &str = "refresh";
    let Some(token) = form.get("refresh_token") else {
        return refuse(FLOW, "-", "invalid_request", "refresh_token is missing");
    };
    let now = unix_now();
    let refresh = match identity
        .session_keys
        .open_cli_refresh(token, &identity.auth_host, now)
    {
        Ok(refresh) => refresh,
        Err(error) => {
            return refuse(
                FLOW,
                "-",
                "invalid_grant",
                &format!("the refresh token is not valid: {error}"),
            );
        }
    };
    if is_revoked(identity, &refresh.session) {
        return refuse(
            FLOW,
            user_of(&refresh.session),
            "invalid_grant",
            "the session has ended",
        );
    }
    issue(identity, &refresh.session, Some(token), FLOW, now)
}

async fn device_grant(identity: &IdentityRuntime, form: &Form) -> Response<ResponseBody> {
    const FLOW: &str = "device";
    let Some(device_code) = form.get("device_code") else {
        return refuse(FLOW, "-", "invalid_request", "device_code is missing");
    };
    match identity
        .state
        .device_grants
        .poll(device_code, unix_millis())
        .await
    {
        // Waiting is the steady state of a device login: not a refusal worth a log line.
        Poll::Pending => oauth_error("authorization_pending", "not approved yet"),
        Poll::SlowDown => oauth_error(
            "slow_down",
            "polled sooner than the interval allows; the interval grew by 5 s",
        ),
        Poll::Approved(approval) => {
            let now = unix_now();
            let opened = identity.session_keys.open_device_approval(
                &approval,
                &identity.auth_host,
                &device::device_code_sha256(device_code),
                now,
            );
            let session = match opened {
                Ok(session) => session,
                Err(error) => {
                    let reason = format!("the approval does not open: {error}");
                    return refuse(FLOW, "-", "invalid_grant", &reason);
                }
            };
            if is_revoked(identity, &session) {
                return refuse(
                    FLOW,
                    user_of(&session),
                    "invalid_grant",
                    "the session has ended",
                );
            }
            issue(identity, &session, None, FLOW, now)
        }
        Poll::Denied => refuse(FLOW, "-", "access_denied", "the sign-in was denied"),
        Poll::Expired => refuse(
            FLOW,
            "-",
            "expired_token",
            "the device code expired before it was approved",
        ),
        Poll::Unknown => refuse(FLOW, "-", "invalid_grant", "the device code is not known"),
        // The grant is kept as it was: the CLI waits longer and asks again.
        Poll::Unavailable(error) => {
            tracing::warn!(%error, "cannot read a device login from the replicas' shared state");
            oauth_error(
                "slow_down",
                "the device login cannot be read just now; the interval grew by 5 s",
            )
        }
    }
}

/// The token answer: a new access token for `session`, and its refresh token (`refresh`, or a
/// new one).
fn issue(
    identity: &IdentityRuntime,
    session: &SessionRecord,
    refresh: Option<&str>,
    flow: &str,
    now: u64,
) -> Response<ResponseBody> {
    let user = user_of(session);
    let issued = identity.user_tokens.issue(
        session.id.0,
        &Identity {
            subject: &session.subject,
            email: &session.email,
            groups: &session.groups,
        },
        now,
    );
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot sign a user token");
            return oauth_error("temporarily_unavailable", "the token could not be issued");
        }
    };
    let refresh = match refresh {
        Some(token) => token.to_owned(),
        None => match identity
            .session_keys
            .seal_cli_refresh(session, &|g| identity.group_needed(g))
        {
            Ok(token) => token.expose().to_owned(),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot seal a refresh token");
                return oauth_error("temporarily_unavailable", "the token could not be issued");
            }
        },
    };
    tracing::info!(target: "sekisho::access", user, subject = %session.subject, flow, session = %session.id, "CLI token issued");
    json(
        StatusCode::OK,
        json!({
            "access_token": issued.token.expose(),
            "token_type": "Bearer",
            "expires_in": issued.claims.exp.saturating_sub(now),
            "refresh_token": refresh,
            "refresh_expires_in": session.expires_at.saturating_sub(now),
            "user": user,
        }),
    )
}

/// `POST /.sekisho/cli/device`: a new device grant.
async fn device_start(identity: &IdentityRuntime, ctx: &RequestCtx) -> Response<ResponseBody> {
    let started = identity.state.device_grants.start(unix_millis()).await;
    let (device_code, user_code) = match started {
        Ok(codes) => codes,
        // A flood is refused quietly: a line each would be the flood again, in the log.
        Err(error @ DeviceError::Busy) => {
            tracing::debug!(%error, "device login refused");
            return oauth_error("temporarily_unavailable", &error.to_string());
        }
        // The API's words stay in the log.
        Err(error @ DeviceError::Unshared(_)) => {
            tracing::warn!(%error, "device login refused");
            return oauth_error(
                "temporarily_unavailable",
                "device logins cannot be started just now",
            );
        }
        Err(error) => {
            tracing::warn!(%error, "device login refused");
            return oauth_error("temporarily_unavailable", &error.to_string());
        }
    };
    let verification_uri = format!("{}{DEVICE_PATH}", auth_origin(identity, ctx));
    json(
        StatusCode::OK,
        json!({
            "device_code": device_code.expose(),
            "user_code": user_code.to_string(),
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={user_code}"),
            "expires_in": DEVICE_CODE_TTL.as_secs(),
            "interval": device::POLL_INTERVAL.as_secs(),
        }),
    )
}

fn form_page(body: String) -> Response<ResponseBody> {
    let mut response = html(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::FORM_CONTENT_SECURITY_POLICY),
    );
    response
}

/// `GET /.sekisho/cli/device[?user_code=…]`: the approval page, for the session on the auth
/// host (without one, into the login and back).
async fn device_page(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let query = query(req);
    let typed = param(&query, "user_code");
    let user_code = typed.and_then(UserCode::parse);
    let Some(session) = current_session(identity, ctx, req.headers()) else {
        let mut back = format!("{}{DEVICE_PATH}", auth_origin(identity, ctx));
        if let Some(code) = &user_code {
            back.push_str(&format!("?user_code={code}"));
        }
        return redirect(&login_again_url(identity, ctx, &back), None);
    };
    let now = unix_now();
    let csrf = match identity.session_keys.seal_csrf(&session.id, &ctx.host, now) {
        Ok(csrf) => csrf.expose().to_owned(),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot seal a CSRF token");
            return ctx.page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be made",
            );
        }
    };
    let mut pending = None;
    if let Some(code) = user_code {
        match identity
            .state
            .device_grants
            .is_pending(&code, unix_millis())
            .await
        {
            Ok(true) => pending = Some(code),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot read a device login from the replicas' shared state");
                return login_error(
                    ctx,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Device logins cannot be read just now: try again in a moment.",
                    &format!(
                        "{}{DEVICE_PATH}?user_code={code}",
                        auth_origin(identity, ctx)
                    ),
                );
            }
        }
    }
    let notice = (typed.is_some() && pending.is_none()).then(|| {
        "That code is not waiting for approval (it may have expired): check the code your \
         terminal shows."
            .to_owned()
    });
    form_page(page::device_approval(&page::DevicePage {
        signed_in_as: user_of(&session).to_owned(),
        user_code: pending
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        csrf,
        action: APPROVE_PATH.to_owned(),
        notice,
    }))
}

/// `POST /.sekisho/cli/device/approve`: the person's decision, for their own session.
async fn device_decide(
    identity: &IdentityRuntime,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let device_page = format!("{}{DEVICE_PATH}", auth_origin(identity, ctx));
    let Some(session) = current_session(identity, ctx, req.headers()) else {
        return login_error(
            ctx,
            StatusCode::FORBIDDEN,
            "You are not signed in here any more.",
            &device_page,
        );
    };
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(_) => {
            return login_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "The form is not valid.",
                &device_page,
            );
        }
    };
    let now = unix_now();
    let csrf_ok = form.get("csrf").is_some_and(|t| {
        identity
            .session_keys
            .check_csrf(t, &ctx.host, &session.id, now)
    });
    if !csrf_ok {
        tracing::info!(target: "sekisho::access", user = user_of(&session), flow = "device", reason = "bad CSRF token", "device approval refused");
        return login_error(
            ctx,
            StatusCode::FORBIDDEN,
            "This form is out of date or was not sent from Sekisho's own page.",
            &device_page,
        );
    }
    let approve = match form.get("action") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return login_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "Choose Approve or Deny.",
                &device_page,
            );
        }
    };
    let Some(user_code) = form.get("user_code").and_then(UserCode::parse) else {
        return login_error(
            ctx,
            StatusCode::BAD_REQUEST,
            "That is not a code of the form XXXX-XXXX.",
            &device_page,
        );
    };
    let seal = |device_code_sha256: &[u8; 32]| {
        let sealed =
            identity
                .session_keys
                .seal_device_approval(&session, device_code_sha256, &|g| identity.group_needed(g));
        sealed
            .map_err(|error| tracing::warn!(error = %crate::error_chain(&error), "cannot seal a device approval"))
            .ok()
            .map(|sealed| sealed.expose().to_owned())
    };
    let decided = identity
        .state
        .device_grants
        .decide(&user_code, approve.then_some(&seal as _), unix_millis())
        .await;
    match decided {
        Ok(()) => {}
        Err(error @ (DecideError::Unshared(_) | DecideError::Seal)) => {
            tracing::warn!(user = user_of(&session), error = %error, "cannot record a device login's decision");
            return login_error(
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "Your decision could not be recorded just now: try again in a moment.",
                &device_page,
            );
        }
        Err(error) => {
            tracing::info!(target: "sekisho::access", user = user_of(&session), flow = "device", reason = %error, "device approval refused");
            return login_error(
                ctx,
                StatusCode::BAD_REQUEST,
                &format!("{error}."),
                &device_page,
            );
        }
    }
    tracing::info!(target: "sekisho::access", user = user_of(&session), flow = "device", approved = approve, "device login decided");
    html(
        StatusCode::OK,
        page::device_decided(approve, user_of(&session)),
    )
}

/// `POST /.sekisho/cli/revoke` (RFC 7009): ends the session of a refresh token. The answer is
/// 200 whether or not the token was valid.
async fn revoke(identity: &IdentityRuntime, req: Request<Incoming>) -> Response<ResponseBody> {
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let Some(token) = form.get("token") else {
        return oauth_error("invalid_request", "token is missing");
    };
    // An expired token needs no revoking: it opens no more.
    if let Ok(refresh) =
        identity
            .session_keys
            .open_cli_refresh(token, &identity.auth_host, unix_now())
    {
        identity.state.revocations.revoke(Revoked::Session {
            id: refresh.session.id.0,
            until: refresh.session.expires_at,
        });
        tracing::info!(target: "sekisho::access", user = user_of(&refresh.session), subject = %refresh.session.subject, flow = "revoke", session = %refresh.session.id, "signed out (CLI)");
    }
    json(StatusCode::OK, json!({}))
}
