//! The GitHub App's JWT, checked as GitHub checks it: RS256 under the App's public key, `iss`
//! the App's id, `iat` not in the future, `exp` not past and at most 10 minutes after `iat`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::Value;

/// How far a clock may be ahead of ours: GitHub tells Apps to set `iat` 60 s in the past for
/// the same reason.
const SKEW: i64 = 60;
/// The longest a JWT may live.
const LIFETIME: i64 = 600;

/// Why a JWT is refused: GitHub's words, which the 401 answer carries.
pub(crate) fn verify(jwt: &str, app_id: u64, public_key: &[u8], now: i64) -> Result<(), String> {
    let undecodable = || "A JSON web token could not be decoded".to_owned();
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(undecodable());
    };
    let json = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| undecodable())?;
        serde_json::from_slice(&bytes).map_err(|_| undecodable())
    };
    let header = json(header)?;
    if header["alg"] != "RS256" {
        return Err("'alg' must be RS256".to_owned());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| undecodable())?;
    let signed = &jwt[..jwt.rfind('.').unwrap_or(0)];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| {
            "A JSON web token could not be decoded: the signature does not verify".to_owned()
        })?;
    let claims = json(claims)?;
    let issuer = match &claims["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    if issuer != Some(app_id) {
        return Err("'Issuer' claim ('iss') must be the App's id".to_owned());
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("'iat' and 'exp' must be integers".to_owned());
    };
    if iat > now + SKEW {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past"
                .to_owned(),
        );
    }
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".to_owned());
    }
    if exp - iat > LIFETIME {
        return Err("'Expiration time' claim ('exp') is too far in the future".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::RsaKeyPair;
    use serde_json::json;

    use super::*;
    use crate::{APP_KEY, OTHER_KEY, private_key_der};

    fn sign(pem: &str, header: &Value, claims: &Value) -> String {
        let key =
            RsaKeyPair::from_der(&private_key_der(pem).expect("a PKCS#1 key")).expect("an RSA key");
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .expect("signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn public() -> Vec<u8> {
        crate::public_key(APP_KEY).expect("the test key")
    }

    const NOW: i64 = 1_800_000_000;

    fn claims(iss: Value, iat: i64, exp: i64) -> Value {
        json!({"iss": iss, "iat": iat, "exp": exp})
    }

    #[test]
    fn a_token_signed_by_the_apps_key_for_its_id_is_accepted() {
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let jwt = sign(APP_KEY, &header, &claims(json!(42), NOW - 60, NOW + 540));
        assert_eq!(verify(&jwt, 42, &public(), NOW), Ok(()));
        let jwt = sign(APP_KEY, &header, &claims(json!("42"), NOW - 60, NOW + 540));
        assert_eq!(verify(&jwt, 42, &public(), NOW), Ok(()));
    }

    #[test]
    fn another_key_another_app_a_long_life_or_an_expired_token_is_refused() {
        let header = json!({"alg": "RS256"});
        let good = claims(json!(42), NOW - 60, NOW + 540);
        for (pem, claims) in [
            (OTHER_KEY, good.clone()),
            (APP_KEY, claims(json!(43), NOW - 60, NOW + 540)),
            (APP_KEY, claims(json!(42), NOW - 60, NOW + 600)),
            (APP_KEY, claims(json!(42), NOW - 700, NOW - 100)),
            (APP_KEY, claims(json!(42), NOW + 120, NOW + 500)),
            (APP_KEY, json!({"iss": 42})),
        ] {
            let jwt = sign(pem, &header, &claims);
            assert!(verify(&jwt, 42, &public(), NOW).is_err(), "{claims}");
        }
        let jwt = sign(APP_KEY, &json!({"alg": "HS256"}), &good);
        assert!(verify(&jwt, 42, &public(), NOW).is_err());
        assert!(verify("not.a.jwt", 42, &public(), NOW).is_err());
        let jwt = sign(APP_KEY, &header, &good);
        assert!(verify(&format!("{jwt}.x"), 42, &public(), NOW).is_err());
    }
}
