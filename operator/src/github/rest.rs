//! The few calls of GitHub's REST API the controller makes, as a GitHub App: find the
//! installation that holds a repository and get its token (with the App's JWT), then list,
//! create, update and delete the repository's webhooks (with the installation's token).
//!
//! Requests go through `sekisho-identity`'s HTTP client (hyper-util's legacy client with
//! hyper-rustls and the system's roots, a deadline and a response size limit). Plain `http`
//! is only for a loopback API ([`ApiUrl::parse`]), which tests use.

use std::fmt;
use std::net::IpAddr;

use http::{Method, StatusCode, Uri, header};
use sekisho_identity::http::{HttpClient, HttpError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::app::Jwt;
use super::hook::{RemoteHook, Wanted};

/// GitHub refuses requests without a User-Agent.
const USER_AGENT: &str = "sekisho-operator";
const ACCEPT: &str = "application/vnd.github+json";
const API_VERSION: &str = "2022-11-28";
/// GitHub's largest page.
const PER_PAGE: u32 = 100;

/// The base URL of a GitHub REST API, without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiUrl(String);

/// Why a GitHubWebhook's `apiUrl` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.apiUrl `{url}` {why}")]
pub(crate) struct ApiUrlError {
    url: String,
    why: &'static str,
}

impl ApiUrl {
    /// An `https` URL, or an `http` one whose host is a loopback address or `localhost`; no
    /// user, query or fragment.
    pub(crate) fn parse(url: &str) -> Result<Self, ApiUrlError> {
        let refuse = |why| ApiUrlError {
            url: url.to_owned(),
            why,
        };
        let base = url.trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|_| refuse("is not a URL"))?;
        let host = uri.host().ok_or_else(|| refuse("has no host"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(refuse("carries a user name"));
        }
        if uri.query().is_some() || base.contains('#') {
            return Err(refuse("has a query or a fragment"));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let ip = host.trim_start_matches('[').trim_end_matches(']');
                let loopback =
                    host == "localhost" || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(refuse(
                        "is plain http to a host that is not loopback: use https",
                    ));
                }
            }
            _ => return Err(refuse("is neither https nor http")),
        }
        Ok(Self(base.to_owned()))
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An installation's access token. `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A call that did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// GitHub answered with an error status; `message` is GitHub's own words.
    #[error("GitHub answered {status} to {method} {path}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("cannot reach GitHub at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("GitHub's answer to {method} {path} is not what its API documents")]
    Unexpected {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CallError {
    /// The status GitHub answered, if it answered.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A GitHub API, as one App.
#[derive(Debug, Clone)]
pub(crate) struct GitHub {
    http: HttpClient,
    base: ApiUrl,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
}

impl GitHub {
    pub(crate) fn new(http: HttpClient, base: ApiUrl) -> Self {
        Self { http, base }
    }

    /// The installation of the App that holds `repository`; `None` when GitHub says there
    /// is none (404).
    pub(crate) async fn installation(
        &self,
        repository: &str,
        jwt: &Jwt,
    ) -> Result<Option<u64>, CallError> {
        let path = format!("/repos/{repository}/installation");
        match self
            .call::<Installation>(Method::GET, &path, &jwt.0, None)
            .await
        {
            Ok(installation) => Ok(installation.map(|i| i.id)),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A new access token of installation `id`.
    pub(crate) async fn token(&self, id: u64, jwt: &Jwt) -> Result<Token, CallError> {
        let path = format!("/app/installations/{id}/access_tokens");
        let token = self
            .call::<AccessToken>(Method::POST, &path, &jwt.0, Some(json!({})))
            .await?;
        Ok(Token(token.map(|t| t.token).unwrap_or_default()))
    }

    /// The repository's webhooks (the first 100: GitHub allows 20 per event).
    pub(crate) async fn hooks(
        &self,
        repository: &str,
        token: &Token,
    ) -> Result<Vec<RemoteHook>, CallError> {
        let path = format!("/repos/{repository}/hooks?per_page={PER_PAGE}");
        Ok(self
            .call::<Vec<RemoteHook>>(Method::GET, &path, &token.0, None)
            .await?
            .unwrap_or_default())
    }

    /// Creates the webhook; its id.
    pub(crate) async fn create(
        &self,
        repository: &str,
        token: &Token,
        wanted: &Wanted,
    ) -> Result<i64, CallError> {
        let path = format!("/repos/{repository}/hooks");
        let mut body = wanted.body();
        body["name"] = json!("web");
        let hook = self
            .call::<RemoteHook>(Method::POST, &path, &token.0, Some(body))
            .await?;
        Ok(hook.map_or(0, |h| h.id))
    }

    /// Makes webhook `id` what `wanted` says (its whole configuration, secret included).
    pub(crate) async fn update(
        &self,
        repository: &str,
        token: &Token,
        id: i64,
        wanted: &Wanted,
    ) -> Result<(), CallError> {
        let path = format!("/repos/{repository}/hooks/{id}");
        self.call::<Value>(Method::PATCH, &path, &token.0, Some(wanted.body()))
            .await?;
        Ok(())
    }

    /// Deletes webhook `id`; `false` when it was already gone (404).
    pub(crate) async fn delete(
        &self,
        repository: &str,
        token: &Token,
        id: i64,
    ) -> Result<bool, CallError> {
        let path = format!("/repos/{repository}/hooks/{id}");
        match self
            .call::<Value>(Method::DELETE, &path, &token.0, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// One request; the answer's JSON (`None` for an empty body) or the error GitHub gave.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        credential: &str,
        body: Option<Value>,
    ) -> Result<Option<T>, CallError> {
        let url = format!("{}{path}", self.base);
        let shown_path = path.split('?').next().unwrap_or(path).to_owned();
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, ACCEPT)
            .header("x-github-api-version", API_VERSION)
            .header(header::AUTHORIZATION, format!("Bearer {credential}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let request = request.body(body).map_err(|_| CallError::Status {
            // Only a path GitHub would not serve either makes a request that cannot be built.
            method: method.clone(),
            path: shown_path.clone(),
            status: StatusCode::BAD_REQUEST,
            message: "the request cannot be built".to_owned(),
        })?;
        let response =
            self.http
                .execute(request)
                .await
                .map_err(|source| CallError::Unreachable {
                    url: self.base.to_string(),
                    source,
                })?;
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(CallError::Status {
                method,
                path: shown_path,
                status,
                message: message.chars().take(200).collect(),
            });
        }
        if body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| CallError::Unexpected {
                method,
                path: shown_path,
                source,
            })
    }
}

/// Whether `repository` is `owner/name` of the characters GitHub allows, so that it can go
/// into a URL's path as it is.
pub(crate) fn is_repository(repository: &str) -> bool {
    let Some((owner, name)) = repository.split_once('/') else {
        return false;
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !owner.is_empty()
        && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_to_loopback_are_api_urls() {
        for good in [
            "https://api.github.com",
            "https://github.example.com/api/v3/",
            "http://127.0.0.1:8080",
            "http://[::1]:80",
            "http://localhost:3000",
        ] {
            assert!(ApiUrl::parse(good).is_ok(), "{good}");
        }
        assert_eq!(
            ApiUrl::parse("https://github.example.com/api/v3/")
                .expect("an API")
                .to_string(),
            "https://github.example.com/api/v3"
        );
        for bad in [
            "http://api.github.com",
            "http://10.0.0.1",
            "ftp://api.github.com",
            "https://user@api.github.com",
            "https://api.github.com?x=1",
            "api.github.com",
        ] {
            assert!(ApiUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repositories_that_could_change_the_path_are_refused() {
        assert!(is_repository("sekisho/sekisho"));
        assert!(is_repository("a-b/c.d_e"));
        for bad in [
            "a", "a/", "/b", "a/b/c", "a/..", "a/.", "a/b?x", "a/b#", "a b/c",
        ] {
            assert!(!is_repository(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_not_shown_by_debug() {
        assert_eq!(
            format!("{:?}", Token("ghs_secret".into())),
            "Token(<redacted>)"
        );
    }
}
