//! The signed identity assertion that the proxy sends upstream in `X-Sekisho-Assertion`.
//!
//! An ES256 JWT (header `alg` ES256, `typ` JWT, `kid`) with the claims of
//! [`AssertionClaims`]: `iss` is Sekisho's auth host URL, `aud` the route's host, so an
//! assertion made for one service is refused by another. It lives a few minutes
//! ([`DEFAULT_LIFETIME`]); the proxy signs it once per (session, audience) and sends the same
//! text until less than a quarter of its lifetime is left, so a request costs a map lookup,
//! not a signature.
//!
//! # Verifying upstream
//!
//! Fetch `https://<auth host>/.well-known/sekisho/jwks.json`, cache it by `kid` (fetch it again
//! when a token names a `kid` you do not know), and check the header with any JWT library. Fix
//! the algorithm to ES256 and the audience to your own host; never take either from the token.
//! With `jsonwebtoken`:
//!
//! ```
//! use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
//! # use std::sync::Arc;
//! # use sekisho_identity::{assertion::AssertionIssuer, signing::{Identity, SigningKeys}};
//! # let keys = Arc::new(SigningKeys::generate()?);
//! # let issuer = AssertionIssuer::new(keys.clone(), "https://auth.example.com");
//! # let groups = vec!["staff".to_owned()];
//! # let who = Identity { subject: "ada", email: "ada@example.com", groups: &groups };
//! # let now = jsonwebtoken::get_current_timestamp();
//! # let header_value = issuer.assertion([7; 16], "app.example.com", &who, now)?;
//! # let jwks_json = keys.jwks_json();
//! let jwks: JwkSet = serde_json::from_str(&jwks_json)?;
//! let kid = decode_header(&*header_value)?.kid.ok_or("no kid")?;
//! let jwk = jwks.find(&kid).ok_or("unknown kid: fetch the JWKS again")?;
//! let mut validation = Validation::new(Algorithm::ES256);
//! validation.set_issuer(&["https://auth.example.com"]);
//! validation.set_audience(&["app.example.com"]);
//! let token = decode::<serde_json::Value>(&*header_value, &DecodingKey::from_jwk(jwk)?, &validation)?;
//! assert_eq!(token.claims["email"], "ada@example.com");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! In Rust, [`verify`] with [`VerifyingKeys::from_jwks_json`] does the same checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::signing::{
    Expectation, Identity, SignError, SigningKeys, TimedClaims, TokenError, VerifyingKeys,
    session_id_hex,
};

/// The request header that carries the assertion.
pub const HEADER_NAME: &str = "x-sekisho-assertion";

/// How long an assertion is valid.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How many sessions the cache holds assertions for.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// How many audiences one session keeps cached assertions for; past this the one closest to
/// its refresh time is dropped.
const MAX_AUDIENCES_PER_SESSION: usize = 32;

/// What an assertion says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Sekisho's auth host URL.
    pub iss: String,
    /// The route's host: the service this assertion is for.
    pub aud: String,
    /// The IdP's `sub`.
    pub sub: String,
    /// May be empty when the IdP gave none.
    pub email: String,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub iat: u64,
    /// Unix seconds.
    pub exp: u64,
    /// The session id, 32 lowercase hex digits.
    pub sid: String,
}

impl TimedClaims for AssertionClaims {
    fn issued_at(&self) -> u64 {
        self.iat
    }
    fn expires_at(&self) -> u64 {
        self.exp
    }
}

/// Verifies an assertion for `audience` from `issuer` at `now` (Unix seconds).
pub fn verify(
    token: &str,
    keys: &VerifyingKeys,
    issuer: &str,
    audience: &str,
    now: u64,
) -> Result<AssertionClaims, TokenError> {
    keys.verify(
        token,
        &Expectation {
            typ: None,
            issuer,
            audience,
            now,
        },
    )
}

struct Cached {
    audience: Box<str>,
    token: Arc<str>,
    /// Sign again from this time on (Unix seconds).
    refresh_at: u64,
}

/// Signs assertions and caches them per (session, audience).
///
/// A session's identity never changes during its life, so the session id and the audience are
/// the whole cache key. The cache is bounded ([`with_cache_capacity`](Self::with_cache_capacity)):
/// when it is full, assertions due for refresh are swept out (at most once a second); if it is
/// still full, new sessions' assertions are signed but not cached until room frees up.
///
/// When the key file changes, build a new issuer: its cache starts empty.
pub struct AssertionIssuer {
    keys: Arc<SigningKeys>,
    issuer: String,
    lifetime: u64,
    capacity: usize,
    cache: DashMap<[u8; 16], Vec<Cached>>,
    /// Unix second of the last sweep of stale entries.
    last_sweep: AtomicU64,
}

