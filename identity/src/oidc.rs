//! The OpenID Connect relying party: one [`Provider`] per configured identity provider.
//!
//! A login is two calls. [`Provider::begin_login`] makes the authorization URL (code flow, PKCE
//! S256, fresh `state` and `nonce`) and a [`PendingLogin`] the caller keeps until the browser
//! comes back (the proxy seals it into a short-lived cookie). [`Provider::finish_login`] checks
//! the returned `state`, exchanges the code, and verifies the ID token completely before any of
//! its claims are used. The same provider verifies back-channel logout tokens.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenVerifier, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadataWithLogout, RedirectUrl, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use url::Url;

use crate::claim;
use crate::http::{HttpClient, HttpError};
use crate::jwks::{DEFAULT_MIN_REFETCH_INTERVAL, JwksCache, JwksError};
use crate::jws::{JwsError, SIGNING_ALGORITHMS, Unverified};

/// Google's issuer, used when a `google` provider names none.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// How long a login may take from [`Provider::begin_login`] to [`Provider::finish_login`].
pub const PENDING_LOGIN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// The event a back-channel logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How old a logout token's `iat` may be.
const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// The largest `max_clock_skew` a provider may set.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What kind of provider this is; `google` adds Google's rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Generic,
    /// Google: the issuer defaults to [`GOOGLE_ISSUER`], `email_verified` must be true, and
    /// `hosted_domains` restricts the `hd` claim.
    Google,
}

/// One identity provider, as written in the configuration file.
///
/// Parsing applies the defaults and checks the fields, so a value of this type is always
/// usable. The client secret is never in the file itself, only the path to a file holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderConfig {
    /// Identifier used in URLs (`[a-z0-9-]`, 1–63 characters).
    pub name: String,
    pub display_name: String,
    pub kind: ProviderKind,
    /// The issuer identifier, exactly as the provider writes it in `iss` (so a trailing slash
    /// matters); a valid http(s) URL.
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    /// Scopes to ask for; always contains `openid`.
    pub scopes: Vec<String>,
    /// The claim that holds the user's groups.
    pub groups_claim: String,
    /// Allowed values of the `hd` claim; empty allows any (and none).
    pub hosted_domains: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProviderConfig {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    kind: ProviderKind,
    #[serde(default)]
    issuer: Option<String>,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    hosted_domains: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    max_clock_skew: Option<Duration>,
}

/// A provider configuration is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderConfigError {
    #[error("name {0:?} must be 1 to 63 characters of a-z, 0-9 and '-'")]
    InvalidName(String),
    #[error("issuer is required for a generic provider")]
    IssuerRequired,
    #[error("issuer {0} must be an absolute http(s) URL without query or fragment")]
    InvalidIssuer(String),
    #[error("client_id must not be empty")]
    EmptyClientId,
    #[error("scopes must include \"openid\"")]
    ScopesWithoutOpenid,
    #[error("groups_claim must not be empty")]
    EmptyGroupsClaim,
    #[error("hosted domain {0:?} is not a domain name")]
    InvalidHostedDomain(String),
    #[error("max_clock_skew {0:?} is larger than {MAX_CLOCK_SKEW:?}")]
    ClockSkewTooLarge(Duration),
}

impl TryFrom<RawProviderConfig> for ProviderConfig {
    type Error = ProviderConfigError;

