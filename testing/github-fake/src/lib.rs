//! `github-fake`: the part of GitHub's REST API that a GitHub App uses to manage repository
//! webhooks, served over plain HTTP on `127.0.0.1` for tests, with GitHub's checks where they
//! matter to the client:
//!
//! - `GET /repos/{owner}/{repo}/installation` and `POST /app/installations/{id}/access_tokens`
//!   want the App's JWT, which is really verified ([`jwt`]: RS256 under the App's public key,
//!   `iss`, `iat`, `exp` within 10 minutes);
//! - `GET|POST /repos/{owner}/{repo}/hooks`, `GET|PATCH|DELETE /repos/{owner}/{repo}/hooks/{id}`
//!   want an installation token of an installation that holds the repository;
//! - wrong credentials get 401, a repository the credentials do not reach 404, a request
//!   without `User-Agent` 403, a second hook with the same URL 422, as GitHub answers.
//!
//! The test reads the hooks ([`GitHub::hooks`], secrets included) and the requests made
//! ([`GitHub::requests`]). Test-only: nothing shipped may depend on it. It depends on none of
//! Sekisho's crates. The keys in `keys/` are test keys that anyone can read.

mod jwt;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The test App's private key as GitHub issues them: PKCS#1 PEM (`keys/app.pem`).
pub const APP_KEY: &str = include_str!("../keys/app.pem");
/// The same key as PKCS#8 PEM (`keys/app-pkcs8.pem`).
pub const APP_KEY_PKCS8: &str = include_str!("../keys/app-pkcs8.pem");
/// A key that is not the App's (`keys/other.pem`).
pub const OTHER_KEY: &str = include_str!("../keys/other.pem");

/// How long an installation token lives, as at GitHub.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The largest request body read.
const MAX_BODY: usize = 1 << 20;

/// The DER of the private key in `pem` (PKCS#1 or PKCS#8).
pub fn private_key_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError)? {
        PrivateKeyDer::Pkcs1(key) => Ok(key.secret_pkcs1_der().to_vec()),
        PrivateKeyDer::Pkcs8(key) => Ok(key.secret_pkcs8_der().to_vec()),
        _ => Err(KeyError),
    }
}

/// The public key (PKCS#1 `RSAPublicKey` DER) of the RSA private key in `pem`: what GitHub
/// keeps of an App's key.
pub fn public_key(pem: &str) -> Result<Vec<u8>, KeyError> {
    let pair = match PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| KeyError)? {
        PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
        _ => return Err(KeyError),
    }
    .map_err(|_| KeyError)?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// A PEM that holds no RSA private key ring accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyError;

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an RSA private key in PEM (PKCS#1 or PKCS#8)")
    }
}

impl std::error::Error for KeyError {}

/// A repository webhook as the fake stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub id: i64,
    pub active: bool,
    pub events: Vec<String>,
    /// `config.url`.
    pub url: String,
    /// `config.content_type`: `json` or `form`.
    pub content_type: String,
    /// `config.secret` (GitHub never shows it; the fake shows the test).
    pub secret: Option<String>,
    /// `config.insecure_ssl`: `"0"` verifies the receiver's certificate.
    pub insecure_ssl: String,
}

impl Hook {
    fn to_json(&self, base: &str, repository: &str) -> Value {
        let mut config = json!({
            "url": self.url,
            "content_type": self.content_type,
            "insecure_ssl": self.insecure_ssl,
        });
        if self.secret.is_some() {
            config["secret"] = json!("********");
        }
        json!({
            "type": "Repository",
            "id": self.id,
            "name": "web",
            "active": self.active,
            "events": self.events,
            "config": config,
            "url": format!("{base}/repos/{repository}/hooks/{}", self.id),
        })
    }
}

#[derive(Debug)]
struct State {
    app_id: u64,
    app_public_key: Vec<u8>,
    /// Installation id → the repositories it holds (lowercase: GitHub's names are not
    /// case-sensitive).
    installations: BTreeMap<u64, Vec<String>>,
    /// Installation token → (installation id, expiry in Unix seconds).
    tokens: HashMap<String, (u64, i64)>,
    /// Repository (lowercase) → its hooks.
    hooks: BTreeMap<String, Vec<Hook>>,
    next_hook_id: i64,
    requests: Vec<String>,
    base: String,
}

