//! The proxy's side of the login, as the CLI calls it: where the auth host is
//! (`/.sekisho/cli/config`), and the token endpoint's grants (authorization code with PKCE,
//! refresh token, device code), the device start and the revocation. Answers follow RFC 6749
//! §5: a token answer, or `{"error", "error_description"}`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::net::{Net, NetError, Origin};
use crate::secret::{Secret, printable};

pub const CONFIG_PATH: &str = "/.sekisho/cli/config";
pub const AUTHORIZE_PATH: &str = "/.sekisho/cli/authorize";
pub const TOKEN_PATH: &str = "/.sekisho/cli/token";
pub const DEVICE_PATH: &str = "/.sekisho/cli/device";
pub const REVOKE_PATH: &str = "/.sekisho/cli/revoke";
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What a login gives and the cache keeps. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: Secret,
    pub access_expires_at: u64,
    pub refresh_token: Secret,
    pub refresh_expires_at: u64,
    /// Who the tokens are for (email, else subject).
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Net(#[from] NetError),
    /// An RFC 6749 error answer.
    #[error("the proxy refused ({error}): {description}")]
    Refused { error: String, description: String },
    #[error("{origin} answered {status} to {path}; is it a Sekisho proxy with a login?")]
    Unexpected {
        origin: String,
        path: &'static str,
        status: StatusCode,
    },
    #[error("{origin}'s answer to {path} is not what a Sekisho proxy sends")]
    BadAnswer {
        origin: String,
        path: &'static str,
        #[source]
        source: Option<serde_json::Error>,
    },
}

impl GrantError {
    /// The failure to talk to the proxy, when that is what it was.
    pub fn net_error(&self) -> Option<&NetError> {
        match self {
            Self::Net(error) => Some(error),
            _ => None,
        }
    }

    /// The RFC 6749 error code, when the proxy gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What `/.sekisho/cli/config` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub auth_origin: Origin,
    /// Whether the proxy serves the host that was asked about.
    pub serves_host: Option<bool>,
}

/// The answer to a device start (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceStart {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: u64,
}

#[derive(Deserialize)]
struct ConfigAnswer {
    auth_origin: String,
    #[serde(default)]
    serves_host: Option<bool>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Secret,
    token_type: String,
    expires_in: u64,
    refresh_token: Secret,
    refresh_expires_in: u64,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: Secret,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default = "default_interval")]
    interval: u64,
}

fn default_interval() -> u64 {
    5
}

/// `GET /.sekisho/cli/config` on `origin`; with `host`, also whether it serves that host.
pub async fn config(
    net: &Net,
    origin: &Origin,
    host: Option<&str>,
) -> Result<ProxyConfig, GrantError> {
    let mut path = CONFIG_PATH.to_owned();
    if let Some(host) = host {
        let host: String = url::form_urlencoded::byte_serialize(host.as_bytes()).collect();
        path.push_str(&format!("?host={host}"));
    }
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .expect("a config request is well formed");
    let response = net.exchange(origin, req).await?;
    let bad = |source| GrantError::BadAnswer {
        origin: origin.to_string(),
        path: CONFIG_PATH,
        source,
    };
    if response.status() != StatusCode::OK {
        return Err(GrantError::Unexpected {
            origin: origin.to_string(),
            path: CONFIG_PATH,
            status: response.status(),
        });
    }
    let answer: ConfigAnswer = serde_json::from_slice(response.body()).map_err(|e| bad(Some(e)))?;
    let auth_origin = Origin::parse(&answer.auth_origin).map_err(|_| bad(None))?;
    Ok(ProxyConfig {
        auth_origin,
        serves_host: answer.serves_host,
    })
}

/// The auth host's token, device and revocation endpoints.
#[derive(Debug, Clone, Copy)]
pub struct AuthServer<'a> {
    pub net: &'a Net,
    pub origin: &'a Origin,
}