    fn try_from(raw: RawProviderConfig) -> Result<Self, Self::Error> {
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 63
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(ProviderConfigError::InvalidName(raw.name));
        }
        let issuer = match (raw.issuer, raw.kind) {
            (Some(issuer), _) => issuer,
            (None, ProviderKind::Google) => GOOGLE_ISSUER.to_owned(),
            (None, ProviderKind::Generic) => return Err(ProviderConfigError::IssuerRequired),
        };
        let valid = Url::parse(&issuer).is_ok_and(|url| {
            matches!(url.scheme(), "https" | "http")
                && !url.cannot_be_a_base()
                && url.query().is_none()
                && url.fragment().is_none()
        });
        if !valid {
            return Err(ProviderConfigError::InvalidIssuer(issuer));
        }
        if raw.client_id.is_empty() {
            return Err(ProviderConfigError::EmptyClientId);
        }
        let scopes = raw.scopes.unwrap_or_else(|| {
            let mut scopes = vec![
                "openid".to_owned(),
                "email".to_owned(),
                "profile".to_owned(),
            ];
            if raw.kind == ProviderKind::Generic {
                scopes.push("groups".to_owned());
            }
            scopes
        });
        if !scopes.iter().any(|s| s == "openid") {
            return Err(ProviderConfigError::ScopesWithoutOpenid);
        }
        let groups_claim = raw.groups_claim.unwrap_or_else(|| "groups".to_owned());
        if groups_claim.is_empty() {
            return Err(ProviderConfigError::EmptyGroupsClaim);
        }
        let mut hosted_domains = Vec::with_capacity(raw.hosted_domains.len());
        for domain in raw.hosted_domains {
            if !is_hosted_domain(&domain) {
                return Err(ProviderConfigError::InvalidHostedDomain(domain));
            }
            hosted_domains.push(domain.to_ascii_lowercase());
        }
        let max_clock_skew = raw.max_clock_skew.unwrap_or(Duration::from_secs(60));
        if max_clock_skew > MAX_CLOCK_SKEW {
            return Err(ProviderConfigError::ClockSkewTooLarge(max_clock_skew));
        }
        Ok(Self {
            display_name: raw.display_name.unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            kind: raw.kind,
            issuer,
            client_id: raw.client_id,
            client_secret_file: raw.client_secret_file,
            scopes,
            groups_claim,
            hosted_domains,
            max_clock_skew,
        })
    }
}

/// Whether `domain` can be a value of the `hd` claim: letters, digits, `-` and `.`.
pub fn is_hosted_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawProviderConfig::deserialize(deserializer)?;
        Self::try_from(raw).map_err(serde::de::Error::custom)
    }
}

/// A value that must stay secret (state, nonce, PKCE verifier): serialized as is, but its
/// `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LoginSecret(String);

impl std::fmt::Debug for LoginSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginSecret(<redacted>)")
    }
}

/// An ID token as the provider issued it, kept for `id_token_hint` at logout. Its `Debug`
/// prints a placeholder.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawIdToken(String);

impl RawIdToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawIdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawIdToken(<redacted>)")
    }
}

/// What the relying party keeps between the redirect to the provider and the callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    provider: String,
    state: LoginSecret,
    nonce: LoginSecret,
    pkce_verifier: LoginSecret,
    redirect_uri: Url,
    /// Seconds since the Unix epoch.
    created_at: u64,
}

impl PendingLogin {
    /// The [`ProviderConfig::name`] of the provider the login went to.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created_at)
    }
}

/// The identity an ID token proved.
#[derive(Clone, Debug)]
pub struct VerifiedLogin {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// False when the claim is absent.
    pub email_verified: bool,
    /// Google's `hd` claim: the Workspace domain of the account.
    pub hosted_domain: Option<String>,
    /// From [`ProviderConfig::groups_claim`]; one string or an array of strings.
    pub groups: Vec<String>,
    /// The provider's session id, for back-channel logout.
    pub sid: Option<String>,
    pub auth_time: Option<SystemTime>,
    pub id_token_expires_at: SystemTime,
    /// Every claim outside the standard set of OpenID Connect Core (so `hd`, `sid` and the
    /// groups claim are here too, as sent).
    pub claims: Map<String, Value>,
    pub id_token: RawIdToken,
}

/// A verified back-channel logout token: end the sessions it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutToken {
    /// End every session of this subject (when `sid` is absent).
    pub sub: Option<String>,
    /// End the session with this provider session id.
    pub sid: Option<String>,
    /// The token's id, for a replay cache.
    pub jti: String,
    /// Unix time from which this token can no longer verify, as too old or expired, whatever
    /// `max_clock_skew` is configured to: a replay cache keeps `jti` until then.
    pub replayable_until: u64,
}

/// Setting up a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading the client secret from {path} failed")]
    ClientSecretUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the client secret file {0} is empty")]
    ClientSecretEmpty(PathBuf),
    #[error("the issuer URL {0} is not valid")]
    InvalidIssuer(String),
    #[error("OpenID discovery at {issuer} failed")]
    Discovery {
        issuer: String,
        #[source]
        source: openidconnect::DiscoveryError<HttpError>,
    },
}

