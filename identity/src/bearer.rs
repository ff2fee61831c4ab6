//! Verifying bearer tokens: JWTs from configured issuers, for the CLI and API clients.
//!
//! Only tokens from a configured issuer are considered, only asymmetric signatures from
//! [`SIGNING_ALGORITHMS`](crate::SIGNING_ALGORITHMS) are accepted (never `none` or HMAC), and
//! the keys come from the issuer's JWKS through a [`JwksCache`]. A verified token is remembered,
//! by its SHA-256, until its `exp`, so a client that repeats the same token costs one hash and
//! one map lookup per request.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use openidconnect::core::CoreProviderMetadata;
use openidconnect::{IssuerUrl, JsonWebKeySetUrl};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::claim;
use crate::http::{HttpClient, HttpError};
use crate::jwks::{DEFAULT_MIN_REFETCH_INTERVAL, JwksCache, JwksError};
use crate::jws::{JwsError, Unverified};

/// Most verified tokens remembered at once.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// One issuer whose tokens are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BearerIssuerConfig {
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Where the keys are; found by OpenID discovery on `issuer` when absent.
    #[serde(default)]
    pub jwks_uri: Option<Url>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Allowed values of the `hd` claim (the account's hosted domain, compared without regard
    /// to case); when set, a token without `hd` or with another one is refused. Empty allows
    /// any, and none.
    #[serde(default)]
    pub hosted_domains: Vec<String>,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

/// The identity a bearer token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerClaims {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// False when the claim is absent.
    pub email_verified: bool,
    pub groups: Vec<String>,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    pub expires_at: SystemTime,
}

/// Building a verifier failed.
#[derive(Debug, thiserror::Error)]
pub enum BearerSetupError {
    #[error("issuer {0:?} has no audiences")]
    NoAudiences(String),
    #[error("hosted domain {0:?} is not a domain name")]
    InvalidHostedDomain(String),
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    #[error("issuer {0:?} is not a valid URL")]
    InvalidIssuer(String),
    #[error("jwks_uri {0} is not valid")]
    InvalidJwksUri(String),
    #[error("OpenID discovery for issuer {issuer} failed")]
    Discovery {
        issuer: String,
        #[source]
        source: openidconnect::DiscoveryError<HttpError>,
    },
}

