//! The GitHub App's credentials, read from its Secret (`app-id`, `private-key`), and the JWT
//! the App proves itself with: RS256, `iss` the App's id, issued 60 s in the past (for clock
//! drift, as GitHub advises) and expiring 9 minutes from now, within GitHub's 10-minute limit.

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;

/// The key of the App's id in its Secret.
pub(crate) const APP_ID_KEY: &str = "app-id";
/// The key of the App's private key (PEM) in its Secret.
pub(crate) const PRIVATE_KEY_KEY: &str = "private-key";

/// How far back `iat` is set.
const BACKDATE: u64 = 60;
/// How long after now the JWT expires.
const LIFETIME: u64 = 540;

/// What is wrong with the App's Secret. The messages name keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CredentialsError {
    #[error("has no key `{APP_ID_KEY}`")]
    IdMissing,
    #[error("`{APP_ID_KEY}` is not the App's numeric id")]
    IdInvalid,
    #[error("has no key `{PRIVATE_KEY_KEY}`")]
    KeyMissing,
    #[error(
        "`{PRIVATE_KEY_KEY}` is not an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY`, as GitHub issues them, or PKCS#8 `PRIVATE KEY`)"
    )]
    KeyInvalid,
    #[error("`{PRIVATE_KEY_KEY}` cannot sign a JWT")]
    Signing,
}

/// A GitHub App: its id and private key. `Debug` shows the id only.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) id: u64,
    key: EncodingKey,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A signed JWT of the App. `Debug` does not show it.
pub(crate) struct Jwt(pub(crate) String);

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Jwt(<redacted>)")
    }
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    iat: u64,
    exp: u64,
}

impl App {
    /// The App of a Secret with `app-id` and `private-key`.
    pub(crate) fn from_secret(secret: &Secret) -> Result<Self, CredentialsError> {
        let value = |key: &str| secret.data.as_ref().and_then(|d| d.get(key)).map(|v| &v.0);
        let id = value(APP_ID_KEY).ok_or(CredentialsError::IdMissing)?;
        let id = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.trim().parse::<u64>().ok())
            .ok_or(CredentialsError::IdInvalid)?;
        let pem = value(PRIVATE_KEY_KEY).ok_or(CredentialsError::KeyMissing)?;
        Self::new(id, pem)
    }

    /// The App `id` whose private key is the PEM `pem`.
    pub(crate) fn new(id: u64, pem: &[u8]) -> Result<Self, CredentialsError> {
        let pkcs1 = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(PrivateKeyDer::Pkcs1(key)) => key.secret_pkcs1_der().to_vec(),
            // jsonwebtoken reads RSA keys as PKCS#1 only: take the RSA key out of PKCS#8.
            Ok(PrivateKeyDer::Pkcs8(key)) => {
                let key = rsa::RsaPrivateKey::from_pkcs8_der(key.secret_pkcs8_der())
                    .map_err(|_| CredentialsError::KeyInvalid)?;
                let pkcs1 = key
                    .to_pkcs1_der()
                    .map_err(|_| CredentialsError::KeyInvalid)?;
                pkcs1.as_bytes().to_vec()
            }
            _ => return Err(CredentialsError::KeyInvalid),
        };
        let app = Self {
            id,
            key: EncodingKey::from_rsa_der(&pkcs1),
        };
        // jsonwebtoken reads the key when it signs: sign once here so that a bad key is
        // reported as the Secret's problem.
        app.jwt(0)?;
        Ok(app)
    }

    /// A JWT for `now` (Unix seconds).
    pub(crate) fn jwt(&self, now: u64) -> Result<Jwt, CredentialsError> {
        let claims = Claims {
            iss: self.id.to_string(),
            iat: now.saturating_sub(BACKDATE),
            exp: now.saturating_add(LIFETIME),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Jwt)
            .map_err(|_| CredentialsError::Signing)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use k8s_openapi::ByteString;
    use serde_json::Value;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn claims(jwt: &Jwt) -> Value {
        let part = jwt.0.split('.').nth(1).expect("three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    #[test]
    fn a_pkcs1_and_a_pkcs8_key_sign_the_same_jwt() {
        let pkcs1 = App::new(7, github_fake::APP_KEY.as_bytes()).expect("PKCS#1");
        let pkcs8 = App::new(7, github_fake::APP_KEY_PKCS8.as_bytes()).expect("PKCS#8");
        // RSA PKCS#1 v1.5 signatures are deterministic.
        assert_eq!(
            pkcs1.jwt(1_800_000_000).expect("signs").0,
            pkcs8.jwt(1_800_000_000).expect("signs").0
        );
    }

    #[test]
    fn the_jwt_is_issued_a_minute_ago_and_lives_ten_minutes_in_all() {
        let app = App::new(7, github_fake::APP_KEY.as_bytes()).expect("a key");
        let jwt = app.jwt(1_800_000_000).expect("signs");
        assert_eq!(
            claims(&jwt),
            serde_json::json!({"iss": "7", "iat": 1_799_999_940u64, "exp": 1_800_000_540u64})
        );
        let header = jwt.0.split('.').next().expect("a header");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
                .expect("json");
        assert_eq!(header["alg"], "RS256");
    }

    #[test]
    fn a_secret_without_an_id_or_key_or_with_garbage_names_the_key_and_shows_no_value() {
        let key = github_fake::APP_KEY;
        let cases = [
            (
                secret(&[(PRIVATE_KEY_KEY, key)]),
                CredentialsError::IdMissing,
            ),
            (
                secret(&[(APP_ID_KEY, "seven"), (PRIVATE_KEY_KEY, key)]),
                CredentialsError::IdInvalid,
            ),
            (secret(&[(APP_ID_KEY, "7")]), CredentialsError::KeyMissing),
            (
                secret(&[(APP_ID_KEY, "7"), (PRIVATE_KEY_KEY, "hunter2")]),
                CredentialsError::KeyInvalid,
            ),
        ];
        for (secret, expected) in cases {
            let error = App::from_secret(&secret).expect_err("refused");
            assert_eq!(error, expected);
            assert!(!error.to_string().contains("hunter2"));
        }
        let app = App::from_secret(&secret(&[(APP_ID_KEY, "7\n"), (PRIVATE_KEY_KEY, key)]))
            .expect("an id with a newline, as `kubectl create secret --from-file` leaves it");
        assert_eq!(app.id, 7);
        assert!(!format!("{app:?}").contains("PRIVATE"));
        assert_eq!(
            format!("{:?}", app.jwt(0).expect("signs")),
            "Jwt(<redacted>)"
        );
    }
}