/// A running fake GitHub. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct GitHub {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl Drop for GitHub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl GitHub {
    /// Serves on `127.0.0.1:0` for the App `app_id` whose public key is `app_public_key`
    /// (PKCS#1 `RSAPublicKey` DER, see [`public_key`]). Call from within a Tokio runtime.
    pub async fn start(app_id: u64, app_public_key: Vec<u8>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            app_id,
            app_public_key,
            installations: BTreeMap::new(),
            tokens: HashMap::new(),
            hooks: BTreeMap::new(),
            next_hook_id: 1000,
            requests: Vec::new(),
            base: format!("http://{address}"),
        }));
        let accept = tokio::spawn(serve(listener, state.clone()));
        Ok(Self {
            address,
            state,
            accept,
        })
    }

    /// The API's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Installs the App on `repositories` (`owner/name`) as installation `id`.
    pub fn install(&self, id: u64, repositories: &[&str]) {
        self.lock()
            .installations
            .entry(id)
            .or_default()
            .extend(repositories.iter().map(|r| r.to_ascii_lowercase()));
    }

    /// A hook made by hand (not through the API), as someone might in GitHub's settings.
    /// Returns its id.
    pub fn add_hook(&self, repository: &str, mut hook: Hook) -> i64 {
        let mut state = self.lock();
        hook.id = state.next_hook_id;
        state.next_hook_id += 1;
        let id = hook.id;
        state
            .hooks
            .entry(repository.to_ascii_lowercase())
            .or_default()
            .push(hook);
        id
    }

    /// The hooks of `repository`, oldest first.
    pub fn hooks(&self, repository: &str) -> Vec<Hook> {
        self.lock()
            .hooks
            .get(&repository.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Every request so far, as `METHOD /path`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accepts until the task is aborted (cancel-safe: `accept` loses no connection when it is
/// dropped).
async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(response(respond(&state, request).await)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A status and a JSON body (`null`: none).
type Answer = (StatusCode, Value);

fn answer(status: StatusCode, body: &Value) -> Answer {
    (status, body.clone())
}

fn response((status, body): Answer) -> Response<Full<Bytes>> {
    if body.is_null() {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn message(status: StatusCode, message: &str) -> Answer {
    answer(status, &json!({ "message": message }))
}

fn not_found() -> Answer {
    message(StatusCode::NOT_FOUND, "Not Found")
}

async fn respond(state: &Mutex<State>, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    lock().requests.push(format!("{} {path}", parts.method));
    if !parts.headers.contains_key(header::USER_AGENT) {
        return message(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
    };
    let credential = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::to_owned);
    let Some(credential) = credential else {
        return message(StatusCode::UNAUTHORIZED, "Requires authentication");
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut state = lock();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["repos", owner, repo, "installation"]) => {
            if let Err(refused) = state.app(&credential) {
                return refused;
            }
            let repository = format!("{owner}/{repo}").to_ascii_lowercase();
            let app_id = state.app_id;
            match state.installation_of(&repository) {
                Some(id) => answer(
                    StatusCode::OK,
                    &json!({"id": id, "app_id": app_id, "account": {"login": owner}}),
                ),
                None => not_found(),
            }
        }
        (&Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if let Err(refused) = state.app(&credential) {
                return refused;
            }
            let Some(id) = id
                .parse::<u64>()
                .ok()
                .filter(|id| state.installations.contains_key(id))
            else {
                return not_found();
            };
            let mut bytes = [0u8; 20];
            if SystemRandom::new().fill(&mut bytes).is_err() {
                return message(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
            }
            let token: String = std::iter::once("ghs_".to_owned())
                .chain(bytes.iter().map(|b| format!("{b:02x}")))
                .collect();
            let expires = now() + TOKEN_LIFETIME.as_secs() as i64;
            state.tokens.insert(token.clone(), (id, expires));
            answer(
                StatusCode::CREATED,
                &json!({"token": token, "expires_at": expires, "permissions": {"repository_hooks": "write"}}),
            )
        }
        (method, ["repos", owner, repo, "hooks", rest @ ..]) if rest.len() <= 1 => {
            let repository = format!("{owner}/{repo}").to_ascii_lowercase();
            if let Err(refused) = state.installation(&credential, &repository) {
                return refused;
            }
            let id = match rest.first().map(|id| id.parse::<i64>()) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => return not_found(),
            };
            let shown = format!("{owner}/{repo}");
            let body: Option<Value> = if body.is_empty() {
                None
            } else {
                match serde_json::from_slice(&body) {
                    Ok(value) => Some(value),
                    Err(_) => {
                        return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
                    }
                }
            };
            state.hooks_request(method, &repository, &shown, id, body.as_ref())
        }
        _ => not_found(),
    }
}

impl State {
    /// Checks the App's JWT.
    fn app(&self, jwt: &str) -> Result<(), Answer> {
        jwt::verify(jwt, self.app_id, &self.app_public_key, now())
            .map_err(|text| message(StatusCode::UNAUTHORIZED, &text))
    }

    fn installation_of(&self, repository: &str) -> Option<u64> {
        self.installations
            .iter()
            .find(|(_, repositories)| repositories.iter().any(|r| r == repository))
            .map(|(id, _)| *id)
    }

    /// Checks an installation token that reaches `repository`.
    fn installation(&self, token: &str, repository: &str) -> Result<(), Answer> {
        match self.tokens.get(token) {
            Some((id, expires)) if *expires > now() => {
                if self.installation_of(repository) == Some(*id) {
                    Ok(())
                } else {
                    Err(not_found())
                }
            }
            _ => Err(message(StatusCode::UNAUTHORIZED, "Bad credentials")),
        }
    }

    fn hooks_request(
        &mut self,
        method: &Method,
        repository: &str,
        shown: &str,
        id: Option<i64>,
        body: Option<&Value>,
    ) -> Answer {
        let base = self.base.clone();
        let next_id = self.next_hook_id;
        let hooks = self.hooks.entry(repository.to_owned()).or_default();
        let position = id.and_then(|id| hooks.iter().position(|h| h.id == id));
        match (method, id, position) {
            (&Method::GET, None, _) => answer(
                StatusCode::OK,
                &Value::Array(hooks.iter().map(|h| h.to_json(&base, shown)).collect()),
            ),
            (&Method::POST, None, _) => {
                let body = body.cloned().unwrap_or(Value::Null);
                let hook = match read_hook(&body, None) {
                    Ok(hook) => hook,
                    Err(refused) => return refused,
                };
                if hooks.iter().any(|h| h.url == hook.url) {
                    return invalid("Hook already exists on this repository");
                }
                let hook = Hook {
                    id: next_id,
                    ..hook
                };
                hooks.push(hook.clone());
                self.next_hook_id += 1;
                answer(StatusCode::CREATED, &hook.to_json(&base, shown))
            }
            (&Method::GET, Some(_), Some(i)) => {
                answer(StatusCode::OK, &hooks[i].to_json(&base, shown))
            }
            (&Method::PATCH, Some(_), Some(i)) => {
                let body = body.cloned().unwrap_or(Value::Null);
                let hook = match read_hook(&body, Some(&hooks[i])) {
                    Ok(hook) => hook,
                    Err(refused) => return refused,
                };
                if hooks
                    .iter()
                    .any(|h| h.id != hooks[i].id && h.url == hook.url)
                {
                    return invalid("Hook already exists on this repository");
                }
                hooks[i] = hook;
                answer(StatusCode::OK, &hooks[i].to_json(&base, shown))
            }
            (&Method::DELETE, Some(_), Some(i)) => {
                hooks.remove(i);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            (_, Some(_), None) => not_found(),
            _ => not_found(),
        }
    }
}

fn invalid(text: &str) -> Answer {
    answer(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"message": "Validation Failed", "errors": [{"resource": "Hook", "code": "custom", "message": text}]}),
    )
}

/// A hook from a create (`old` is `None`) or update request's body. An update's `config`
/// replaces the whole configuration, as GitHub's does (a secret left out is removed).
fn read_hook(body: &Value, old: Option<&Hook>) -> Result<Hook, Answer> {
    if !body.is_object() {
        return Err(message(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
    }
    if old.is_none() && !matches!(body.get("name"), None | Some(Value::String(_))) {
        return Err(invalid("name must be web"));
    }
    let strings = |value: &Value| -> Option<Vec<String>> {
        value
            .as_array()?
            .iter()
            .map(|e| e.as_str().map(str::to_owned))
            .collect()
    };
    let events = match body.get("events") {
        None => old.map_or_else(|| vec!["push".to_owned()], |h| h.events.clone()),
        Some(value) => strings(value).ok_or_else(|| invalid("events must be strings"))?,
    };
    let active = match body.get("active") {
        None => old.is_none_or(|h| h.active),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| invalid("active must be a boolean"))?,
    };
    let (url, content_type, secret, insecure_ssl) = match (body.get("config"), old) {
        (Some(config), _) => {
            let url = config["url"]
                .as_str()
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .ok_or_else(|| invalid("url is not a supported URL"))?;
            (
                url.to_owned(),
                config["content_type"].as_str().unwrap_or("form").to_owned(),
                config["secret"].as_str().map(str::to_owned),
                match &config["insecure_ssl"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => "0".to_owned(),
                },
            )
        }
        (None, Some(old)) => (
            old.url.clone(),
            old.content_type.clone(),
            old.secret.clone(),
            old.insecure_ssl.clone(),
        ),
        (None, None) => return Err(invalid("config is required")),
    };
    Ok(Hook {
        id: old.map_or(0, |h| h.id),
        active,
        events,
        url,
        content_type,
        secret,
        insecure_ssl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkcs1_and_pkcs8_files_hold_the_same_key_and_other_pem_another() {
        let public = public_key(APP_KEY).expect("PKCS#1");
        assert_eq!(public_key(APP_KEY_PKCS8).expect("PKCS#8"), public);
        assert_ne!(public_key(OTHER_KEY).expect("PKCS#1"), public);
        assert_eq!(public_key("not a key"), Err(KeyError));
    }
}