/// A bearer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum BearerError {
    #[error("the token is not a valid signed JWT")]
    Jws(#[source] JwsError),
    #[error("the token's claims are not a JSON object")]
    MalformedClaims,
    #[error("the token's issuer is not configured")]
    UnknownIssuer,
    #[error("the issuer's signing keys could not be fetched")]
    Keys(#[source] JwksError),
    #[error("the token is not for any accepted audience")]
    WrongAudience,
    #[error("the token has several audiences but no authorized party (azp)")]
    MissingAuthorizedParty,
    #[error("the token's authorized party (azp) is not an accepted audience")]
    WrongAuthorizedParty,
    #[error("the token's hosted domain (hd) is missing or not allowed")]
    HostedDomainNotAllowed,
    #[error("the token has no exp")]
    MissingExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token has no sub")]
    MissingSubject,
}

struct Issuer {
    config: BearerIssuerConfig,
    jwks: JwksCache,
}

struct Cached {
    claims: BearerClaims,
    /// `exp` in Unix seconds.
    exp: i64,
}

/// Verifies bearer tokens from the configured issuers. Shareable across tasks.
pub struct BearerVerifier {
    issuers: Vec<Issuer>,
    cache: DashMap<[u8; 32], Arc<Cached>>,
    capacity: usize,
}

impl std::fmt::Debug for BearerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl BearerVerifier {
    /// Builds a verifier, running discovery for issuers without a `jwks_uri`.
    pub async fn new(
        configs: Vec<BearerIssuerConfig>,
        http: &HttpClient,
    ) -> Result<Self, BearerSetupError> {
        Self::with_capacity(configs, http, DEFAULT_CACHE_CAPACITY).await
    }

    /// As [`BearerVerifier::new`], remembering at most `capacity` verified tokens.
    pub async fn with_capacity(
        configs: Vec<BearerIssuerConfig>,
        http: &HttpClient,
        capacity: usize,
    ) -> Result<Self, BearerSetupError> {
        let mut issuers: Vec<Issuer> = Vec::with_capacity(configs.len());
        for config in configs {
            if config.audiences.is_empty() {
                return Err(BearerSetupError::NoAudiences(config.issuer));
            }
            if let Some(domain) = config
                .hosted_domains
                .iter()
                .find(|domain| !crate::oidc::is_hosted_domain(domain))
            {
                return Err(BearerSetupError::InvalidHostedDomain(domain.clone()));
            }
            if issuers.iter().any(|i| i.config.issuer == config.issuer) {
                return Err(BearerSetupError::DuplicateIssuer(config.issuer));
            }
            let jwks = match &config.jwks_uri {
                Some(uri) => JwksCache::new(
                    http.clone(),
                    JsonWebKeySetUrl::from_url(uri.clone()),
                    DEFAULT_MIN_REFETCH_INTERVAL,
                ),
                None => {
                    let issuer = IssuerUrl::new(config.issuer.clone())
                        .map_err(|_| BearerSetupError::InvalidIssuer(config.issuer.clone()))?;
                    let metadata = CoreProviderMetadata::discover_async(issuer, http)
                        .await
                        .map_err(|source| BearerSetupError::Discovery {
                            issuer: config.issuer.clone(),
                            source,
                        })?;
                    JwksCache::with_keys(
                        http.clone(),
                        metadata.jwks_uri().clone(),
                        metadata.jwks().clone(),
                        DEFAULT_MIN_REFETCH_INTERVAL,
                    )
                }
            };
            issuers.push(Issuer { config, jwks });
        }
        Ok(Self {
            issuers,
            cache: DashMap::new(),
            capacity,
        })
    }

    /// Verifies `token` (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<BearerClaims, BearerError> {
        let key = token_key(token);
        let now = claim::now_unix();
        if let Some(cached) = self.cache.get(&key).map(|e| e.value().clone()) {
            if now < cached.exp {
                return Ok(cached.claims.clone());
            }
            self.cache.remove(&key);
        }

        let unverified = Unverified::parse(token).map_err(BearerError::Jws)?;
        let issuer = self.issuer_of(token)?;
        let keys = issuer
            .jwks
            .keys_for(unverified.kid())
            .await
            .map_err(BearerError::Keys)?;
        let claims = unverified.verify(&keys).map_err(|error| match error {
            JwsError::MalformedClaims => BearerError::MalformedClaims,
            error => BearerError::Jws(error),
        })?;
        let (verified, exp) = check_claims(&issuer.config, claims, now)?;

        if now < exp {
            self.remember(key, &verified, exp, now);
        }
        Ok(verified)
    }

    /// The configured issuer the token claims to come from (read before the signature is
    /// checked, only to pick the keys; the signature check follows).
    fn issuer_of(&self, token: &str) -> Result<&Issuer, BearerError> {
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss: Iss = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| BearerError::MalformedClaims)?;
        let iss = iss.iss.ok_or(BearerError::UnknownIssuer)?;
        self.issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(BearerError::UnknownIssuer)
    }

    fn remember(&self, key: [u8; 32], claims: &BearerClaims, exp: i64, now: i64) {
        if self.cache.len() >= self.capacity {
            self.cache.retain(|_, cached| now < cached.exp);
            if self.cache.len() >= self.capacity {
                return;
            }
        }
        self.cache.insert(
            key,
            Arc::new(Cached {
                claims: claims.clone(),
                exp,
            }),
        );
    }

    /// How many verified tokens are remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The claim checks after the signature: `iss`, `aud`, `azp`, `hd`, `exp`, `nbf`, `iat`, `sub`.
