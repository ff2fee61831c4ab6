//! The running side of the `identity:` configuration: keys, OpenID providers (discovered on
//! first use, retried after a failure), the bearer-token verifier, the assertion signer, and the
//! state that must outlive a configuration reload (redeemed handoff codes, revoked sessions, the
//! CLI's device logins in flight).
//!
//! Built with the snapshot; an unchanged `identity:` section keeps the previous runtime, and its
//! state always carries over. This module does no request handling: see [`crate::auth::access`] for
//! the access phase and [`crate::auth::login`] for the `/.sekisho/` endpoints.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::HeaderName;
use sekisho_identity::assertion::AssertionIssuer;
use sekisho_identity::bearer::BearerVerifier;
use sekisho_identity::http::{HttpClient, HttpClientConfig};
use sekisho_identity::oidc::{Provider, RawIdToken};
use sekisho_identity::signing::SigningKeys;
use sekisho_identity::user_token::UserTokens;
use tokio::sync::OnceCell;

use crate::auth::cli_login::device::DeviceGrants;
use crate::auth::once::{OneTime, SpendError};
use crate::auth::revocation::Revocations;
use crate::auth::session::{SessionKeys, unix_now};
use crate::auth::who::Who;
use crate::config::{Config, IdentityConfig};
use crate::every::Every;
use crate::policy::Subject;

