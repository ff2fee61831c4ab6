//! Logging in to a proxy and keeping the login fresh.
//!
//! A proxy host says where its auth host is (`/.sekisho/cli/config`); before the CLI sends a
//! host the tokens of an auth host, that auth host must confirm it serves the host, so no other
//! site can collect them by naming someone else's auth host. The login itself is the proxy's
//! browser login: either in a browser on this machine, which comes back to a loopback listener
//! with a one-time code (redeemed with PKCE), or in any browser with the device flow. Access
//! tokens are refreshed when they expire within a minute.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::browser::{self, Env, Flow};
use crate::cache::Cache;
use crate::device::DeviceError;
use crate::grant::{self, AUTHORIZE_PATH, AuthServer, GrantError, Tokens, unix_now};
use crate::loopback::{self, Loopback, LoopbackError};
use crate::net::{Net, NetError, Origin};
use crate::secret::Secret;

/// An access token that expires sooner than this is refreshed first.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot find out where {proxy} logs in")]
    Discover {
        proxy: String,
        #[source]
        source: GrantError,
    },
    #[error("{auth} does not confirm that it serves {proxy}, so its tokens are not sent there")]
    NotServed { proxy: String, auth: String },
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the proxy did not complete the login")]
    Grant(#[source] GrantError),
    #[error("the operating system's random number generator failed")]
    Random,
}

impl LoginError {
    /// The failure to talk to the proxy (as opposed to a refusal), when that is what it was.
    pub fn net_error(&self) -> Option<&NetError> {
        match self {
            Self::Discover { source, .. }
            | Self::Grant(source)
            | Self::Device(DeviceError::Grant(source)) => source.net_error(),
            _ => None,
        }
    }
}

/// `bytes` random bytes from the OS CSPRNG, base64url.
fn random_text(bytes: usize) -> Result<Secret, LoginError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| LoginError::Random)?;
    Ok(Secret::new(URL_SAFE_NO_PAD.encode(buf)))
}

/// The PKCE S256 challenge of `verifier`.
pub fn s256(verifier: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.expose().as_bytes(),
    ))
}

/// Where `proxy` logs in: its auth origin, confirmed by the auth host when it is another host.
pub async fn discover(net: &Net, proxy: &Origin) -> Result<Origin, LoginError> {
    let config = grant::config(net, proxy, None)
        .await
        .map_err(|source| LoginError::Discover {
            proxy: proxy.to_string(),
            source,
        })?;
    confirm(net, proxy, &config.auth_origin).await?;
    Ok(config.auth_origin)
}

/// Asks `auth` whether it serves `proxy` (nothing to ask when they are the same host).
pub async fn confirm(net: &Net, proxy: &Origin, auth: &Origin) -> Result<(), LoginError> {
    if proxy.host == auth.host {
        return Ok(());
    }
    let config = grant::config(net, auth, Some(&proxy.host))
        .await
        .map_err(|source| LoginError::Discover {
            proxy: proxy.to_string(),
            source,
        })?;
    if config.serves_host == Some(true) {
        Ok(())
    } else {
        Err(LoginError::NotServed {
            proxy: proxy.to_string(),
            auth: auth.to_string(),
        })
    }
}

/// The authorize URL for the browser.
fn authorize_url(auth: &Origin, redirect_uri: &str, state: &Secret, challenge: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state.expose())
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    format!("{auth}{AUTHORIZE_PATH}?{query}")
}

/// Logs in at the auth host `auth`; every message goes to stderr.
pub async fn run(net: &Net, auth: &Origin, flow: Flow, env: Env<'_>) -> Result<Tokens, LoginError> {
    let server = AuthServer { net, origin: auth };
    match flow {
        Flow::Device => Ok(crate::device::run(server).await?),
        Flow::Browser { open } => {
            let loopback = Loopback::bind().await?;
            let redirect_uri = loopback.redirect_uri();
            let verifier = random_text(32)?;
            let state = random_text(16)?;
            let url = authorize_url(auth, &redirect_uri, &state, &s256(&verifier));
            if open {
                eprintln!(
                    "Opening {url} in your browser (if it does not open, visit the URL yourself)"
                );
                browser::open(&url, env);
            } else {
                eprintln!("To log in, visit {url}");
            }
            let code = loopback.wait(&state, loopback::WAIT).await?;
            server
                .exchange_code(&code, &verifier, &redirect_uri, unix_now())
                .await
                .map_err(LoginError::Grant)
        }
    }
}