/// A login could not be completed. None of these may be shown to the user in detail.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the pending login belongs to provider {0:?}")]
    WrongProvider(String),
    #[error("the pending login is older than {PENDING_LOGIN_LIFETIME:?}")]
    PendingLoginExpired,
    #[error("the returned state does not match the pending login")]
    StateMismatch,
    #[error("the authorization code exchange failed")]
    CodeExchange(
        #[source]
        openidconnect::RequestTokenError<
            HttpError,
            openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
        >,
    ),
    #[error("the provider sent no ID token")]
    MissingIdToken,
    #[error("the ID token could not be parsed")]
    MalformedIdToken(#[source] serde_json::Error),
    #[error("the signing keys could not be fetched")]
    Keys(#[source] JwksError),
    #[error("the ID token is not valid")]
    InvalidIdToken(#[source] ClaimsVerificationError),
    #[error("the ID token was issued before the login began")]
    IssuedBeforeLogin,
    #[error("the ID token's authorized party (azp) is not this client")]
    WrongAuthorizedParty,
    #[error("the email address is not verified")]
    EmailNotVerified,
    #[error("hosted domain {0:?} is not allowed")]
    HostedDomainNotAllowed(Option<String>),
}

/// A back-channel logout token was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    #[error("the logout token is not a valid signed JWT")]
    Jws(#[source] JwsError),
    #[error("the signing keys could not be fetched")]
    Keys(#[source] JwksError),
    #[error("the logout token's claims are not a JSON object")]
    MalformedClaims,
    #[error("the logout token's issuer is not the provider")]
    WrongIssuer,
    #[error("the logout token is not addressed to this client")]
    WrongAudience,
    #[error("the logout token's iat is missing or out of range")]
    BadIssueTime,
    #[error("the logout token has expired")]
    Expired,
    #[error("the logout token has no jti")]
    MissingJti,
    #[error("the logout token lacks the back-channel logout event")]
    MissingEvent,
    #[error("the logout token carries a nonce")]
    NonceForbidden,
    #[error("the logout token names neither sub nor sid")]
    MissingSubjectAndSession,
}

/// Claims of an ID token beyond the standard ones, as sent.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(transparent)]
struct OtherClaims(Map<String, Value>);

impl AdditionalClaims for OtherClaims {}

type FullIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// One discovered OpenID provider, ready for logins. Shareable across tasks.
pub struct Provider {
    config: ProviderConfig,
    issuer: IssuerUrl,
    client: DiscoveredClient,
    http: HttpClient,
    jwks: Arc<JwksCache>,
    end_session_endpoint: Option<Url>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.issuer.as_str())
            .finish_non_exhaustive()
    }
}

/// The client secret in `path`: the file's text without a final line break, which may not be
/// empty.
pub fn read_client_secret(path: &std::path::Path) -> Result<String, DiscoveryError> {
    let secret =
        std::fs::read_to_string(path).map_err(|source| DiscoveryError::ClientSecretUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let secret = secret.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(DiscoveryError::ClientSecretEmpty(path.to_owned()));
    }
    Ok(secret.to_owned())
}

impl Provider {
    /// Reads the client secret, fetches the discovery document and the provider's keys.
    pub async fn discover(
        config: ProviderConfig,
        http: &HttpClient,
    ) -> Result<Self, DiscoveryError> {
        let secret = read_client_secret(&config.client_secret_file)?;
        let secret = secret.as_str();
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|_| DiscoveryError::InvalidIssuer(config.issuer.clone()))?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer.clone(), http)
            .await
            .map_err(|source| DiscoveryError::Discovery {
                issuer: issuer.to_string(),
                source,
            })?;
        let end_session_endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().clone());
        let jwks = JwksCache::with_keys(
            http.clone(),
            metadata.jwks_uri().clone(),
            metadata.jwks().clone(),
            DEFAULT_MIN_REFETCH_INTERVAL,
        );
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret.to_owned())),
        );
        Ok(Self {
            config,
            issuer,
            client,
            http: http.clone(),
            jwks: Arc::new(jwks),
            end_session_endpoint,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The provider's signing keys.
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// The URL to send the browser to, and what to keep until it comes back to `redirect_uri`.
    pub fn begin_login(&self, redirect_uri: &Url) -> (Url, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())));
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if self.config.kind == ProviderKind::Google
            && let [domain] = self.config.hosted_domains.as_slice()
        {
            // Only a hint to Google's account chooser; the claim is still checked.
            request = request.add_extra_param("hd", domain.clone());
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            provider: self.config.name.clone(),
            state: LoginSecret(state.into_secret()),
            nonce: LoginSecret(nonce.secret().clone()),
            pkce_verifier: LoginSecret(verifier.into_secret()),
            redirect_uri: redirect_uri.clone(),
            created_at: unix_now(),
        };
        (url, pending)
    }

    /// Completes a login: checks `returned_state`, exchanges `code` and verifies the ID token.
    pub async fn finish_login(
        &self,
        pending: &PendingLogin,
        code: &str,
        returned_state: &str,
    ) -> Result<VerifiedLogin, LoginError> {
        if pending.provider != self.config.name {
            return Err(LoginError::WrongProvider(pending.provider.clone()));
        }
        let now = unix_now();
        if now.saturating_sub(pending.created_at) > PENDING_LOGIN_LIFETIME.as_secs() {
            return Err(LoginError::PendingLoginExpired);
        }
        let state_matches: bool = pending
            .state
            .0
            .as_bytes()
            .ct_eq(returned_state.as_bytes())
            .into();
        if !state_matches {
            return Err(LoginError::StateMismatch);
        }

        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| {
                LoginError::CodeExchange(openidconnect::RequestTokenError::Other(e.to_string()))
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.0.clone()))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(
                pending.redirect_uri.clone(),
            )))
            .request_async(&self.http)
            .await
            .map_err(LoginError::CodeExchange)?;
        let raw = response
            .id_token()
            .ok_or(LoginError::MissingIdToken)?
            .to_string();
        self.verify_id_token(&RawIdToken(raw), pending).await
    }

    /// Verifies an ID token issued for `pending`: signature (with the unknown-kid refetch),
    /// `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`, then the provider kind's own rules.
    /// [`Provider::finish_login`] calls this after the code exchange.
    pub async fn verify_id_token(
        &self,
        raw: &RawIdToken,
        pending: &PendingLogin,
    ) -> Result<VerifiedLogin, LoginError> {
        let raw = raw.as_str();
        let token: FullIdToken = serde_json::from_value(Value::String(raw.to_owned()))
            .map_err(LoginError::MalformedIdToken)?;
        // An unknown kid refetches the provider's keys (rate limited); a token without a kid
        // is checked against the cached set.
        let kid = jsonwebtoken::decode_header(raw)
            .ok()
            .and_then(|header| header.kid);
        let keys = self
            .jwks
            .keys_for(kid.as_deref())
            .await
            .map_err(LoginError::Keys)?;
        let skew = self.config.max_clock_skew.as_secs() as i64;
        let nonce = Nonce::new(pending.nonce.0.clone());
        let verifier = IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            self.issuer.clone(),
            (*keys).clone(),
        )
        .set_allowed_algs(SIGNING_ALGORITHMS)
        // The verifier compares `exp` with this clock; running it `skew` behind accepts a
        // token up to `skew` after its expiry.
        .set_time_fn(move || (SystemTime::now() - Duration::from_secs(skew as u64)).into())
        .set_issue_time_verifier_fn(move |iat| {
            if iat.timestamp() > claim::now_unix() + skew {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
        let claims = token
            .claims(&verifier, &nonce)
            .map_err(LoginError::InvalidIdToken)?;

        if claims.issue_time().timestamp() + skew < pending.created_at as i64 {
            return Err(LoginError::IssuedBeforeLogin);
        }
        let audiences = claims.audiences();
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != self.config.client_id => {
                return Err(LoginError::WrongAuthorizedParty);
            }
            None if audiences.len() > 1 => return Err(LoginError::WrongAuthorizedParty),
            _ => {}
        }

        let other = &claims.additional_claims().0;
        let email_verified = claims.email_verified().unwrap_or(false);
        let hosted_domain = claim::string(other, "hd");
        if self.config.kind == ProviderKind::Google && !email_verified {
            return Err(LoginError::EmailNotVerified);
        }
        if !self.config.hosted_domains.is_empty() {
            let allowed = hosted_domain.as_ref().is_some_and(|hd| {
                self.config
                    .hosted_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(hd))
            });
            if !allowed {
                return Err(LoginError::HostedDomainNotAllowed(hosted_domain));
            }
        }
        Ok(VerifiedLogin {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified,
            hosted_domain,
            groups: claim::groups(other.get(&self.config.groups_claim)),
            sid: claim::string(other, "sid"),
            auth_time: claims.auth_time().map(SystemTime::from),
            id_token_expires_at: SystemTime::from(claims.expiration()),
            claims: other.clone(),
            id_token: RawIdToken(raw.to_owned()),
        })
    }

    /// Where to send the browser to end the provider's session (RP-initiated logout), when
    /// the provider advertises an `end_session_endpoint`.
    pub fn end_session_url(
        &self,
        id_token_hint: &RawIdToken,
        post_logout_redirect_uri: &Url,
        state: &str,
    ) -> Option<Url> {
        let mut url = self.end_session_endpoint.clone()?;
        url.query_pairs_mut()
            .append_pair("id_token_hint", id_token_hint.as_str())
            .append_pair("client_id", &self.config.client_id)
            .append_pair(
                "post_logout_redirect_uri",
                post_logout_redirect_uri.as_str(),
            )
            .append_pair("state", state);
        Some(url)
    }

    /// Verifies a logout token from the provider (OpenID Connect Back-Channel Logout 1.0, 2.6).
    ///
    /// One-time use is the caller's job: keep [`LogoutToken::jti`] per issuer until
    /// [`LogoutToken::replayable_until`] and refuse a token whose `jti` was seen.
    pub async fn verify_logout_token(&self, raw: &str) -> Result<LogoutToken, LogoutTokenError> {
        let unverified = Unverified::parse(raw).map_err(LogoutTokenError::Jws)?;
        let keys = self
            .jwks
            .keys_for(unverified.kid())
            .await
            .map_err(LogoutTokenError::Keys)?;
        let claims = unverified.verify(&keys).map_err(|error| match error {
            JwsError::MalformedClaims => LogoutTokenError::MalformedClaims,
            error => LogoutTokenError::Jws(error),
        })?;
        check_logout_claims(
            &claims,
            self.issuer.as_str(),
            &self.config.client_id,
            self.config.max_clock_skew,
            claim::now_unix(),
        )
    }
}

