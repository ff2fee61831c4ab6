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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::auth::session::{ReplayError, ReplayGuard, SessionKeys, unix_now};
use crate::auth::who::Who;
use crate::config::{Config, IdentityConfig};
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
    pub replay: ReplayGuard,
    /// The CLI's device logins waiting for approval (`crate::auth::cli_login`).
    pub device_grants: DeviceGrants,
    /// Back-channel logout tokens already acted on, by a hash of `issuer \0 jti`, until they
    /// could no longer verify (each works once).
    logout_tokens: ReplayGuard,
    /// Session ids ended by logout, until the session would have expired anyway.
    revoked_sessions: DashMap<[u8; 16], u64, foldhash::fast::RandomState>,
    /// `issuer \0 subject` → the last back-channel logout of every session of that subject.
    revoked_subjects: DashMap<String, SubjectRevocation>,
    /// Whether `revoked_subjects` has any entry (they are never removed): asked on every
    /// request, where `DashMap::is_empty` would lock every shard.
    any_subject_revoked: AtomicBool,
    /// The provider's session id (`sid`) → our session ids, for back-channel logout by `sid`.
    provider_sessions: DashMap<String, Vec<([u8; 16], u64)>>,
    /// Our session id → the ID token and its expiry, for `id_token_hint` at logout.
    id_tokens: DashMap<[u8; 16], (RawIdToken, u64)>,
    /// When (Unix seconds) the login maps were last swept of expired sessions.
    logins_swept_at: AtomicU64,
}

/// How often, at most, a new login sweeps the login maps of sessions that have expired (so that
/// they hold the live sessions, not every session since the start or the last time they filled).
const SWEEP_LOGINS_EVERY_SECS: u64 = 60;

/// A back-channel logout of every session of one subject: the sessions that began before it
/// are over, the ones that began after it are not.
///
/// A session record carries its issue time in whole seconds, so the second of the logout alone
/// cannot order it against a session issued in that same second. Sessions begin on this proxy
/// (the login callback), so the proxy notes the ones that begin after the logout while the
/// record's second is not yet past it ([`IdentityState::session_started`]); those stay good.
/// Only logins within that second (or while the clock is behind it) are noted.
#[derive(Debug)]
struct SubjectRevocation {
    /// Unix second of the logout: sessions issued up to and including it are over…
    at: u64,
    /// …except these, which began after the logout.
    started_after: Vec<[u8; 16]>,
}

impl SubjectRevocation {
    fn ends(&self, id: &[u8; 16], issued_at: u64) -> bool {
        issued_at <= self.at && !self.started_after.contains(id)
    }
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState")
            .field("revoked_sessions", &self.revoked_sessions.len())
            .finish_non_exhaustive()
    }
}

/// Bounds on the in-memory maps: beyond these, expired entries are swept first, then new
/// entries are refused (revocations are never refused: see [`IdentityState::revoke_session`]).
const MAX_REMEMBERED: usize = 100_000;
/// Device logins waiting for approval at most (each lives 10 minutes).
const MAX_DEVICE_GRANTS: usize = 10_000;

impl IdentityState {
    fn new() -> Self {
        Self {
            replay: ReplayGuard::new(MAX_REMEMBERED),
            device_grants: DeviceGrants::new(MAX_DEVICE_GRANTS),
            logout_tokens: ReplayGuard::new(MAX_REMEMBERED),
            revoked_sessions: DashMap::default(),
            revoked_subjects: DashMap::new(),
            any_subject_revoked: AtomicBool::new(false),
            provider_sessions: DashMap::new(),
            id_tokens: DashMap::new(),
            logins_swept_at: AtomicU64::new(0),
        }
    }

    /// Ends a session on this proxy until `expires_at`.
    pub(crate) fn revoke_session(&self, id: [u8; 16], expires_at: u64) {
        let now = unix_now();
        if self.revoked_sessions.len() >= MAX_REMEMBERED {
            self.revoked_sessions.retain(|_, until| *until > now);
        }
        self.revoked_sessions.insert(id, expires_at);
    }

