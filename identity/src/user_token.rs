//! Sekisho's own short-lived user tokens: what the CLI holds and sends as a bearer token.
//!
//! An ES256 JWT whose header `typ` is [`TOKEN_TYPE`] (`sekisho-user+jwt`), so that it can never
//! be taken for an upstream assertion or any other JWT signed by the same keys, and the other
//! way round. Claims: [`UserClaims`]. Verification fixes the algorithm to ES256 and checks the
//! type, the key id, the signature, the audience (the proxy), the issuer and the validity window,
//! in that order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::signing::{
    Expectation, Identity, SignError, SigningKeys, TimedClaims, TokenError, VerifyingKeys,
    session_id_hex,
};

/// The JOSE header `typ` of a user token.
pub const TOKEN_TYPE: &str = "sekisho-user+jwt";

/// How long a user token is valid.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What a user token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// Sekisho's auth host URL.
    pub iss: String,
    /// The proxy the token is for.
    pub aud: String,
    /// The IdP's `sub`.
    pub sub: String,
    /// May be empty when the IdP gave none.
    pub email: String,
    pub groups: Vec<String>,
    /// The session id the token was issued from, 32 lowercase hex digits.
    pub sid: String,
    /// Unix seconds.
    pub iat: u64,
    /// Unix seconds.
    pub exp: u64,
    /// A random token id (16 bytes, base64url): what revocation and logs name a token by.
    pub jti: String,
}

impl TimedClaims for UserClaims {
    fn issued_at(&self) -> u64 {
        self.iat
    }
    fn expires_at(&self) -> u64 {
        self.exp
    }
}

/// A signed user token; `Debug` never shows it (it is a bearer credential).
#[derive(Clone, PartialEq, Eq)]
pub struct UserToken(String);

impl UserToken {
    /// The token text, for the `Authorization: Bearer` header or the CLI's token file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserToken(<redacted>)")
    }
}

/// A freshly issued token and what it says.
#[derive(Debug, Clone)]
pub struct IssuedUserToken {
    pub token: UserToken,
    pub claims: UserClaims,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the operating system's random number generator failed")]
    RandomUnavailable,
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Issues and verifies user tokens for one proxy.
#[derive(Clone)]
pub struct UserTokens {
    keys: Arc<SigningKeys>,
    issuer: String,
    audience: String,
    lifetime: u64,
    rng: SystemRandom,
}

impl fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl UserTokens {
    /// Tokens signed by the newest key of `keys`, from `issuer` (the auth host URL), for
    /// `audience` (the proxy).
    pub fn new(
        keys: Arc<SigningKeys>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            lifetime: DEFAULT_LIFETIME.as_secs(),
            rng: SystemRandom::new(),
        }
    }

    /// Tokens live `lifetime` (whole seconds, at least one).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.as_secs().max(1);
        self
    }

    /// A new token for the session `session_id` of `identity`, issued at `now` (Unix seconds).
    pub fn issue(
        &self,
        session_id: [u8; 16],
        identity: &Identity<'_>,
        now: u64,
    ) -> Result<IssuedUserToken, IssueError> {
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| IssueError::RandomUnavailable)?;
        let claims = UserClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: identity.subject.to_owned(),
            email: identity.email.to_owned(),
            groups: identity.groups.to_vec(),
            sid: session_id_hex(&session_id),
            iat: now,
            exp: now.saturating_add(self.lifetime),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let token = UserToken(self.keys.sign(TOKEN_TYPE, &claims)?);
        Ok(IssuedUserToken { token, claims })
    }

    /// Verifies a token presented at `now` (Unix seconds) against every key in the ring.
    pub fn verify(&self, token: &str, now: u64) -> Result<UserClaims, TokenError> {
        verify(
            token,
            self.keys.verifying_keys(),
            &self.issuer,
            &self.audience,
            now,
        )
    }
}