/// The `iss` a token claims, read without checking anything: only to pick the provider whose
/// keys then verify it.
pub fn unverified_issuer(raw: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = raw.split('.').nth(1)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).ok()?;
    claim::string(&claims, "iss")
}

/// The claim checks of a logout token after its signature (Back-Channel Logout 1.0, 2.6).
fn check_logout_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    max_clock_skew: Duration,
    now: i64,
) -> Result<LogoutToken, LogoutTokenError> {
    if claim::string(claims, "iss").as_deref() != Some(issuer) {
        return Err(LogoutTokenError::WrongIssuer);
    }
    if !claim::audiences(claims).contains(&client_id) {
        return Err(LogoutTokenError::WrongAudience);
    }
    let skew = max_clock_skew.as_secs() as i64;
    let max_age = LOGOUT_TOKEN_MAX_AGE.as_secs() as i64;
    let iat = claim::numeric_date(claims.get("iat")).ok_or(LogoutTokenError::BadIssueTime)?;
    if iat > now + skew || iat < now - skew - max_age {
        return Err(LogoutTokenError::BadIssueTime);
    }
    // Refused from here on as too old, whatever the skew (up to its maximum).
    let mut too_old_from = iat
        .saturating_add(max_age)
        .saturating_add(MAX_CLOCK_SKEW.as_secs() as i64)
        .saturating_add(1);
    if let Some(exp) = claims.get("exp") {
        let exp = claim::numeric_date(Some(exp)).ok_or(LogoutTokenError::Expired)?;
        if now >= exp + skew {
            return Err(LogoutTokenError::Expired);
        }
        too_old_from = too_old_from.min(exp.saturating_add(MAX_CLOCK_SKEW.as_secs() as i64));
    }
    let jti = claim::string(claims, "jti")
        .filter(|jti| !jti.is_empty())
        .ok_or(LogoutTokenError::MissingJti)?;
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err(LogoutTokenError::MissingEvent);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::NonceForbidden);
    }
    let sub = claim::string(claims, "sub");
    let sid = claim::string(claims, "sid");
    if sub.is_none() && sid.is_none() {
        return Err(LogoutTokenError::MissingSubjectAndSession);
    }
    Ok(LogoutToken {
        sub,
        sid,
        jti,
        replayable_until: u64::try_from(too_old_from).unwrap_or(0),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(yaml: &str) -> Result<ProviderConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn a_google_provider_gets_googles_issuer_and_no_groups_scope() {
        let config = parse(
            "name: google\nkind: google\nclient_id: abc\nclient_secret_file: /s\nhosted_domains: [Uniqe.Example]\n",
        )
        .unwrap();
        assert_eq!(config.issuer, "https://accounts.google.com");
        assert_eq!(config.scopes, ["openid", "email", "profile"]);
        assert_eq!(config.hosted_domains, ["uniqe.example"]);
        assert_eq!(config.display_name, "google");
        assert_eq!(config.max_clock_skew, Duration::from_secs(60));
    }

    #[test]
    fn a_generic_provider_asks_for_groups_and_needs_an_issuer() {
        let config = parse(
            "name: uniqe\nissuer: https://id.uniqe.example\nclient_id: abc\nclient_secret_file: /s\nmax_clock_skew: 30s\n",
        )
        .unwrap();
        assert_eq!(config.scopes, ["openid", "email", "profile", "groups"]);
        assert_eq!(config.groups_claim, "groups");
        assert_eq!(config.max_clock_skew, Duration::from_secs(30));
        let err = parse("name: uniqe\nclient_id: abc\nclient_secret_file: /s\n").unwrap_err();
        assert!(err.to_string().contains("issuer is required"), "{err}");
    }

    #[test]
    fn invalid_provider_configs_are_refused_with_the_reason() {
        let cases = [
            (
                "name: Bad_Name\nissuer: https://x\nclient_id: a\nclient_secret_file: /s\n",
                "name",
            ),
            (
                "name: x\nissuer: https://x\nclient_id: a\nclient_secret: inline\n",
                "unknown field",
            ),
            (
                "name: x\nissuer: https://x\nclient_id: a\nclient_secret_file: /s\nscopes: [email]\n",
                "openid",
            ),
            (
                "name: x\nissuer: https://x?a=b\nclient_id: a\nclient_secret_file: /s\n",
                "issuer",
            ),
            (
                "name: x\nissuer: https://x\nclient_id: ''\nclient_secret_file: /s\n",
                "client_id",
            ),
            (
                "name: x\nissuer: https://x\nclient_id: a\nclient_secret_file: /s\nmax_clock_skew: 1h\n",
                "max_clock_skew",
            ),
            (
                "name: x\nkind: google\nclient_id: a\nclient_secret_file: /s\nhosted_domains: ['a b']\n",
                "hosted domain",
            ),
        ];
        assert!(!cases.is_empty());
        for (yaml, needle) in cases {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
    }

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://id.example";

    fn logout_claims(change: impl FnOnce(&mut Map<String, Value>)) -> Map<String, Value> {
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": "sekisho", "iat": NOW, "exp": NOW + 120, "jti": "j1",
            "sub": "alice", "sid": "s1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        })
        .as_object()
        .cloned()
        .unwrap();
        change(&mut claims);
        claims
    }

    fn check(claims: &Map<String, Value>) -> Result<LogoutToken, LogoutTokenError> {
        check_logout_claims(claims, ISSUER, "sekisho", Duration::from_secs(60), NOW)
    }

    #[test]
    fn a_logout_token_names_its_jti_and_how_long_a_replay_would_verify() {
        let token = check(&logout_claims(|_| {})).unwrap();
        assert_eq!(token.jti, "j1");
        assert_eq!(token.sub.as_deref(), Some("alice"));
        assert_eq!(token.sid.as_deref(), Some("s1"));
        // exp plus the largest skew any configuration may allow.
        let until = (NOW + 120) as u64 + MAX_CLOCK_SKEW.as_secs();
        assert_eq!(token.replayable_until, until);
        let at = |now: i64, skew: u64| {
            check_logout_claims(
                &logout_claims(|_| {}),
                ISSUER,
                "sekisho",
                Duration::from_secs(skew),
                now,
            )
        };
        assert!(at(until as i64 - 1, MAX_CLOCK_SKEW.as_secs()).is_ok());
        assert!(matches!(
            at(until as i64, MAX_CLOCK_SKEW.as_secs()),
            Err(LogoutTokenError::Expired)
        ));

        // Without exp, the age limit on iat ends it.
        let token = check(&logout_claims(|c| {
            c.remove("exp");
        }))
        .unwrap();
        let until = NOW as u64 + LOGOUT_TOKEN_MAX_AGE.as_secs() + MAX_CLOCK_SKEW.as_secs() + 1;
        assert_eq!(token.replayable_until, until);
        let without_exp = logout_claims(|c| {
            c.remove("exp");
        });
        let at =
            |now: i64| check_logout_claims(&without_exp, ISSUER, "sekisho", MAX_CLOCK_SKEW, now);
        assert!(at(until as i64 - 1).is_ok());
        assert!(matches!(
            at(until as i64),
            Err(LogoutTokenError::BadIssueTime)
        ));
    }

    #[test]
    fn a_logout_token_without_a_jti_is_refused() {
        for jti in [Value::Null, json!(""), json!(7)] {
            let claims = logout_claims(|c| {
                if jti.is_null() {
                    c.remove("jti");
                } else {
                    c.insert("jti".into(), jti.clone());
                }
            });
            assert!(
                matches!(check(&claims), Err(LogoutTokenError::MissingJti)),
                "jti {jti}"
            );
        }
    }

    #[test]
    fn logout_tokens_outside_the_rules_are_refused_with_the_reason() {
        let cases: Vec<(Map<String, Value>, &str)> = vec![
            (
                logout_claims(|c| {
                    c.insert("iss".into(), json!("https://id.example/"));
                }),
                "WrongIssuer",
            ),
            (
                logout_claims(|c| {
                    c.insert("aud".into(), json!(["other"]));
                }),
                "WrongAudience",
            ),
            (
                logout_claims(|c| {
                    c.insert("iat".into(), json!(NOW + 61));
                }),
                "BadIssueTime",
            ),
            (
                logout_claims(|c| {
                    c.insert("iat".into(), json!(NOW - 361));
                }),
                "BadIssueTime",
            ),
            (
                logout_claims(|c| {
                    c.insert("exp".into(), json!(NOW - 60));
                }),
                "Expired",
            ),
            (
                logout_claims(|c| {
                    c.remove("events");
                }),
                "MissingEvent",
            ),
            (
                logout_claims(|c| {
                    c.insert("nonce".into(), json!("n"));
                }),
                "NonceForbidden",
            ),
            (
                logout_claims(|c| {
                    c.remove("sub");
                    c.remove("sid");
                }),
                "MissingSubjectAndSession",
            ),
        ];
        for (claims, expected) in cases {
            let err = check(&claims).unwrap_err();
            assert_eq!(format!("{err:?}"), expected);
        }
        assert!(
            check(&logout_claims(|c| {
                c.remove("sid");
            }))
            .is_ok()
        );
        assert!(
            check(&logout_claims(|c| {
                c.remove("sub");
            }))
            .is_ok()
        );
    }

    #[test]
    fn the_unverified_issuer_is_read_from_the_payload() {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"iss":"https://id.example"}"#)
        );
        assert_eq!(unverified_issuer(&token).as_deref(), Some(ISSUER));
        assert_eq!(unverified_issuer("not a token"), None);
        assert_eq!(unverified_issuer(&format!("x.{}.y", b64("[]"))), None);
    }

    #[test]
    fn secrets_in_a_pending_login_are_not_printed() {
        let pending = PendingLogin {
            provider: "p".into(),
            state: LoginSecret("the-state".into()),
            nonce: LoginSecret("the-nonce".into()),
            pkce_verifier: LoginSecret("the-verifier".into()),
            redirect_uri: Url::parse("https://auth.example/cb").unwrap(),
            created_at: 1,
        };
        let printed = format!("{pending:?} {:?}", RawIdToken::new("eyJ.token".into()));
        for secret in ["the-state", "the-nonce", "the-verifier", "eyJ.token"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        let json = serde_json::to_string(&pending).unwrap();
        let back: PendingLogin = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pending);
    }
}