/// Why the identity runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot load the session keys from {path}")]
    SessionKeys {
        path: PathBuf,
        #[source]
        source: crate::auth::session::KeyError,
    },
    #[error("cannot generate session keys")]
    GenerateSessionKeys(#[source] crate::auth::session::KeyError),
    #[error("cannot load the signing keys from {path}")]
    SigningKeys {
        path: PathBuf,
        #[source]
        source: sekisho_identity::signing::SigningKeyError,
    },
    #[error("cannot generate signing keys")]
    GenerateSigningKeys(#[source] sekisho_identity::signing::SigningKeyError),
    #[error("cannot build the HTTP client for OpenID providers")]
    HttpClient(#[source] sekisho_identity::http::HttpClientBuildError),
    #[error("`{0}` in identity.strip_headers is not a header name")]
    StripHeader(String),
    #[error("identity.providers[{index}].client_secret_file")]
    ClientSecret {
        index: usize,
        #[source]
        source: sekisho_identity::oidc::DiscoveryError,
    },
}

/// Everything login, sessions and tokens need at run time.
pub(crate) struct IdentityRuntime {
    pub config: IdentityConfig,
    /// Lowercase.
    pub auth_host: String,
    pub session_keys: Arc<SessionKeys>,
    pub signing_keys: Arc<SigningKeys>,
    pub assertions: AssertionIssuer,
    /// Sekisho's own short-lived user tokens (what the `sekisho` CLI holds).
    pub user_tokens: UserTokens,
    pub providers: Vec<ProviderSlot>,
    bearer: OnceCell<BearerVerifier>,
    http: HttpClient,
    /// Extra identity headers to strip (`identity.strip_headers`).
    pub strip_headers: Vec<HeaderName>,
    /// Groups some policy names: kept when a session's groups must be trimmed to fit a cookie.
    policy_groups: HashSet<String>,
    pub jwks_json: bytes::Bytes,
    pub state: Arc<IdentityState>,
    /// Opened session cookies by value (sealed per host, so a value names one session on one
    /// host), with their header values formatted. Only cookies that opened are inserted, so a
    /// client cannot choose the keys; foldhash (seeded per process) instead of SipHash.
    sessions: DashMap<Box<str>, Arc<Who>, foldhash::fast::RandomState>,
    /// When the cookies of sessions that have ended are swept from `sessions` (each login, and
    /// each minute's refresh of a cookie, adds a value).
    sweep_sessions: Every<60>,
}

/// Cached session cookies at most; the cache starts over when full.
const MAX_CACHED_SESSIONS: usize = 50_000;

impl std::fmt::Debug for IdentityRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRuntime")
            .field("auth_host", &self.auth_host)
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

/// One configured OpenID provider, discovered when first needed.
pub(crate) struct ProviderSlot {
    pub name: String,
    pub display_name: String,
    config: sekisho_identity::oidc::ProviderConfig,
    provider: OnceCell<Provider>,
}

impl ProviderSlot {
    /// The discovered provider; discovery runs on the first call and again after a failure.
    pub(crate) async fn get(
        &self,
        http: &HttpClient,
    ) -> Result<&Provider, sekisho_identity::oidc::DiscoveryError> {
        self.provider
            .get_or_try_init(|| Provider::discover(self.config.clone(), http))
            .await
    }

    /// The provider if discovery already succeeded.
    pub(crate) fn discovered(&self) -> Option<&Provider> {
        self.provider.get()
    }

    /// The configured issuer (known before discovery).
    pub(crate) fn issuer(&self) -> &str {
        &self.config.issuer
    }
}

/// State that survives configuration reloads.
pub(crate) struct IdentityState {
    /// Handoff codes and the CLI's browser codes already used (each works once, on every
    /// replica when they share state).
    pub replay: OneTime,
    /// The CLI's device logins waiting for approval (`crate::auth::cli_login`).
    pub device_grants: DeviceGrants,
    /// Back-channel logout tokens already acted on, by a hash of `issuer \0 jti`, until they
    /// could no longer verify (each works once).
    pub logout_tokens: OneTime,
    /// Sessions ended before they expire, here and on the other replicas.
    pub revocations: Revocations,
    /// Our session id → the ID token and its expiry, for `id_token_hint` at logout.
    id_tokens: DashMap<[u8; 16], (RawIdToken, u64)>,
    /// When the ID tokens of sessions that have expired are swept (so that they are the live
    /// sessions', not every session's since the start or the last time they filled).
    sweep_id_tokens: Every<60>,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState")
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

/// Bounds on the in-memory maps: beyond these, expired entries are swept first, then new
/// entries are refused.
const MAX_REMEMBERED: usize = 100_000;
/// Device logins waiting for approval at most (each lives 10 minutes).
const MAX_DEVICE_GRANTS: usize = 10_000;

impl IdentityState {
    fn new() -> Self {
        Self {
            replay: OneTime::new(MAX_REMEMBERED),
            device_grants: DeviceGrants::new(MAX_DEVICE_GRANTS),
            logout_tokens: OneTime::new(MAX_REMEMBERED),
            revocations: Revocations::default(),
            id_tokens: DashMap::new(),
            sweep_id_tokens: Every::default(),
        }
    }

    /// Marks the back-channel logout token `jti` of `issuer` used until `until` (Unix
    /// seconds; when the token can no longer verify). [`SpendError::AlreadyUsed`] for a
    /// replay; [`SpendError::Full`] when too many tokens are remembered to take one more.
    pub(crate) async fn first_use_of_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        until: u64,
        now: u64,
    ) -> Result<(), SpendError> {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(issuer.as_bytes());
        hash.update(&[0]);
        hash.update(jti.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&hash.finish().as_ref()[..16]);
        self.logout_tokens.spend(key, until, now).await
    }

    /// Remembers what logout needs later: the ID token (this replica's only: a logout on
    /// another replica asks the provider without `id_token_hint`).
    pub(crate) fn remember_login(&self, id: [u8; 16], id_token: RawIdToken, expires_at: u64) {
        let now = unix_now();
        if self.sweep_id_tokens.due(now) || self.id_tokens.len() >= MAX_REMEMBERED {
            self.id_tokens.retain(|_, (_, until)| *until > now);
        }
        if self.id_tokens.len() < MAX_REMEMBERED {
            self.id_tokens.insert(id, (id_token, expires_at));
        }
    }

    /// Takes the ID token a session logged in with, if this proxy still has it (for the
    /// provider's logout, once).
    pub(crate) fn take_id_token(&self, id: &[u8; 16]) -> Option<RawIdToken> {
        self.id_tokens.remove(id).map(|(_, entry)| entry.0)
    }
}

impl IdentityRuntime {
    /// Builds the runtime for `config`, reusing `previous` where nothing changed.
    pub(crate) fn build(
        config: &Config,
        previous: Option<&Arc<IdentityRuntime>>,
    ) -> Result<Option<Arc<IdentityRuntime>>, IdentityError> {
        let Some(identity) = &config.identity else {
            return Ok(None);
        };
        let policy_groups = policy_groups(config);
        if let Some(previous) = previous
            && previous.config == *identity
            && previous.policy_groups == policy_groups
        {
            return Ok(Some(previous.clone()));
        }
        // A missing or empty secret would otherwise show only at the first login, as "the
        // provider cannot be reached".
        for (index, provider) in identity.providers.iter().enumerate() {
            sekisho_identity::oidc::read_client_secret(&provider.client_secret_file)
                .map_err(|source| IdentityError::ClientSecret { index, source })?;
        }
        let session_keys = match &identity.session_keys_file {
            Some(path) => {
                Arc::new(
                    SessionKeys::load(path).map_err(|source| IdentityError::SessionKeys {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => match previous.filter(|p| p.config.session_keys_file.is_none()) {
                Some(previous) => previous.session_keys.clone(),
                None => {
                    tracing::warn!(
                        "identity.session_keys_file is not set: using a key generated now, so \
                         sessions end when the proxy stops and replicas do not share them"
                    );
                    Arc::new(SessionKeys::generate().map_err(IdentityError::GenerateSessionKeys)?)
                }
            },
        };
        let signing_keys = match &identity.signing_keys_file {
            Some(path) => {
                Arc::new(
                    SigningKeys::load(path).map_err(|source| IdentityError::SigningKeys {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => match previous.filter(|p| p.config.signing_keys_file.is_none()) {
                Some(previous) => previous.signing_keys.clone(),
                None => {
                    tracing::warn!(
                        "identity.signing_keys_file is not set: assertions are signed with a \
                         key generated now; upstreams must fetch the JWKS again after a restart"
                    );
                    Arc::new(SigningKeys::generate().map_err(IdentityError::GenerateSigningKeys)?)
                }
            },
        };
        let http = HttpClient::new(&HttpClientConfig {
            allow_plain_http: identity.dangerous_allow_http_issuers,
            ..HttpClientConfig::default()
        })
        .map_err(IdentityError::HttpClient)?;
        let strip_headers = identity
            .strip_headers
            .iter()
            .map(|name| {
                // Compared with `_` read as `-` (see `crate::forward::header`).
                HeaderName::from_bytes(name.replace('_', "-").as_bytes())
                    .map_err(|_| IdentityError::StripHeader(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let auth_host = identity.auth_host.to_ascii_lowercase();
        let assertions = AssertionIssuer::new(signing_keys.clone(), format!("https://{auth_host}"));
        let user_tokens = UserTokens::new(
            signing_keys.clone(),
            format!("https://{auth_host}"),
            auth_host.clone(),
        );
        let providers = identity
            .providers
            .iter()
            .map(|config| ProviderSlot {
                name: config.name.clone(),
                display_name: config.display_name.clone(),
                config: config.clone(),
                provider: OnceCell::new(),
            })
            .collect();
        Ok(Some(Arc::new(IdentityRuntime {
            jwks_json: signing_keys.jwks_json().into(),
            config: identity.clone(),
            auth_host,
            session_keys,
            signing_keys,
            assertions,
            user_tokens,
            providers,
            bearer: OnceCell::new(),
            http,
            strip_headers,
            policy_groups,
            state: previous
                .map(|p| p.state.clone())
                .unwrap_or_else(|| Arc::new(IdentityState::new())),
            sessions: DashMap::default(),
            sweep_sessions: Every::default(),
        })))
    }

    pub(crate) fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The bearer verifier, set up (discovery) on first use; `None` when no issuer is
    /// configured or setup failed (logged; tried again on the next token).
    pub(crate) async fn bearer(&self) -> Option<&BearerVerifier> {
        if self.config.bearer_issuers.is_empty() {
            return None;
        }
        let setup = self
            .bearer
            .get_or_try_init(|| BearerVerifier::new(self.config.bearer_issuers.clone(), &self.http))
            .await;
        match setup {
            Ok(verifier) => Some(verifier),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "bearer token issuers are not reachable");
                None
            }
        }
    }

    /// The identity of a session cookie opened before on `host`. The caller checks expiry and
    /// revocation, as for a freshly opened one.
    pub(crate) fn cached_session(&self, cookie: &str, host: &str) -> Option<Arc<Who>> {
        let who = self.sessions.get(cookie)?;
        (who.session.as_ref()?.host == host).then(|| who.clone())
    }

    /// Remembers an opened session cookie; returns the identity.
    pub(crate) fn cache_session(&self, cookie: &str, who: Arc<Who>) -> Arc<Who> {
        let now = unix_now();
        if self.sweep_sessions.due(now) {
            let idle = self.idle_timeout().as_secs();
            self.sessions.retain(|_, who| {
                who.session.as_ref().is_some_and(|session| {
                    now < session.expires_at && now.saturating_sub(session.last_seen) <= idle
                })
            });
        }
        if self.sessions.len() >= MAX_CACHED_SESSIONS {
            self.sessions.clear();
        }
        self.sessions.insert(cookie.into(), who.clone());
        who
    }

    /// The slot of provider `name`.
    pub(crate) fn provider(&self, name: &str) -> Option<&ProviderSlot> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Whether a policy names `group`: such groups are kept when a cookie must be trimmed.
    pub(crate) fn group_needed(&self, group: &str) -> bool {
        self.policy_groups.contains(group)
    }

    pub(crate) fn session_lifetime(&self) -> Duration {
        self.config.session_lifetime
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.config.session_idle_timeout
    }
}

/// Every group any policy names.
fn policy_groups(config: &Config) -> HashSet<String> {
    let mut groups = HashSet::new();
    for policy in config.policies.values() {
        let rules = policy.rules.iter().flat_map(|rule| rule.allow.iter());
        for subject in policy.allow.iter().chain(rules) {
            if let Subject::Group(group) = subject {
                groups.insert(group.clone());
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://id.example";
    const T: u64 = 1_800_000_000;

    #[tokio::test]
    async fn a_logout_token_jti_works_once_per_issuer_until_the_token_could_no_longer_verify() {
        let state = IdentityState::new();
        let first_use = |issuer: &'static str, jti: &'static str, now: u64| {
            let state = &state;
            async move {
                state
                    .first_use_of_logout_token(issuer, jti, T + 60, now)
                    .await
            }
        };
        assert!(first_use(ISSUER, "j1", T).await.is_ok());
        assert!(matches!(
            first_use(ISSUER, "j1", T + 59).await,
            Err(SpendError::AlreadyUsed)
        ));
        // The same jti from another issuer is another token; so is another jti.
        assert!(first_use("https://other.example", "j1", T).await.is_ok());
        assert!(first_use(ISSUER, "j2", T).await.is_ok());
        // Issuer and jti are not simply joined.
        assert!(first_use("https://id.exampl", "e\0j1", T).await.is_ok());
        // Forgotten only once the token is too old to verify anyway.
        assert_eq!(state.logout_tokens.purge(T + 59), 0);
        assert_eq!(state.logout_tokens.purge(T + 60), 4);
    }

    #[test]
    fn a_new_login_sweeps_the_id_tokens_of_sessions_that_expired_once_a_minute() {
        let state = IdentityState::new();
        let now = unix_now();
        let token = || RawIdToken::new("t".into());
        state.remember_login([1; 16], token(), now - 1);
        state.remember_login([2; 16], token(), now + 3600);
        // Swept just now (by the first login): the expired one stays until the next sweep.
        assert_eq!(state.id_tokens.len(), 2);
        state.sweep_id_tokens.expire();
        state.remember_login([3; 16], token(), now + 3600);
        assert!(state.take_id_token(&[1; 16]).is_none());
        assert!(state.take_id_token(&[2; 16]).is_some());
        assert_eq!(state.id_tokens.len(), 1);
    }
}