/// Verifies a user token with `keys` (for a verifier that holds only the JWKS).
pub fn verify(
    token: &str,
    keys: &VerifyingKeys,
    issuer: &str,
    audience: &str,
    now: u64,
) -> Result<UserClaims, TokenError> {
    keys.verify(
        token,
        &Expectation {
            typ: Some(TOKEN_TYPE),
            issuer,
            audience,
            now,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://auth.example.com";
    const PROXY: &str = "https://gate.example.com";
    const SESSION: [u8; 16] = [0x42; 16];

    fn tokens() -> UserTokens {
        UserTokens::new(Arc::new(SigningKeys::generate().unwrap()), ISSUER, PROXY)
    }

    fn issue(tokens: &UserTokens) -> IssuedUserToken {
        let groups = vec!["staff".to_owned()];
        let who = Identity {
            subject: "user-123",
            email: "ada@example.com",
            groups: &groups,
        };
        tokens.issue(SESSION, &who, NOW).unwrap()
    }

    /// Re-encodes a token's header and claims as given, keeping its signature.
    fn with_parts(token: &str, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signature = token.rsplit('.').next().unwrap();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature
        )
    }

    fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
        let mut it = token.split('.');
        let mut next = || {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap()
        };
        (next(), next())
    }

    #[test]
    fn an_issued_token_verifies_and_round_trips_its_claims() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let claims = tokens.verify(issued.token.expose(), NOW + 60).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.exp, NOW + 15 * 60);
        assert_eq!(claims.sid, "42".repeat(16));
        assert_eq!(claims.aud, PROXY);
        assert_eq!(claims.jti.len(), 22);
        let header = jsonwebtoken::decode_header(issued.token.expose()).unwrap();
        assert_eq!(header.typ.as_deref(), Some(TOKEN_TYPE));
    }

    #[test]
    fn two_tokens_have_different_ids() {
        let tokens = tokens();
        assert_ne!(issue(&tokens).claims.jti, issue(&tokens).claims.jti);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let issued = issue(&tokens());
        assert!(!format!("{issued:?}").contains(issued.token.expose()));
    }

    #[test]
    fn an_expired_token_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let late = issued.claims.exp + crate::signing::CLOCK_SKEW_LEEWAY_SECS;
        assert_eq!(
            tokens.verify(issued.token.expose(), late),
            Err(TokenError::Expired {
                expired_at: issued.claims.exp,
                now: late
            })
        );
    }

    #[test]
    fn a_token_for_another_proxy_is_rejected() {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let ours = UserTokens::new(keys.clone(), ISSUER, PROXY);
        let theirs = UserTokens::new(keys, ISSUER, "https://other.example.com");
        let issued = issue(&theirs);
        assert_eq!(
            ours.verify(issued.token.expose(), NOW),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn a_token_from_another_issuer_is_rejected() {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let ours = UserTokens::new(keys.clone(), ISSUER, PROXY);
        let theirs = UserTokens::new(keys, "https://auth.other.example", PROXY);
        let issued = issue(&theirs);
        assert_eq!(
            ours.verify(issued.token.expose(), NOW),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn a_token_signed_by_a_key_outside_the_ring_is_rejected_as_unknown_kid() {
        let stranger = issue(&tokens());
        assert!(matches!(
            tokens().verify(stranger.token.expose(), NOW),
            Err(TokenError::UnknownKeyId { .. })
        ));
    }

    #[test]
    fn a_token_with_another_typ_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let (mut header, claims) = parts(issued.token.expose());
        for typ in [serde_json::json!("JWT"), serde_json::Value::Null] {
            header["typ"] = typ;
            let forged = with_parts(issued.token.expose(), &header, &claims);
            assert!(matches!(
                tokens.verify(&forged, NOW),
                Err(TokenError::WrongType { .. })
            ));
        }
    }

    #[test]
    fn an_assertion_is_not_accepted_as_a_user_token() {
        let keys = Arc::new(SigningKeys::generate().unwrap());
        let tokens = UserTokens::new(keys.clone(), ISSUER, PROXY);
        let groups = vec![];
        let who = Identity {
            subject: "s",
            email: "",
            groups: &groups,
        };
        let assertion = crate::assertion::AssertionIssuer::new(keys, ISSUER)
            .assertion(SESSION, PROXY, &who, NOW)
            .unwrap();
        assert!(matches!(
            tokens.verify(&assertion, NOW),
            Err(TokenError::WrongType { .. })
        ));
    }

    #[test]
    fn a_tampered_token_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let (header, mut claims) = parts(issued.token.expose());
        claims["groups"] = serde_json::json!(["admin"]);
        let forged = with_parts(issued.token.expose(), &header, &claims);
        assert_eq!(tokens.verify(&forged, NOW), Err(TokenError::BadSignature));

        // A character well inside the signature: the last one carries padding bits, and a
        // change there may only make the encoding non-canonical.
        let mut flipped = issued.token.expose().as_bytes().to_vec();
        let at = flipped.len() - 10;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(tokens.verify(&flipped, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn an_hs256_token_keyed_with_the_public_key_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let kid = tokens.keys.newest().kid().to_owned();
        let jwks: serde_json::Value = serde_json::from_str(&tokens.keys.jwks_json()).unwrap();
        let mut secrets = vec![tokens.keys.jwks_json().into_bytes()];
        for coord in ["x", "y"] {
            secrets.push(jwks["keys"][0][coord].as_str().unwrap().as_bytes().to_vec());
        }
        for secret in secrets {
            let mut header = Header::new(Algorithm::HS256);
            header.typ = Some(TOKEN_TYPE.to_owned());
            header.kid = Some(kid.clone());
            let forged =
                jsonwebtoken::encode(&header, &issued.claims, &EncodingKey::from_secret(&secret))
                    .unwrap();
            assert_eq!(
                tokens.verify(&forged, NOW),
                Err(TokenError::WrongAlgorithm {
                    found: "HS256".into()
                })
            );
        }
    }

    #[test]
    fn an_unsigned_alg_none_token_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let (mut header, claims) = parts(issued.token.expose());
        header["alg"] = serde_json::json!("none");
        let forged = with_parts(issued.token.expose(), &header, &claims);
        let unsigned = format!("{}.", forged.rsplit_once('.').unwrap().0);
        assert_eq!(tokens.verify(&forged, NOW), Err(TokenError::Malformed));
        assert_eq!(tokens.verify(&unsigned, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn garbage_is_rejected_as_malformed() {
        let tokens = tokens();
        for garbage in ["", "a.b", "a.b.c", "....", "eyJ.eyJ.sig"] {
            assert_eq!(
                tokens.verify(garbage, NOW),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn a_token_without_kid_is_rejected() {
        let tokens = tokens();
        let issued = issue(&tokens);
        let (mut header, claims) = parts(issued.token.expose());
        header.as_object_mut().unwrap().remove("kid");
        let forged = with_parts(issued.token.expose(), &header, &claims);
        assert_eq!(tokens.verify(&forged, NOW), Err(TokenError::MissingKeyId));
    }
}