impl std::fmt::Debug for AssertionIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionIssuer")
            .field("issuer", &self.issuer)
            .field("lifetime", &self.lifetime)
            .field("cached_sessions", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl AssertionIssuer {
    /// An issuer that signs with the newest key of `keys`; `issuer` is the auth host URL.
    pub fn new(keys: Arc<SigningKeys>, issuer: impl Into<String>) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            lifetime: DEFAULT_LIFETIME.as_secs(),
            capacity: DEFAULT_CACHE_CAPACITY,
            cache: DashMap::new(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// Assertions live `lifetime` (whole seconds, at least one).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.as_secs().max(1);
        self
    }

    /// At most `sessions` sessions have cached assertions.
    pub fn with_cache_capacity(mut self, sessions: usize) -> Self {
        self.capacity = sessions;
        self
    }

    /// The assertion for `session_id` at `audience` (the route's host), signed at most once per
    /// three quarters of its lifetime. `now` is Unix seconds.
    pub fn assertion(
        &self,
        session_id: [u8; 16],
        audience: &str,
        identity: &Identity<'_>,
        now: u64,
    ) -> Result<Arc<str>, SignError> {
        if let Some(entries) = self.cache.get(&session_id)
            && let Some(cached) = entries.iter().find(|c| &*c.audience == audience)
            && now < cached.refresh_at
        {
            return Ok(Arc::clone(&cached.token));
        }

        let exp = now.saturating_add(self.lifetime);
        let claims = AssertionClaims {
            iss: self.issuer.clone(),
            aud: audience.to_owned(),
            sub: identity.subject.to_owned(),
            email: identity.email.to_owned(),
            groups: identity.groups.to_vec(),
            iat: now,
            exp,
            sid: session_id_hex(&session_id),
        };
        let token: Arc<str> = self.keys.sign("JWT", &claims)?.into();
        let fresh = Cached {
            audience: audience.into(),
            token: Arc::clone(&token),
            refresh_at: exp - self.lifetime / 4,
        };

        if self.cache.contains_key(&session_id) || self.make_room(now) {
            let mut entries = self.cache.entry(session_id).or_default();
            entries.retain(|c| &*c.audience != audience && now < c.refresh_at);
            if entries.len() >= MAX_AUDIENCES_PER_SESSION
                && let Some(soonest) = (0..entries.len()).min_by_key(|&i| entries[i].refresh_at)
            {
                entries.swap_remove(soonest);
            }
            entries.push(fresh);
        }
        Ok(token)
    }

    /// True when a new session fits the cache, after sweeping out stale entries if needed.
    fn make_room(&self, now: u64) -> bool {
        if self.cache.len() < self.capacity {
            return true;
        }
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now > last
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.cache.retain(|_, entries| {
                entries.retain(|c| now < c.refresh_at);
                !entries.is_empty()
            });
        }
        self.cache.len() < self.capacity
    }

    /// How many sessions have cached assertions.
    pub fn cached_sessions(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://auth.example.com";
    const SESSION: [u8; 16] = [0xab; 16];

    fn groups() -> Vec<String> {
        vec!["staff".into(), "ops".into()]
    }

    fn who(groups: &[String]) -> Identity<'_> {
        Identity {
            subject: "user-123",
            email: "ada@example.com",
            groups,
        }
    }

    fn issuer() -> (Arc<SigningKeys>, AssertionIssuer) {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let issuer = AssertionIssuer::new(keys.clone(), ISSUER);
        (keys, issuer)
    }

    #[test]
    fn an_assertion_carries_the_sessions_identity_for_its_audience() {
        let (keys, issuer) = issuer();
        let groups = groups();
        let token = issuer
            .assertion(SESSION, "app.example.com", &who(&groups), NOW)
            .unwrap();
        let claims = verify(
            &token,
            keys.verifying_keys(),
            ISSUER,
            "app.example.com",
            NOW,
        )
        .unwrap();
        assert_eq!(
            claims,
            AssertionClaims {
                iss: ISSUER.into(),
                aud: "app.example.com".into(),
                sub: "user-123".into(),
                email: "ada@example.com".into(),
                groups,
                iat: NOW,
                exp: NOW + 300,
                sid: "ab".repeat(16),
            }
        );
        let header = jsonwebtoken::decode_header(&*token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(keys.newest().kid()));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    }

    #[test]
    fn the_same_assertion_is_reused_until_a_quarter_of_its_life_is_left() {
        let (_, issuer) = issuer();
        let groups = groups();
        let first = issuer
            .assertion(SESSION, "app.example.com", &who(&groups), NOW)
            .unwrap();
        let refresh_at = NOW + 300 - 300 / 4;
        let later = issuer
            .assertion(SESSION, "app.example.com", &who(&groups), refresh_at - 1)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &later));

        let renewed = issuer
            .assertion(SESSION, "app.example.com", &who(&groups), refresh_at)
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_ne!(first, renewed);
        let again = issuer
            .assertion(SESSION, "app.example.com", &who(&groups), refresh_at + 1)
            .unwrap();
        assert!(Arc::ptr_eq(&renewed, &again));
        assert_eq!(issuer.cached_sessions(), 1);
    }

    #[test]
    fn another_audience_gets_another_assertion_and_each_stays_cached() {
        let (_, issuer) = issuer();
        let groups = groups();
        let a = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW)
            .unwrap();
        let b = issuer
            .assertion(SESSION, "b.example.com", &who(&groups), NOW)
            .unwrap();
        assert_ne!(a, b);
        let a_again = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW + 1)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &a_again));
    }

    #[test]
    fn another_session_gets_another_assertion() {
        let (_, issuer) = issuer();
        let groups = groups();
        let a = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW)
            .unwrap();
        let b = issuer
            .assertion([1; 16], "a.example.com", &who(&groups), NOW)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn an_assertion_for_one_audience_fails_verification_for_another() {
        let (keys, issuer) = issuer();
        let groups = groups();
        let token = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW)
            .unwrap();
        assert_eq!(
            verify(&token, keys.verifying_keys(), ISSUER, "b.example.com", NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(
                &token,
                keys.verifying_keys(),
                "https://evil.example",
                "a.example.com",
                NOW
            ),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn an_expired_assertion_fails_verification() {
        let (keys, issuer) = issuer();
        let groups = groups();
        let token = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW)
            .unwrap();
        let late = NOW + 300 + crate::signing::CLOCK_SKEW_LEEWAY_SECS;
        assert!(matches!(
            verify(&token, keys.verifying_keys(), ISSUER, "a.example.com", late),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn an_assertion_verifies_with_keys_read_from_the_jwks() {
        let (keys, issuer) = issuer();
        let groups = groups();
        let token = issuer
            .assertion(SESSION, "a.example.com", &who(&groups), NOW)
            .unwrap();
        let from_jwks = VerifyingKeys::from_jwks_json(&keys.jwks_json()).unwrap();
        assert!(verify(&token, &from_jwks, ISSUER, "a.example.com", NOW).is_ok());
    }

    #[test]
    fn a_full_cache_sweeps_stale_entries_and_stays_bounded() {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let issuer = AssertionIssuer::new(keys, ISSUER).with_cache_capacity(2);
        let groups = groups();
        for id in 0..2u8 {
            issuer
                .assertion([id; 16], "a.example.com", &who(&groups), NOW)
                .unwrap();
        }
        // Full of fresh entries: a third session is served but not cached.
        let third = issuer
            .assertion([2; 16], "a.example.com", &who(&groups), NOW)
            .unwrap();
        assert_eq!(issuer.cached_sessions(), 2);
        let third_again = issuer
            .assertion([2; 16], "a.example.com", &who(&groups), NOW)
            .unwrap();
        assert!(!Arc::ptr_eq(&third, &third_again));

        // Once the old entries are due for refresh, a sweep makes room.
        let later = NOW + 300;
        issuer
            .assertion([2; 16], "a.example.com", &who(&groups), later)
            .unwrap();
        assert_eq!(issuer.cached_sessions(), 1);
    }

    #[test]
    fn one_session_keeps_a_bounded_number_of_audiences() {
        let (_, issuer) = issuer();
        let groups = groups();
        for n in 0..(MAX_AUDIENCES_PER_SESSION + 5) {
            issuer
                .assertion(SESSION, &format!("h{n}.example.com"), &who(&groups), NOW)
                .unwrap();
        }
        assert_eq!(
            issuer.cache.get(&SESSION).unwrap().len(),
            MAX_AUDIENCES_PER_SESSION
        );
    }
}
