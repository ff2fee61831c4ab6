//! Compact JWS parsing and signature checks for the tokens openidconnect does not verify itself
//! (back-channel logout tokens, bearer access tokens).
//!
//! The cryptography is openidconnect's own (`CoreJsonWebKey::verify_signature`), so the crate
//! carries one set of signature implementations. Only asymmetric algorithms from
//! [`SIGNING_ALGORITHMS`] are accepted: never `none`, never HMAC, whatever the header says.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyUse, JwsSigningAlgorithm};
use serde::Deserialize;

/// The signature algorithms accepted on any token this crate verifies.
pub const SIGNING_ALGORITHMS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Largest token accepted, in bytes, before any decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("token algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("token has critical header parameters")]
    CriticalHeader,
    #[error("no key of the issuer matches the token")]
    NoMatchingKey,
    #[error("more than one key of the issuer matches the token")]
    AmbiguousKey,
    #[error("token signature is invalid")]
    BadSignature,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A parsed, not yet verified compact JWS.
pub(crate) struct Unverified<'a> {
    alg: CoreJwsSigningAlgorithm,
    kid: Option<String>,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Splits and decodes `token`, and refuses algorithms outside [`SIGNING_ALGORITHMS`].
    pub(crate) fn parse(token: &'a str) -> Result<Self, JwsError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwsError::TooLong);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(JwsError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(JwsError::Malformed)?;
        if payload.contains('.') {
            return Err(JwsError::Malformed);
        }
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwsError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwsError::Malformed)?;
        if header.crit.is_some() {
            return Err(JwsError::CriticalHeader);
        }
        let alg = serde_json::from_value::<CoreJwsSigningAlgorithm>(serde_json::Value::String(
            header.alg.clone(),
        ))
        .ok()
        .filter(|alg| SIGNING_ALGORITHMS.contains(alg))
        .ok_or(JwsError::AlgorithmNotAllowed(header.alg))?;
        let signature = decode(signature)?;
        if signature.is_empty() {
            return Err(JwsError::Malformed);
        }
        Ok(Self {
            alg,
            kid: header.kid,
            signing_input,
            payload: decode(payload)?,
            signature,
        })
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Checks the signature against the one key in `keys` that fits the header, and returns the
    /// payload bytes.
    pub(crate) fn verify(self, keys: &CoreJsonWebKeySet) -> Result<Vec<u8>, JwsError> {
        let key_type = self.alg.key_type();
        let candidates: Vec<&CoreJsonWebKey> = keys
            .keys()
            .iter()
            .filter(|key| match &self.kid {
                Some(kid) => key.key_id().is_some_and(|id| id.as_str() == kid),
                None => true,
            })
            .filter(|key| key_type.as_ref() == Some(key.key_type()))
            .filter(|key| key.key_use().is_none_or(|u| u.allows_signature()))
            .collect();
        let key = match candidates.as_slice() {
            [] => return Err(JwsError::NoMatchingKey),
            [key] => key,
            _ => return Err(JwsError::AmbiguousKey),
        };
        key.verify_signature(&self.alg, self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwsError::BadSignature)?;
        Ok(self.payload)
    }
}

/// The `kid` in a token's header, if the header can be read at all.
pub(crate) fn header_kid(token: &str) -> Option<String> {
    let (header, _) = token.split_once('.')?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header.kid
}

/// Seconds since the Unix epoch, as JWT `NumericDate`s count them.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A `NumericDate` claim as whole seconds; fractions are dropped, anything else is `None`.
pub(crate) fn numeric_date(value: Option<&serde_json::Value>) -> Option<i64> {
    let value = value?;
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn alg_none_is_refused() {
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert!(matches!(
            Unverified::parse(&token),
            Err(JwsError::AlgorithmNotAllowed(_)) | Err(JwsError::Malformed)
        ));
        let token = format!("{}.{}.c2ln", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert!(matches!(
            Unverified::parse(&token),
            Err(JwsError::AlgorithmNotAllowed(a)) if a == "none"
        ));
    }

    #[test]
    fn hmac_algorithms_are_refused() {
        for alg in ["HS256", "HS384", "HS512"] {
            let token = format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64("{}")
            );
            assert!(matches!(
                Unverified::parse(&token),
                Err(JwsError::AlgorithmNotAllowed(a)) if a == alg
            ));
        }
    }

    #[test]
    fn critical_headers_and_extra_segments_are_refused() {
        let token = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","crit":["x"]}"#),
            b64("{}")
        );
        assert!(matches!(
            Unverified::parse(&token),
            Err(JwsError::CriticalHeader)
        ));
        let token = format!("{}.{}.e30.c2ln", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert!(matches!(
            Unverified::parse(&token),
            Err(JwsError::Malformed)
        ));
        assert!(matches!(Unverified::parse("a.b"), Err(JwsError::Malformed)));
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_only() {
        assert_eq!(numeric_date(Some(&serde_json::json!(10))), Some(10));
        assert_eq!(numeric_date(Some(&serde_json::json!(10.7))), Some(10));
        assert_eq!(numeric_date(Some(&serde_json::json!("10"))), None);
        assert_eq!(numeric_date(None), None);
    }
}