fn check_claims(
    config: &BearerIssuerConfig,
    claims: Map<String, Value>,
    now: i64,
) -> Result<(BearerClaims, i64), BearerError> {
    if claim::string(&claims, "iss").as_deref() != Some(config.issuer.as_str()) {
        return Err(BearerError::UnknownIssuer);
    }
    let mut audiences = claim::audiences(&claims);
    let accepted = |aud: &str| config.audiences.iter().any(|a| a == aud);
    if !audiences.iter().any(|aud| accepted(aud)) {
        return Err(BearerError::WrongAudience);
    }
    // A token for several parties must say which one it was issued to, and that one must be
    // accepted here too (as OpenID Connect Core 3.1.3.7 asks of ID tokens).
    audiences.sort_unstable();
    audiences.dedup();
    if audiences.len() > 1 {
        let azp = claim::string(&claims, "azp").ok_or(BearerError::MissingAuthorizedParty)?;
        if !accepted(&azp) {
            return Err(BearerError::WrongAuthorizedParty);
        }
    }
    if !config.hosted_domains.is_empty() {
        let allowed = claim::string(&claims, "hd").is_some_and(|hd| {
            config
                .hosted_domains
                .iter()
                .any(|domain| domain.eq_ignore_ascii_case(&hd))
        });
        if !allowed {
            return Err(BearerError::HostedDomainNotAllowed);
        }
    }
    let skew = config.max_clock_skew.as_secs() as i64;
    let exp = claim::numeric_date(claims.get("exp")).ok_or(BearerError::MissingExpiry)?;
    if now >= exp.saturating_add(skew) {
        return Err(BearerError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = claim::numeric_date(Some(nbf)).ok_or(BearerError::NotYetValid)?;
        if nbf > now + skew {
            return Err(BearerError::NotYetValid);
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = claim::numeric_date(Some(iat)).ok_or(BearerError::IssuedInFuture)?;
        if iat > now + skew {
            return Err(BearerError::IssuedInFuture);
        }
    }
    let subject = claim::string(&claims, "sub").ok_or(BearerError::MissingSubject)?;
    let verified = BearerClaims {
        issuer: config.issuer.clone(),
        subject,
        email: claim::string(&claims, "email"),
        email_verified: claim::boolean(claims.get("email_verified")).unwrap_or(false),
        groups: claim::groups(claims.get(&config.groups_claim)),
        expires_at: UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64),
        claims,
    };
    Ok((verified, exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> BearerIssuerConfig {
        BearerIssuerConfig {
            issuer: "https://id.example".into(),
            audiences: vec!["sekisho".into(), "cli".into()],
            jwks_uri: None,
            groups_claim: "roles".into(),
            max_clock_skew: Duration::from_secs(60),
            hosted_domains: Vec::new(),
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn valid_claims_give_the_identity() {
        let (verified, exp) = check_claims(
            &config(),
            claims(json!({
                "iss": "https://id.example", "aud": ["other", "cli"], "azp": "cli", "sub": "u1",
                "exp": NOW + 100, "iat": NOW, "nbf": NOW,
                "email": "u@example", "email_verified": "true", "roles": "admins",
            })),
            NOW,
        )
        .unwrap();
        assert_eq!(exp, NOW + 100);
        assert_eq!(verified.subject, "u1");
        assert_eq!(verified.email.as_deref(), Some("u@example"));
        assert!(verified.email_verified);
        assert_eq!(verified.groups, ["admins"]);
    }

    fn bare_verifier(capacity: usize) -> BearerVerifier {
        BearerVerifier {
            issuers: Vec::new(),
            cache: DashMap::new(),
            capacity,
        }
    }

    fn some_claims() -> BearerClaims {
        BearerClaims {
            issuer: "https://id.example".into(),
            subject: "u".into(),
            email: None,
            email_verified: false,
            groups: Vec::new(),
            claims: Map::new(),
            expires_at: UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn an_expired_cached_token_is_never_returned() {
        let verifier = bare_verifier(10);
        let now = claim::now_unix();
        verifier.remember(token_key("fresh"), &some_claims(), now + 100, now);
        verifier.remember(token_key("stale"), &some_claims(), now - 1, now);
        assert_eq!(verifier.verify("fresh").await.unwrap(), some_claims());
        // "stale" is not a JWT at all: only the cache could have accepted it.
        assert!(verifier.verify("stale").await.is_err());
        assert_eq!(verifier.cached_tokens(), 1);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_and_then_stops_growing() {
        let verifier = bare_verifier(2);
        let now = 1000;
        verifier.remember(token_key("a"), &some_claims(), now + 1, now);
        verifier.remember(token_key("b"), &some_claims(), now + 1, now);
        verifier.remember(token_key("c"), &some_claims(), now + 1, now);
        assert_eq!(verifier.cached_tokens(), 2);
        // Later, "a" and "b" have expired and make room.
        verifier.remember(token_key("d"), &some_claims(), now + 100, now + 50);
        assert_eq!(verifier.cached_tokens(), 1);
    }

    /// Tokens from issuer `https://id.example`, signed with a key made for the test, and a
    /// verifier that knows the key under `config`.
    struct Signed {
        keys: crate::signing::SigningKeys,
        verifier: BearerVerifier,
    }

    impl Signed {
        fn new(config: BearerIssuerConfig) -> Self {
            use openidconnect::core::CoreJsonWebKeySet;
            struct Fixed(CoreJsonWebKeySet);
            impl crate::jwks::FetchKeys for Fixed {
                fn fetch(&self) -> crate::jwks::FetchFuture<'_> {
                    Box::pin(async move { Ok(self.0.clone()) })
                }
            }
            let keys = crate::signing::SigningKeys::generate().unwrap();
            let jwks: CoreJsonWebKeySet = serde_json::from_str(&keys.jwks_json()).unwrap();
            let jwks = JwksCache::with_fetcher(
                Box::new(Fixed(jwks.clone())),
                "test".into(),
                Some(jwks),
                DEFAULT_MIN_REFETCH_INTERVAL,
            );
            let verifier = BearerVerifier {
                issuers: vec![Issuer { config, jwks }],
                cache: DashMap::new(),
                capacity: 10,
            };
            Self { keys, verifier }
        }

        /// Signs alice's claims for `https://id.example` with `extra` on top.
        async fn verify(&self, extra: Value) -> Result<BearerClaims, BearerError> {
            let now = claim::now_unix();
            let mut claims = claims(json!({
                "iss": "https://id.example", "aud": "sekisho", "sub": "alice",
                "iat": now, "exp": now + 300,
            }));
            claims.extend(extra.as_object().unwrap().clone());
            let token = self.keys.sign("JWT", &claims).unwrap();
            self.verifier.verify(&token).await
        }
    }

    #[tokio::test]
    async fn a_signed_token_for_several_audiences_needs_an_accepted_authorized_party() {
        let signed = Signed::new(config());
        // One audience: azp is not needed.
        assert!(signed.verify(json!({})).await.is_ok());
        let err = signed
            .verify(json!({"aud": ["sekisho", "billing"]}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BearerError::MissingAuthorizedParty),
            "{err:?}"
        );
        let err = signed
            .verify(json!({"aud": ["sekisho", "billing"], "azp": "billing"}))
            .await
            .unwrap_err();
        assert!(matches!(err, BearerError::WrongAuthorizedParty), "{err:?}");
        // azp may be any of the issuer's accepted audiences.
        for azp in ["sekisho", "cli"] {
            let got = signed
                .verify(json!({"aud": ["sekisho", "billing"], "azp": azp}))
                .await;
            assert_eq!(
                got.map(|c| c.subject).ok().as_deref(),
                Some("alice"),
                "{azp}"
            );
        }
        // The same audience twice is one audience.
        assert!(signed.verify(json!({"aud": ["cli", "cli"]})).await.is_ok());
        // A refused token is not remembered as verified.
        assert_eq!(signed.verifier.cached_tokens(), 4);
    }

    #[tokio::test]
    async fn a_signed_token_outside_the_issuers_hosted_domains_is_refused() {
        let signed = Signed::new(BearerIssuerConfig {
            hosted_domains: vec!["uniqe.example".into()],
            ..config()
        });
        for hd in [
            Value::Null,
            json!("elsewhere.example"),
            json!(["uniqe.example"]),
        ] {
            let extra = match &hd {
                Value::Null => json!({}),
                hd => json!({ "hd": hd }),
            };
            let err = signed.verify(extra).await.unwrap_err();
            assert!(
                matches!(err, BearerError::HostedDomainNotAllowed),
                "hd {hd}: {err:?}"
            );
        }
        for hd in ["uniqe.example", "Uniqe.Example"] {
            assert!(signed.verify(json!({ "hd": hd })).await.is_ok(), "hd {hd}");
        }
        // An issuer without hosted domains takes any, and none.
        let any = Signed::new(config());
        assert!(any.verify(json!({})).await.is_ok());
        assert!(any.verify(json!({"hd": "elsewhere.example"})).await.is_ok());
    }

    #[tokio::test]
    async fn an_issuer_with_a_hosted_domain_that_is_no_domain_is_refused_at_setup() {
        let http = crate::http::HttpClient::new(&crate::http::HttpClientConfig::default()).unwrap();
        let config = BearerIssuerConfig {
            jwks_uri: Some("https://id.example/jwks".parse().unwrap()),
            hosted_domains: vec!["uniqe example".into()],
            ..config()
        };
        let err = BearerVerifier::new(vec![config], &http).await.unwrap_err();
        assert!(
            matches!(&err, BearerSetupError::InvalidHostedDomain(d) if d == "uniqe example"),
            "{err:?}"
        );
    }

    /// Found with the `bearer_jwt` fuzz target: `exp + skew` overflowed for an `exp` near
    /// `i64::MAX` (a panic with overflow checks, a wrap to "expired" without).
    #[test]
    fn a_token_that_expires_at_the_end_of_time_is_checked_without_overflow() {
        for exp in [json!(i64::MAX), json!(1e300), json!(u64::MAX)] {
            let claims = claims(json!({
                "iss": "https://id.example", "aud": "sekisho", "sub": "u", "exp": exp,
                "nbf": i64::MAX, "iat": i64::MIN,
            }));
            let err = check_claims(&config(), claims, NOW).unwrap_err();
            assert_eq!(format!("{err:?}"), "NotYetValid");
        }
        let claims = claims(json!({
            "iss": "https://id.example", "aud": "sekisho", "sub": "u", "exp": i64::MAX,
        }));
        let (_, exp) = check_claims(&config(), claims, NOW).unwrap();
        assert_eq!(exp, i64::MAX);
    }

    #[test]
    fn claims_outside_their_limits_are_refused() {
        let base =
            json!({"iss": "https://id.example", "aud": "sekisho", "sub": "u", "exp": NOW + 100});
        let with = |k: &str, v: Value| {
            let mut c = claims(base.clone());
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.into(), v);
            }
            c
        };
        let cases = [
            (with("iss", json!("https://id.example/")), "UnknownIssuer"),
            (with("aud", json!(["other"])), "WrongAudience"),
            (with("aud", Value::Null), "WrongAudience"),
            (
                with("aud", json!(["sekisho", "other"])),
                "MissingAuthorizedParty",
            ),
            (with("exp", Value::Null), "MissingExpiry"),
            (with("exp", json!(NOW - 61)), "Expired"),
            (with("nbf", json!(NOW + 61)), "NotYetValid"),
            (with("iat", json!(NOW + 61)), "IssuedInFuture"),
            (with("sub", Value::Null), "MissingSubject"),
        ];
        for (claims, expected) in cases {
            let err = check_claims(&config(), claims, NOW).unwrap_err();
            assert_eq!(format!("{err:?}"), expected);
        }
        // Within the skew is fine.
        assert!(check_claims(&config(), with("exp", json!(NOW - 59)), NOW).is_ok());
        assert!(check_claims(&config(), with("nbf", json!(NOW + 59)), NOW).is_ok());
    }
}