impl AuthServer<'_> {
    async fn post_form(
        &self,
        path: &'static str,
        fields: &[(&str, &str)],
    ) -> Result<Response<Bytes>, GrantError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a form request is well formed");
        Ok(self.net.exchange(self.origin, req).await?)
    }

    /// An RFC 6749 error answer, or the unexpected status.
    fn refusal(&self, path: &'static str, response: &Response<Bytes>) -> GrantError {
        match serde_json::from_slice::<ErrorAnswer>(response.body()) {
            Ok(answer)
                if response.status().is_client_error() || response.status().is_server_error() =>
            {
                GrantError::Refused {
                    error: printable(&answer.error, 64),
                    description: printable(&answer.error_description, 300),
                }
            }
            _ => GrantError::Unexpected {
                origin: self.origin.to_string(),
                path,
                status: response.status(),
            },
        }
    }

    async fn token_request(&self, fields: &[(&str, &str)], now: u64) -> Result<Tokens, GrantError> {
        let response = self.post_form(TOKEN_PATH, fields).await?;
        if response.status() != StatusCode::OK {
            return Err(self.refusal(TOKEN_PATH, &response));
        }
        let bad = |source| GrantError::BadAnswer {
            origin: self.origin.to_string(),
            path: TOKEN_PATH,
            source,
        };
        let answer: TokenAnswer =
            serde_json::from_slice(response.body()).map_err(|e| bad(Some(e)))?;
        if !answer.token_type.eq_ignore_ascii_case("bearer")
            || !answer.access_token.is_token_text()
            || !answer.refresh_token.is_token_text()
        {
            return Err(bad(None));
        }
        Ok(Tokens {
            access_token: answer.access_token,
            access_expires_at: now.saturating_add(answer.expires_in),
            refresh_token: answer.refresh_token,
            refresh_expires_at: now.saturating_add(answer.refresh_expires_in),
            user: printable(&answer.user, 255),
        })
    }

    /// Redeems an authorization code (PKCE).
    pub async fn exchange_code(
        &self,
        code: &Secret,
        verifier: &Secret,
        redirect_uri: &str,
        now: u64,
    ) -> Result<Tokens, GrantError> {
        self.token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", code.expose()),
                ("code_verifier", verifier.expose()),
                ("redirect_uri", redirect_uri),
            ],
            now,
        )
        .await
    }

    /// A new access token for a refresh token.
    pub async fn refresh(&self, refresh_token: &Secret, now: u64) -> Result<Tokens, GrantError> {
        self.token_request(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
            ],
            now,
        )
        .await
    }

    /// Asks whether the device login was approved.
    pub async fn poll_device(&self, device_code: &Secret, now: u64) -> Result<Tokens, GrantError> {
        self.token_request(
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code.expose()),
            ],
            now,
        )
        .await
    }

    /// Starts a device login.
    pub async fn start_device(&self) -> Result<DeviceStart, GrantError> {
        let response = self.post_form(DEVICE_PATH, &[]).await?;
        if response.status() != StatusCode::OK {
            return Err(self.refusal(DEVICE_PATH, &response));
        }
        let bad = |source| GrantError::BadAnswer {
            origin: self.origin.to_string(),
            path: DEVICE_PATH,
            source,
        };
        let answer: DeviceAnswer =
            serde_json::from_slice(response.body()).map_err(|e| bad(Some(e)))?;
        if !answer.device_code.is_token_text() {
            return Err(bad(None));
        }
        Ok(DeviceStart {
            device_code: answer.device_code,
            user_code: printable(&answer.user_code, 32),
            verification_uri: printable(&answer.verification_uri, 512),
            verification_uri_complete: answer
                .verification_uri_complete
                .map(|uri| printable(&uri, 600)),
            expires_in: answer.expires_in,
            interval: answer.interval,
        })
    }

    /// Revokes a refresh token (and so its session).
    pub async fn revoke(&self, refresh_token: &Secret) -> Result<(), GrantError> {
        let response = self
            .post_form(REVOKE_PATH, &[("token", refresh_token.expose())])
            .await?;
        if response.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(self.refusal(REVOKE_PATH, &response))
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