/// An access token for the login at `auth` that is good for at least [`REFRESH_MARGIN`],
/// refreshing it when needed (the cache is updated; the caller saves it). `None` when there is
/// no usable login: none cached, the refresh token expired, or the proxy refused it
/// (`invalid_grant`, and the login is dropped). `rejected` is a token the proxy just refused:
/// it is refreshed even if it looks fresh.
pub async fn fresh_token(
    net: &Net,
    cache: &mut Cache,
    auth: &Origin,
    rejected: Option<&Secret>,
) -> Result<Option<Secret>, GrantError> {
    let now = unix_now();
    let Some(tokens) = cache.login(auth).cloned() else {
        return Ok(None);
    };
    let margin = REFRESH_MARGIN.as_secs();
    if Some(&tokens.access_token) != rejected && tokens.access_expires_at > now + margin {
        return Ok(Some(tokens.access_token));
    }
    if tokens.refresh_expires_at <= now {
        cache.remove_login(auth);
        return Ok(None);
    }
    match (AuthServer { net, origin: auth })
        .refresh(&tokens.refresh_token, now)
        .await
    {
        Ok(tokens) => {
            let access = tokens.access_token.clone();
            cache.set_login(auth, tokens);
            Ok(Some(access))
        }
        Err(error) if error.oauth_error() == Some("invalid_grant") => {
            cache.remove_login(auth);
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_the_rfc_7636_s256_of_the_verifier() {
        let verifier = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            s256(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_and_states_are_fresh_random_url_safe_text() {
        let a = random_text(32).unwrap();
        let b = random_text(32).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn the_authorize_url_carries_the_loopback_redirect_state_and_challenge() {
        let auth = Origin::parse("auth.example.com:8443").unwrap();
        let url = authorize_url(
            &auth,
            "http://127.0.0.1:5000/callback",
            &Secret::new("st"),
            "ch",
        );
        let url = url::Url::parse(&url).unwrap();
        assert_eq!(
            url.origin().ascii_serialization(),
            "https://auth.example.com:8443"
        );
        assert_eq!(url.path(), AUTHORIZE_PATH);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        for (name, value) in [
            ("redirect_uri", "http://127.0.0.1:5000/callback"),
            ("state", "st"),
            ("code_challenge", "ch"),
            ("code_challenge_method", "S256"),
        ] {
            assert!(
                pairs.contains(&(name.to_owned(), value.to_owned())),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_fresh_cached_token_is_used_without_asking_and_a_rejected_one_is_not() {
        let net = Net::new(None, Some("127.0.0.1:9".parse().unwrap())).unwrap();
        let auth = Origin::parse("auth.example.com").unwrap();
        let mut cache = Cache::new();
        let now = unix_now();
        let tokens = Tokens {
            access_token: Secret::new("a"),
            access_expires_at: now + 600,
            refresh_token: Secret::new("r"),
            refresh_expires_at: now + 3600,
            user: "alice".into(),
        };
        cache.set_login(&auth, tokens.clone());
        let token = fresh_token(&net, &mut cache, &auth, None).await.unwrap();
        assert_eq!(token, Some(Secret::new("a")));
        // Rejected: a refresh is tried, and 127.0.0.1:9 does not answer.
        let error = fresh_token(&net, &mut cache, &auth, Some(&Secret::new("a")))
            .await
            .unwrap_err();
        assert!(error.net_error().is_some(), "{error}");
        assert!(
            cache.login(&auth).is_some(),
            "a network failure keeps the login"
        );
        // A login whose refresh token expired is dropped without asking.
        cache.set_login(
            &auth,
            Tokens {
                access_expires_at: now + 30,
                refresh_expires_at: now,
                ..tokens
            },
        );
        assert_eq!(
            fresh_token(&net, &mut cache, &auth, None).await.unwrap(),
            None
        );
        assert!(cache.login(&auth).is_none());
    }
}