    /// Marks the back-channel logout token `jti` of `issuer` used until `until` (Unix
    /// seconds; when the token can no longer verify). [`ReplayError::AlreadyUsed`] for a
    /// replay; [`ReplayError::Full`] when too many tokens are remembered to take one more.
    pub(crate) fn first_use_of_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        until: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(issuer.as_bytes());
        hash.update(&[0]);
        hash.update(jti.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&hash.finish().as_ref()[..16]);
        self.logout_tokens.redeem_nonce(key, until, now)
    }

    /// Ends every session of `subject` at `issuer` that began before now (`now` is the Unix
    /// time); sessions that begin later live.
    pub(crate) fn revoke_subject(&self, issuer: &str, subject: &str, now: u64) {
        self.revoked_subjects
            .entry(format!("{issuer}\0{subject}"))
            .and_modify(|revocation| {
                // A clock stepped back must not bring back what an earlier logout ended.
                revocation.at = revocation.at.max(now);
                revocation.started_after.clear();
            })
            .or_insert_with(|| SubjectRevocation {
                at: now,
                started_after: Vec::new(),
            });
        self.any_subject_revoked.store(true, Ordering::Release);
    }

    /// Notes a session that begins now, before its cookie is handed out, so that a logout of
    /// its subject earlier in the same second does not end it.
    pub(crate) fn session_started(
        &self,
        id: &[u8; 16],
        issuer: &str,
        subject: &str,
        issued_at: u64,
    ) {
        // Once per login, so no fast path: the entry's lock orders this against the logout.
        if let Some(mut revocation) = self
            .revoked_subjects
            .get_mut(&format!("{issuer}\0{subject}"))
            && issued_at <= revocation.at
        {
            revocation.started_after.push(*id);
        }
    }

    /// Ends the sessions that logged in with the provider session `sid`; false if none known.
    /// They stay listed (until they expire), so that a later logout naming the same `sid`
    /// ends the same sessions rather than every session of the subject.
    pub(crate) fn revoke_provider_session(&self, issuer: &str, sid: &str) -> bool {
        match self.provider_sessions.get(&format!("{issuer}\0{sid}")) {
            Some(sessions) => {
                for &(id, expires_at) in sessions.iter() {
                    self.revoke_session(id, expires_at);
                }
                true
            }
            None => false,
        }
    }

    /// Whether logout ended the session `id`.
    pub(crate) fn is_session_revoked(&self, id: &[u8; 16]) -> bool {
        self.revoked_sessions.contains_key(id)
    }

    /// Whether a session is still good as far as revocations go.
    pub(crate) fn is_revoked(
        &self,
        id: &[u8; 16],
        issuer: &str,
        subject: &str,
        issued_at: u64,
    ) -> bool {
        if self.revoked_sessions.contains_key(id) {
            return true;
        }
        if !self.any_subject_revoked.load(Ordering::Acquire) {
            return false;
        }
        self.revoked_subjects
            .get(&format!("{issuer}\0{subject}"))
            .is_some_and(|revocation| revocation.ends(id, issued_at))
    }

    /// Remembers what logout needs later: the provider's session id and the ID token.
    pub(crate) fn remember_login(
        &self,
        id: [u8; 16],
        issuer: &str,
        sid: Option<&str>,
        id_token: RawIdToken,
        expires_at: u64,
    ) {
        let now = unix_now();
        let swept_at = self.logins_swept_at.load(Ordering::Relaxed);
        let sweep = now >= swept_at + SWEEP_LOGINS_EVERY_SECS
            && self
                .logins_swept_at
                .compare_exchange(swept_at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if sweep || self.id_tokens.len() >= MAX_REMEMBERED {
            self.id_tokens.retain(|_, (_, until)| *until > now);
        }
        if self.id_tokens.len() < MAX_REMEMBERED {
            self.id_tokens.insert(id, (id_token, expires_at));
        }
        if sweep {
            self.provider_sessions.retain(|_, sessions| {
                sessions.retain(|(_, until)| *until > now);
                !sessions.is_empty()
            });
        }
        if let Some(sid) = sid {
            if self.provider_sessions.len() >= MAX_REMEMBERED {
                self.provider_sessions.retain(|_, sessions| {
                    sessions.retain(|(_, until)| *until > now);
                    !sessions.is_empty()
                });
            }
            if self.provider_sessions.len() < MAX_REMEMBERED {
                self.provider_sessions
                    .entry(format!("{issuer}\0{sid}"))
                    .or_default()
                    .push((id, expires_at));
            }
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

    #[test]
    fn a_subject_logout_ends_every_session_that_began_before_it_even_in_its_own_second() {
        let state = IdentityState::new();
        // Began before the logout: earlier seconds, and the logout's own second.
        state.session_started(&[1; 16], ISSUER, "alice", T - 100);
        state.session_started(&[2; 16], ISSUER, "alice", T);
        state.revoke_subject(ISSUER, "alice", T);
        assert!(state.is_revoked(&[1; 16], ISSUER, "alice", T - 100));
        assert!(state.is_revoked(&[2; 16], ISSUER, "alice", T));
        // Other subjects and issuers are not touched.
        assert!(!state.is_revoked(&[3; 16], ISSUER, "bob", T));
        assert!(!state.is_revoked(&[4; 16], "https://other.example", "alice", T));
    }

    #[test]
    fn a_session_that_begins_after_a_subject_logout_in_the_same_second_lives() {
        let state = IdentityState::new();
        state.revoke_subject(ISSUER, "alice", T);
        // The login completes within the same second: its record says T, like the logout.
        state.session_started(&[5; 16], ISSUER, "alice", T);
        assert!(!state.is_revoked(&[5; 16], ISSUER, "alice", T));
        // In a later second, with nothing to note.
        state.session_started(&[6; 16], ISSUER, "alice", T + 1);
        assert!(!state.is_revoked(&[6; 16], ISSUER, "alice", T + 1));
        // A cookie claiming second T that this proxy did not see begin is from before.
        assert!(state.is_revoked(&[7; 16], ISSUER, "alice", T));
    }

    #[test]
    fn a_later_logout_ends_the_sessions_an_earlier_one_let_live() {
        let state = IdentityState::new();
        state.revoke_subject(ISSUER, "alice", T);
        state.session_started(&[5; 16], ISSUER, "alice", T);
        state.session_started(&[6; 16], ISSUER, "alice", T + 1);
        state.revoke_subject(ISSUER, "alice", T + 1);
        assert!(state.is_revoked(&[5; 16], ISSUER, "alice", T));
        assert!(state.is_revoked(&[6; 16], ISSUER, "alice", T + 1));
        // With the clock stepped back, a logout still ends what the first one ended.
        state.revoke_subject(ISSUER, "alice", T - 10);
        assert!(state.is_revoked(&[6; 16], ISSUER, "alice", T + 1));
        state.session_started(&[8; 16], ISSUER, "alice", T - 9);
        assert!(!state.is_revoked(&[8; 16], ISSUER, "alice", T - 9));
    }

    #[test]
    fn a_logout_token_jti_works_once_per_issuer_until_the_token_could_no_longer_verify() {
        let state = IdentityState::new();
        assert_eq!(
            state.first_use_of_logout_token(ISSUER, "j1", T + 60, T),
            Ok(())
        );
        assert_eq!(
            state.first_use_of_logout_token(ISSUER, "j1", T + 60, T + 59),
            Err(ReplayError::AlreadyUsed)
        );
        // The same jti from another issuer is another token; so is another jti.
        assert_eq!(
            state.first_use_of_logout_token("https://other.example", "j1", T + 60, T),
            Ok(())
        );
        assert_eq!(
            state.first_use_of_logout_token(ISSUER, "j2", T + 60, T),
            Ok(())
        );
        // Issuer and jti are not simply joined.
        assert_eq!(
            state.first_use_of_logout_token("https://id.exampl", "e\0j1", T + 60, T),
            Ok(())
        );
        // Forgotten only once the token is too old to verify anyway.
        assert_eq!(state.logout_tokens.purge(T + 59), 0);
        assert_eq!(state.logout_tokens.purge(T + 60), 4);
    }

    #[test]
    fn a_second_logout_of_a_provider_session_ends_the_same_sessions_again() {
        let state = IdentityState::new();
        let token = RawIdToken::new("t".into());
        state.remember_login([1; 16], ISSUER, Some("s1"), token, T + 3600);
        assert!(state.revoke_provider_session(ISSUER, "s1"));
        assert!(state.is_session_revoked(&[1; 16]));
        // Still known: a second token for s1 need not fall back to the whole subject.
        assert!(state.revoke_provider_session(ISSUER, "s1"));
        assert!(!state.revoke_provider_session(ISSUER, "s2"));
    }

    #[test]
    fn a_new_login_sweeps_the_sessions_that_expired_once_a_minute() {
        let state = IdentityState::new();
        let now = unix_now();
        let token = || RawIdToken::new("t".into());
        state.remember_login([1; 16], ISSUER, Some("old"), token(), now - 1);
        state.remember_login([2; 16], ISSUER, Some("live"), token(), now + 3600);
        // Swept just now (by the first login): the expired one stays until the next sweep.
        assert_eq!(state.id_tokens.len(), 2);
        state.logins_swept_at.store(0, Ordering::Relaxed);
        state.remember_login([3; 16], ISSUER, Some("new"), token(), now + 3600);
        assert!(state.take_id_token(&[1; 16]).is_none());
        assert!(!state.revoke_provider_session(ISSUER, "old"));
        assert!(state.take_id_token(&[2; 16]).is_some());
        assert!(state.revoke_provider_session(ISSUER, "live"));
        assert_eq!(state.provider_sessions.len(), 2);
    }
}
