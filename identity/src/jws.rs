//! Verifying the compact JWS tokens that openidconnect does not verify itself (back-channel
//! logout tokens, bearer access tokens), with `jsonwebtoken`.
//!
//! `jsonwebtoken` reads the header ([`jsonwebtoken::decode_header`]), takes the issuer's key
//! from its JWK ([`DecodingKey::from_jwk`]) and checks the signature ([`jsonwebtoken::decode`])
//! with the algorithms pinned per key in its [`Validation`]: those of [`SIGNING_ALGORITHMS`]
//! that fit the key's type and curve, and only the key's own `alg` when the JWK names one. So
//! never `none` and never HMAC, whatever the header says. It checks no claim here (no required
//! claims, `exp`, `nbf` and `aud` off): the callers check `iss`, `aud`, `azp`, `exp`, `iat`, …
//! themselves, against the `now` they also cache by, with an error that names each rule.
//!
//! What stays here, and why:
//! - a size limit before anything is decoded: `jsonwebtoken` has none;
//! - the token's shape (three segments, payload and signature base64url, a signature) checked
//!   before the keys are looked up, so that garbage never costs a key-set refetch:
//!   `jsonwebtoken` reads the payload and the signature only once it has a key;
//! - refusing a token with a `crit` header: `jsonwebtoken` parses `crit` but acts on none;
//! - naming a refused algorithm that `jsonwebtoken` does not know (`none`, `ES512`, …): its
//!   [`Header`] cannot hold one, so the name is read from the raw header for the error;
//! - picking the one key of the issuer's set that fits the header (`kid`, key type, `use`):
//!   `jsonwebtoken` only finds a key by `kid`, and a set with two fitting keys is refused here
//!   rather than guessed from.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use openidconnect::core::{
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJsonWebKeyType, CoreJwsSigningAlgorithm,
};
use openidconnect::{JsonWebKey, JsonWebKeyUse};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The signature algorithms accepted on any token this crate verifies.
pub const SIGNING_ALGORITHMS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// [`SIGNING_ALGORITHMS`] as `jsonwebtoken` names them, in the same order.
const JWT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
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
    /// The signature is good but the payload is not a JSON object; the callers report this as
    /// their own `MalformedClaims`.
    #[error("token claims are not a JSON object")]
    MalformedClaims,
}

/// A parsed, not yet verified compact JWS.
pub(crate) struct Unverified<'a> {
    token: &'a str,
    header: Header,
}

impl<'a> Unverified<'a> {
    /// Checks the size and shape of `token`, reads its header, and refuses `crit` and
    /// algorithms outside [`SIGNING_ALGORITHMS`].
    pub(crate) fn parse(token: &'a str) -> Result<Self, JwsError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwsError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(encoded_header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed);
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unreadable_header(encoded_header))?;
        if header.crit.is_some() {
            return Err(JwsError::CriticalHeader);
        }
        if !JWT_ALGORITHMS.contains(&header.alg) {
            return Err(JwsError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwsError::Malformed)?;
        if signature.is_empty() || URL_SAFE_NO_PAD.decode(payload).is_err() {
            return Err(JwsError::Malformed);
        }
        Ok(Self { token, header })
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// Checks the signature with the one key in `keys` that fits the header, and returns the
    /// claims (none of them checked).
    pub(crate) fn verify(self, keys: &CoreJsonWebKeySet) -> Result<Map<String, Value>, JwsError> {
        let key_type = key_type(self.header.alg);
        let candidates: Vec<&CoreJsonWebKey> = keys
            .keys()
            .iter()
            .filter(|key| match &self.header.kid {
                Some(kid) => key.key_id().is_some_and(|id| id.as_str() == kid),
                None => true,
            })
            .filter(|key| *key.key_type() == key_type)
            .filter(|key| key.key_use().is_none_or(|u| u.allows_signature()))
            .collect();
        let key = match candidates.as_slice() {
            [] => return Err(JwsError::NoMatchingKey),
            [key] => key,
            _ => return Err(JwsError::AmbiguousKey),
        };
        let (key, algorithms) = verification_key(key).ok_or(JwsError::BadSignature)?;

        let mut validation = Validation::new(self.header.alg);
        validation.algorithms = algorithms;
        // Claims are the callers' to check (see the module documentation).
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Map<String, Value>>(self.token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                // The header was read in `parse`, so only the claims can fail to deserialize.
                ErrorKind::Json(_) => JwsError::MalformedClaims,
                _ => JwsError::BadSignature,
            })
    }
}

/// Why a header that `jsonwebtoken` cannot read is refused: `crit`, or an algorithm it does not
/// know, which is named from the raw header; anything else is malformed.
fn unreadable_header(encoded: &str) -> JwsError {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        crit: Option<Value>,
    }
    let Some(raw) = URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|json| serde_json::from_slice::<RawHeader>(&json).ok())
    else {
        return JwsError::Malformed;
    };
    let allowed = raw
        .alg
        .parse::<Algorithm>()
        .is_ok_and(|alg| JWT_ALGORITHMS.contains(&alg));
    if raw.crit.is_some() {
        JwsError::CriticalHeader
    } else if allowed {
        // A known algorithm, but another header member of the wrong shape.
        JwsError::Malformed
    } else {
        JwsError::AlgorithmNotAllowed(raw.alg)
    }
}

/// The JWK key type that signs with `alg`.
fn key_type(alg: Algorithm) -> CoreJsonWebKeyType {
    match alg.family() {
        AlgorithmFamily::Rsa => CoreJsonWebKeyType::RSA,
        AlgorithmFamily::Ec => CoreJsonWebKeyType::EllipticCurve,
        AlgorithmFamily::Ed => CoreJsonWebKeyType::OctetKeyPair,
        AlgorithmFamily::Hmac => CoreJsonWebKeyType::Symmetric,
    }
}

/// `key` as `jsonwebtoken` takes it, with the algorithms it may verify: those of
/// [`JWT_ALGORITHMS`] that fit its type and curve, and of those only its own `alg` when it names
/// one. `None` when the key cannot be used at all.
fn verification_key(key: &CoreJsonWebKey) -> Option<(DecodingKey, Vec<Algorithm>)> {
    let jwk: Jwk = serde_json::from_value(serde_json::to_value(key).ok()?).ok()?;
    let fits = |alg: Algorithm| match (alg, &jwk.algorithm) {
        (Algorithm::RS256 | Algorithm::PS256, AlgorithmParameters::RSA(_)) => true,
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(ec)) => {
            ec.curve == EllipticCurve::P256
        }
        (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(okp)) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    let named = jwk.common.key_algorithm;
    let algorithms = JWT_ALGORITHMS
        .into_iter()
        .filter(|alg| fits(*alg))
        .filter(|alg| named.is_none_or(|named| named == KeyAlgorithm::from(*alg)))
        .collect();
    Some((DecodingKey::from_jwk(&jwk).ok()?, algorithms))
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::{EncodingKey, encode};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// An RSA key made by `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`,
    /// as PKCS#1 DER (what `jsonwebtoken` signs with) and as a public JWK.
    const RSA_PKCS1_DER: &[u8] = include_bytes!("../testdata/rsa-2048.der");
    const RSA_JWK: &str = include_str!("../testdata/rsa-2048.jwk.json");

    fn key_set(keys: Value) -> CoreJsonWebKeySet {
        serde_json::from_value(json!({ "keys": keys })).unwrap()
    }

    fn rsa_jwk(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut jwk: Map<String, Value> = serde_json::from_str(RSA_JWK).unwrap();
        change(&mut jwk);
        Value::Object(jwk)
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    fn verify(token: &str, keys: &CoreJsonWebKeySet) -> Result<Map<String, Value>, JwsError> {
        Unverified::parse(token)?.verify(keys)
    }

    #[test]
    fn the_signing_algorithms_are_the_same_in_both_libraries() {
        let names = |values: Vec<Value>| -> Vec<String> {
            values
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let openidconnect = SIGNING_ALGORITHMS.map(|a| serde_json::to_value(a).unwrap());
        let jsonwebtoken = JWT_ALGORITHMS.map(|a| serde_json::to_value(a).unwrap());
        assert_eq!(names(openidconnect.to_vec()), names(jsonwebtoken.to_vec()));
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
    fn algorithms_outside_the_list_are_refused_by_name() {
        for alg in ["RS384", "ES384", "PS512", "ES512", "RS1"] {
            let token = format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64("{}")
            );
            assert!(
                matches!(
                    Unverified::parse(&token),
                    Err(JwsError::AlgorithmNotAllowed(a)) if a == alg
                ),
                "{alg}"
            );
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
        // A `crit` that is not even a list of names, with an algorithm jsonwebtoken knows or not.
        for alg in ["RS256", "none"] {
            let token = format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}","crit":7}}"#)),
                b64("{}")
            );
            assert!(
                matches!(Unverified::parse(&token), Err(JwsError::CriticalHeader)),
                "{alg}"
            );
        }
        let token = format!("{}.{}.e30.c2ln", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert!(matches!(
            Unverified::parse(&token),
            Err(JwsError::Malformed)
        ));
        assert!(matches!(Unverified::parse("a.b"), Err(JwsError::Malformed)));
    }

    #[test]
    fn a_token_without_a_signature_or_with_broken_parts_is_malformed() {
        let header = b64(r#"{"alg":"RS256"}"#);
        let payload = b64("{}");
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.not*base64"),
            format!("{header}.not*base64.c2ln"),
            format!("not*base64.{payload}.c2ln"),
            format!("{}.{payload}.c2ln", b64("[]")),
        ] {
            assert!(
                matches!(Unverified::parse(&token), Err(JwsError::Malformed)),
                "{token}"
            );
        }
        let long = format!("{header}.{}.c2ln", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(Unverified::parse(&long), Err(JwsError::TooLong)));
    }

    #[test]
    fn rsa_tokens_verify_with_pkcs1_and_pss_and_any_change_breaks_them() {
        let keys = key_set(json!([rsa_jwk(|_| {})]));
        let encoding = EncodingKey::from_rsa_der(RSA_PKCS1_DER);
        let claims = json!({"iss": "https://id.example", "sub": "alice"});
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            let token = sign(alg, Some("rsa-1"), &encoding, &claims);
            let got = verify(&token, &keys).unwrap();
            assert_eq!(Value::Object(got), claims, "{alg:?}");

            let (signed, _) = token.rsplit_once('.').unwrap();
            let other = sign(alg, Some("rsa-1"), &encoding, &json!({"sub": "bob"}));
            let (_, other_signature) = other.rsplit_once('.').unwrap();
            let spliced = format!("{signed}.{other_signature}");
            assert!(
                matches!(verify(&spliced, &keys), Err(JwsError::BadSignature)),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn a_key_that_names_its_algorithm_verifies_no_other() {
        let keys = key_set(json!([rsa_jwk(|jwk| {
            jwk.insert("alg".into(), json!("RS256"));
        })]));
        let encoding = EncodingKey::from_rsa_der(RSA_PKCS1_DER);
        let claims = json!({"sub": "alice"});
        assert!(verify(&sign(Algorithm::RS256, None, &encoding, &claims), &keys).is_ok());
        assert!(matches!(
            verify(&sign(Algorithm::PS256, None, &encoding, &claims), &keys),
            Err(JwsError::BadSignature)
        ));
    }

    #[test]
    fn keys_are_picked_by_kid_type_and_use() {
        let encoding = EncodingKey::from_rsa_der(RSA_PKCS1_DER);
        let claims = json!({"sub": "alice"});
        let token = sign(Algorithm::RS256, Some("rsa-1"), &encoding, &claims);
        let without_kid = sign(Algorithm::RS256, None, &encoding, &claims);

        // An encryption key with the same kid is no candidate.
        let keys = key_set(json!([
            rsa_jwk(|_| {}),
            rsa_jwk(|jwk| {
                jwk.insert("use".into(), json!("enc"));
            }),
        ]));
        assert!(verify(&token, &keys).is_ok());
        assert!(verify(&without_kid, &keys).is_ok());

        let keys = key_set(json!([rsa_jwk(|jwk| {
            jwk.insert("kid".into(), json!("rsa-2"));
        })]));
        assert!(matches!(
            verify(&token, &keys),
            Err(JwsError::NoMatchingKey)
        ));

        // Without a kid, two signing keys of the type are one too many.
        let keys = key_set(json!([
            rsa_jwk(|_| {}),
            rsa_jwk(|jwk| {
                jwk.insert("kid".into(), json!("rsa-2"));
            }),
        ]));
        assert!(verify(&token, &keys).is_ok());
        assert!(matches!(
            verify(&without_kid, &keys),
            Err(JwsError::AmbiguousKey)
        ));
    }

    #[test]
    fn es256_and_eddsa_tokens_verify_with_keys_of_their_curve_only() {
        let signing = crate::signing::SigningKeys::generate().unwrap();
        let jwks: Value = serde_json::from_str(&signing.jwks_json()).unwrap();
        let p256 = jwks["keys"][0].clone();
        let claims = json!({"sub": "alice"});
        let es256 = signing.sign("JWT", &claims).unwrap();
        let kid = signing.newest().kid();
        assert!(verify(&es256, &key_set(json!([p256.clone()]))).is_ok());
        let mut p384 = p256.clone();
        p384["crv"] = json!("P-384");
        p384.as_object_mut().unwrap().remove("alg");
        assert!(matches!(
            verify(&es256, &key_set(json!([p384]))),
            Err(JwsError::BadSignature)
        ));

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let token = sign(
            Algorithm::EdDSA,
            Some(kid),
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
            &claims,
        );
        let ed25519 = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid});
        let got = verify(&token, &key_set(json!([ed25519, p256]))).unwrap();
        assert_eq!(Value::Object(got), claims);
    }

    #[test]
    fn a_signed_payload_with_a_registered_claim_twice_is_malformed_claims() {
        let keys = key_set(json!([rsa_jwk(|_| {})]));
        let encoding = EncodingKey::from_rsa_der(RSA_PKCS1_DER);
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"sub":"alice","exp":1,"exp":2}"#)
        );
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &encoding, Algorithm::RS256);
        let token = format!("{input}.{}", signature.unwrap());
        assert!(matches!(
            verify(&token, &keys),
            Err(JwsError::MalformedClaims)
        ));
    }

    #[test]
    fn a_signed_payload_that_is_not_an_object_is_malformed_claims() {
        let keys = key_set(json!([rsa_jwk(|_| {})]));
        let encoding = EncodingKey::from_rsa_der(RSA_PKCS1_DER);
        let token = sign(Algorithm::RS256, None, &encoding, &json!(["a", "b"]));
        assert!(matches!(
            verify(&token, &keys),
            Err(JwsError::MalformedClaims)
        ));
    }
}
