//! Sekisho's ES256 (ECDSA P-256 with SHA-256) signing key ring, and the public keys that verify
//! what it signs.
//!
//! Key file format: one or more PKCS#8 PEM private keys (`-----BEGIN PRIVATE KEY-----`), P-256
//! only, **newest first**. The first key signs every new token; every key in the file verifies.
//! Rotation: put a new key on top (see [`new_key_pem`]), wait at least the longest token lifetime
//! so that every token signed by the old key has expired, then remove the old key.
//!
//! Each key's id (`kid`) is derived from its public key alone (base64url of the first
//! [`KID_HASH_BYTES`] bytes of SHA-256 over the uncompressed SEC1 point), so every replica that
//! loads the same file names the same key the same way, and a JWKS consumer can cache by `kid`.
//!
//! Verification ([`VerifyingKeys`]) works from the ring itself or from its published JWKS
//! ([`SigningKeys::jwks_json`]), so an upstream service verifies exactly as Sekisho does.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How many bytes of the public key's SHA-256 name a key (12 bytes: 16 base64url characters).
pub const KID_HASH_BYTES: usize = 12;

/// Clock skew tolerated between the replica that signed a token and the one that checks it.
pub const CLOCK_SKEW_LEEWAY_SECS: u64 = 30;

/// Bytes in an uncompressed SEC1 P-256 point: `0x04 || x || y`.
const P256_POINT_LEN: usize = 65;
const P256_COORDINATE_LEN: usize = 32;

/// Why a key file or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("{path}: cannot read the signing key file")]
    KeyFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid signing key file")]
    KeyFileInvalid {
        path: PathBuf,
        #[source]
        source: Box<SigningKeyError>,
    },
    #[error("{path}: cannot write the signing key file")]
    KeyFileUnwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key file is not valid PEM: {reason}")]
    MalformedPem { reason: String },
    #[error("key {index}: a `{label}` PEM section; expected a PKCS#8 `PRIVATE KEY`")]
    NotPkcs8 { index: usize, label: &'static str },
    #[error("key {index}: not a PKCS#8 ECDSA P-256 private key")]
    NotP256 { index: usize },
    #[error("key {index}: the same key as an earlier one (kid {kid})")]
    DuplicateKey { index: usize, kid: String },
    #[error("the signing key file holds no private key")]
    NoKeys,
    #[error("the operating system's random number generator failed")]
    RandomUnavailable,
}

/// A token could not be signed (only a broken key or claims that do not serialise do this).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token")]
pub struct SignError(#[source] jsonwebtoken::errors::Error);

/// Why a token was rejected. The variants name the first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's claims are missing or have the wrong shape")]
    MalformedClaims,
    #[error("the token is signed with {found}; only ES256 is accepted")]
    WrongAlgorithm { found: String },
    #[error("the token's type is {found:?}; expected {expected:?}")]
    WrongType {
        found: Option<String>,
        expected: &'static str,
    },
    #[error("the token names no key (`kid`)")]
    MissingKeyId,
    #[error("the token is signed by unknown key {kid:?}")]
    UnknownKeyId { kid: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token expired at {expired_at} (now {now})")]
    Expired { expired_at: u64, now: u64 },
    #[error("the token is issued in the future ({issued_at}, now {now})")]
    IssuedInFuture { issued_at: u64, now: u64 },
}

/// A PKCS#8 PEM private key as text; `Debug` never shows it.
#[derive(Clone)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// The PEM text. It is the secret itself: write it to a key file or Secret, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A fresh P-256 private key from the OS CSPRNG, as PKCS#8 PEM (with a trailing newline).
pub fn new_key_pem() -> Result<PrivateKeyPem, SigningKeyError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| SigningKeyError::RandomUnavailable)?;
    Ok(PrivateKeyPem(pkcs8_pem(pkcs8.as_ref())))
}

/// Writes a new key file holding one fresh key, readable and writable by the owner only (0600).
///
/// Fails if `path` exists: rotating means putting a [`new_key_pem`] on top of the existing file,
/// which is the operator's decision, not something to do by overwriting.
pub fn write_new_key_file(path: &Path) -> Result<(), SigningKeyError> {
    use std::io::Write as _;

    let pem = new_key_pem()?;
    let unwritable = |source| SigningKeyError::KeyFileUnwritable {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(unwritable)?;
    file.write_all(pem.expose().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(unwritable)
}

/// Puts a fresh key on top of the key file at `path` (creating it, 0600, when it does not
/// exist) and returns the new key's id. Tokens are signed with the new key from the next load;
/// the keys already in the file keep verifying.
///
/// Only a missing file starts a new ring. A file that cannot be read, or that holds anything
/// but valid keys (or nothing but blank space), is an error and is left as it is: rewriting it
/// with the new key alone would drop the old keys, and every token they signed with them.
pub fn add_key_to_file(path: &Path) -> Result<String, SigningKeyError> {
    let existing = crate::key_file::read_if_present(path)
        .map_err(|source| SigningKeyError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?
        .unwrap_or_default();
    let invalid = |source| SigningKeyError::KeyFileInvalid {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    match SigningKeys::from_pem(&existing) {
        Ok(_) => {}
        Err(SigningKeyError::NoKeys) if existing.iter().all(u8::is_ascii_whitespace) => {}
        Err(error) => return Err(invalid(error)),
    }
    let pem = new_key_pem()?;
    let mut contents = pem.expose().as_bytes().to_vec();
    contents.extend_from_slice(&existing);
    // What is written must load: checked before the file is touched.
    let kid = SigningKeys::from_pem(&contents)
        .map_err(invalid)?
        .newest()
        .kid()
        .to_owned();
    crate::key_file::replace(path, &[&contents]).map_err(|source| {
        SigningKeyError::KeyFileUnwritable {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(kid)
}

fn pkcs8_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The key id of a P-256 public key (uncompressed SEC1 point).
fn kid_of(public_point: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_point);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..KID_HASH_BYTES])
}

/// Who a signed token speaks for: the verified identity of a session.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The IdP's `sub`.
    pub subject: &'a str,
    /// May be empty when the IdP gave none.
    pub email: &'a str,
    pub groups: &'a [String],
}

/// Lowercase hex of a session id, as tokens carry it in `sid`.
pub(crate) fn session_id_hex(id: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    id.iter().fold(String::with_capacity(32), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// One private signing key.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    fn from_pkcs8(index: usize, der: &[u8]) -> Result<Self, SigningKeyError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| SigningKeyError::NotP256 { index })?;
        let point = pair.public_key().as_ref();
        let public = VerifyingKey::from_point(kid_of(point), point)
            .ok_or(SigningKeyError::NotP256 { index })?;
        let encoding = EncodingKey::from_ec_der(der);
        // ring and the JWT signer parse PKCS#8 separately: prove now that the signer takes this
        // key, so that a key it cannot use fails at load instead of at the first login.
        jsonwebtoken::crypto::sign(b"probe", &encoding, Algorithm::ES256)
            .map_err(|_| SigningKeyError::NotP256 { index })?;
        Ok(Self {
            kid: public.kid.clone(),
            encoding,
            public,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// The signing key ring: the newest key signs, every key verifies.
#[derive(Debug)]
pub struct SigningKeys {
    /// Newest first; never empty; kids are distinct.
    keys: Vec<SigningKey>,
    verifying: VerifyingKeys,
}

impl SigningKeys {
    /// Reads and parses a key file (format in the module documentation).
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        let pem = std::fs::read(path).map_err(|source| SigningKeyError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|source| SigningKeyError::KeyFileInvalid {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses PEM text holding one or more PKCS#8 P-256 private keys, newest first.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SigningKeyError> {
        let mut keys = Vec::new();
        for (index, section) in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).enumerate() {
            let index = index + 1;
            let (kind, der) = section.map_err(|e| SigningKeyError::MalformedPem {
                reason: e.to_string(),
            })?;
            if kind != SectionKind::PrivateKey {
                return Err(SigningKeyError::NotPkcs8 {
                    index,
                    label: section_label(kind),
                });
            }
            keys.push(SigningKey::from_pkcs8(index, &der)?);
        }
        Self::new(keys)
    }

    /// One fresh key, for development: tokens die with the process.
    pub fn generate() -> Result<Self, SigningKeyError> {
        Self::from_pem(new_key_pem()?.expose().as_bytes())
    }

    fn new(keys: Vec<SigningKey>) -> Result<Self, SigningKeyError> {
        if keys.is_empty() {
            return Err(SigningKeyError::NoKeys);
        }
        let mut seen = HashSet::new();
        for (index, key) in keys.iter().enumerate() {
            if !seen.insert(key.kid.as_str()) {
                return Err(SigningKeyError::DuplicateKey {
                    index: index + 1,
                    kid: key.kid.clone(),
                });
            }
        }
        let verifying = VerifyingKeys {
            keys: keys.iter().map(|key| key.public.clone()).collect(),
        };
        Ok(Self { keys, verifying })
    }

    /// The key that signs new tokens.
    pub fn newest(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// Every key, newest first.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The public halves, for verification.
    pub fn verifying_keys(&self) -> &VerifyingKeys {
        &self.verifying
    }

    /// Signs `claims` with the newest key: header `alg` ES256, `kid`, and `typ`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, SignError> {
        let key = self.newest();
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(SignError)
    }

    /// The public keys as a JWKS document (`{"keys":[…]}`), newest first, for
    /// `/.well-known/sekisho/jwks.json`.
    pub fn jwks_json(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .verifying
            .keys
            .iter()
            .map(|key| {
                let (x, y) = key.coordinates();
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                    "kid": key.kid,
                    "use": "sig",
                    "alg": "ES256",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

fn section_label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "other",
    }
}

/// One P-256 public key and its id.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    point: [u8; P256_POINT_LEN],
    decoding: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    fn from_point(kid: String, point: &[u8]) -> Option<Self> {
        let point: [u8; P256_POINT_LEN] = point.try_into().ok()?;
        if point[0] != 0x04 {
            return None;
        }
        Some(Self {
            kid,
            point,
            decoding: DecodingKey::from_ec_der(&point),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn coordinates(&self) -> (&[u8], &[u8]) {
        self.point[1..].split_at(P256_COORDINATE_LEN)
    }
}

/// What a token must say besides a good signature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expectation<'a> {
    /// The header `typ`, compared exactly; `None` accepts `JWT` (any case) or no `typ`.
    pub(crate) typ: Option<&'static str>,
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a str,
    pub(crate) now: u64,
}

/// Claims that carry a validity window.
pub(crate) trait TimedClaims {
    fn issued_at(&self) -> u64;
    fn expires_at(&self) -> u64;
}

/// Public keys that verify Sekisho's tokens: the ring's own ([`SigningKeys::verifying_keys`])
/// or those read from its JWKS ([`VerifyingKeys::from_jwks_json`]).
#[derive(Debug, Clone)]
pub struct VerifyingKeys {
    keys: Vec<VerifyingKey>,
}

/// Why a JWKS document gave no usable keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not valid JSON of the expected shape")]
    Malformed(#[source] serde_json::Error),
    #[error("the JWKS holds no EC P-256 key with a `kid`")]
    NoUsableKeys,
}

impl VerifyingKeys {
    /// The EC P-256 keys with a `kid` from a JWKS document; other keys are skipped.
    pub fn from_jwks_json(json: &str) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_str(json).map_err(JwksError::Malformed)?;
        Self::from_jwk_set(&set)
    }

    /// The EC P-256 keys with a `kid` from a parsed JWKS; other keys are skipped.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, JwksError> {
        let keys: Vec<VerifyingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
                    return None;
                };
                if ec.curve != EllipticCurve::P256 {
                    return None;
                }
                let x = URL_SAFE_NO_PAD.decode(&ec.x).ok()?;
                let y = URL_SAFE_NO_PAD.decode(&ec.y).ok()?;
                if x.len() != P256_COORDINATE_LEN || y.len() != P256_COORDINATE_LEN {
                    return None;
                }
                let mut point = [0u8; P256_POINT_LEN];
                point[0] = 0x04;
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                VerifyingKey::from_point(kid, &point)
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(Self { keys })
    }

    pub fn find(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|key| key.kid == kid)
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// Verifies an ES256 token and its claims; the checks run in the order of [`TokenError`].
    pub(crate) fn verify<T>(&self, token: &str, expect: &Expectation<'_>) -> Result<T, TokenError>
    where
        T: DeserializeOwned + TimedClaims,
    {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::WrongAlgorithm {
                found: format!("{:?}", header.alg),
            });
        }
        let typ_ok = match (expect.typ, header.typ.as_deref()) {
            (Some(expected), found) => found == Some(expected),
            (None, found) => found.is_none_or(|typ| typ.eq_ignore_ascii_case("JWT")),
        };
        if !typ_ok {
            return Err(TokenError::WrongType {
                found: header.typ,
                expected: expect.typ.unwrap_or("JWT"),
            });
        }
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self
            .find(&kid)
            .ok_or_else(|| TokenError::UnknownKeyId { kid: kid.clone() })?;

        // Time is checked below against the caller's `now`, not the system clock.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims = ["aud", "iss"].into_iter().map(String::from).collect();
        validation.set_audience(&[expect.audience]);
        validation.set_issuer(&[expect.issuer]);
        let claims: T = jsonwebtoken::decode(token, &key.decoding, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => {
                    TokenError::BadSignature
                }
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::Json(_)
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_) => TokenError::MalformedClaims,
                _ => TokenError::Malformed,
            })?
            .claims;

        let now = expect.now;
        if now >= claims.expires_at().saturating_add(CLOCK_SKEW_LEEWAY_SECS) {
            return Err(TokenError::Expired {
                expired_at: claims.expires_at(),
                now,
            });
        }
        if claims.issued_at() > now.saturating_add(CLOCK_SKEW_LEEWAY_SECS) {
            return Err(TokenError::IssuedInFuture {
                issued_at: claims.issued_at(),
                now,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::Deserialize;

    /// A P-256 key made by `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`,
    /// so that keys made by the usual tools load, not only ring's own.
    const OPENSSL_KEY: &str = include_str!("../testdata/openssl-p256.pem");

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        iss: String,
        aud: String,
        iat: u64,
        exp: u64,
    }

    impl TimedClaims for Claims {
        fn issued_at(&self) -> u64 {
            self.iat
        }
        fn expires_at(&self) -> u64 {
            self.exp
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            iss: "https://auth.example".into(),
            aud: "app.example".into(),
            iat: NOW,
            exp: NOW + 300,
        }
    }

    fn expect(now: u64) -> Expectation<'static> {
        Expectation {
            typ: None,
            issuer: "https://auth.example",
            audience: "app.example",
            now,
        }
    }

    fn pem_of(keys: &[&PrivateKeyPem]) -> String {
        keys.iter().map(|k| k.expose()).collect()
    }

    #[test]
    fn a_generated_key_signs_tokens_that_verify() {
        let keys = SigningKeys::generate().unwrap();
        let token = keys.sign("JWT", &claims()).unwrap();
        let got: Claims = keys.verifying_keys().verify(&token, &expect(NOW)).unwrap();
        assert_eq!(got, claims());
    }

    #[test]
    fn an_openssl_made_key_loads_and_signs() {
        let keys = SigningKeys::from_pem(OPENSSL_KEY.as_bytes()).unwrap();
        let token = keys.sign("JWT", &claims()).unwrap();
        let got: Claims = keys.verifying_keys().verify(&token, &expect(NOW)).unwrap();
        assert_eq!(got, claims());
    }

    #[test]
    fn the_kid_is_stable_across_loads_and_differs_between_keys() {
        let a = new_key_pem().unwrap();
        let b = new_key_pem().unwrap();
        let first = SigningKeys::from_pem(pem_of(&[&a, &b]).as_bytes()).unwrap();
        let again = SigningKeys::from_pem(a.expose().as_bytes()).unwrap();
        assert_eq!(first.newest().kid(), again.newest().kid());
        assert_ne!(first.keys()[0].kid(), first.keys()[1].kid());
        assert_eq!(first.newest().kid().len(), 16);
    }

    #[test]
    fn the_newest_key_signs_and_older_keys_still_verify() {
        let old = new_key_pem().unwrap();
        let new = new_key_pem().unwrap();
        let before = SigningKeys::from_pem(old.expose().as_bytes()).unwrap();
        let old_token = before.sign("JWT", &claims()).unwrap();

        let rotated = SigningKeys::from_pem(pem_of(&[&new, &old]).as_bytes()).unwrap();
        let new_token = rotated.sign("JWT", &claims()).unwrap();
        let new_kid = jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap();
        assert_eq!(new_kid, rotated.newest().kid());
        assert_ne!(new_kid, before.newest().kid());
        for token in [&old_token, &new_token] {
            let got: Result<Claims, _> = rotated.verifying_keys().verify(token, &expect(NOW));
            assert!(got.is_ok(), "{got:?}");
        }

        let old_removed = SigningKeys::from_pem(new.expose().as_bytes()).unwrap();
        let got: Result<Claims, _> = old_removed
            .verifying_keys()
            .verify(&old_token, &expect(NOW));
        assert_eq!(
            got,
            Err(TokenError::UnknownKeyId {
                kid: before.newest().kid().to_owned()
            })
        );
    }

    #[test]
    fn a_key_file_is_written_owner_only_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        write_new_key_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let keys = SigningKeys::load(&path).unwrap();
        assert_eq!(keys.keys().len(), 1);
        assert!(matches!(
            write_new_key_file(&path),
            Err(SigningKeyError::KeyFileUnwritable { .. })
        ));
    }

    #[test]
    fn a_new_key_goes_on_top_of_an_existing_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        // A missing file starts a new ring, private to its owner.
        let first = add_key_to_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = add_key_to_file(&path).unwrap();
        assert_ne!(first, second);
        let kids: Vec<_> = SigningKeys::load(&path)
            .unwrap()
            .keys()
            .iter()
            .map(|key| key.kid().to_owned())
            .collect();
        assert_eq!(kids, [second, first]);
    }

    #[test]
    fn an_empty_key_file_takes_a_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        std::fs::write(&path, "\n").unwrap();
        let kid = add_key_to_file(&path).unwrap();
        assert_eq!(SigningKeys::load(&path).unwrap().newest().kid(), kid);
    }

    #[test]
    fn a_key_file_that_cannot_be_read_or_parsed_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        // Not readable as a file (as with a permission error): never taken for "no keys yet".
        let err = add_key_to_file(dir.path()).unwrap_err();
        assert!(
            matches!(err, SigningKeyError::KeyFileUnreadable { .. }),
            "{err:?}"
        );

        let broken_pem = "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n";
        let mut key_then_broken_pem = new_key_pem().unwrap().expose().as_bytes().to_vec();
        key_then_broken_pem.extend_from_slice(broken_pem.as_bytes());
        let cases: [(&str, &[u8]); 4] = [
            ("not-utf8", b"\xff\xfe\x00\x01 binary, no PEM\n"),
            ("broken-pem", broken_pem.as_bytes()),
            ("key-then-broken-pem", &key_then_broken_pem),
            (
                "sec1",
                b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            ),
        ];
        for (name, contents) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let err = add_key_to_file(&path).unwrap_err();
            assert!(
                matches!(err, SigningKeyError::KeyFileInvalid { .. }),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{name}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), contents, "{name}");
        }
    }

    #[test]
    fn a_missing_key_file_names_its_path() {
        let err = SigningKeys::load(Path::new("/nonexistent/signing.pem")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/signing.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_keys_is_rejected() {
        assert!(matches!(
            SigningKeys::from_pem(b"# nothing here\n"),
            Err(SigningKeyError::NoKeys)
        ));
    }

    #[test]
    fn a_sec1_key_is_rejected_with_its_label() {
        let pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKeys::from_pem(pem.as_bytes()),
            Err(SigningKeyError::NotPkcs8 {
                index: 1,
                label: "EC PRIVATE KEY"
            })
        ));
    }

    #[test]
    fn a_pkcs8_blob_that_is_not_a_p256_key_is_rejected() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKeys::from_pem(pem.as_bytes()),
            Err(SigningKeyError::NotP256 { index: 1 })
        ));
    }

    #[test]
    fn the_same_key_twice_is_rejected() {
        let a = new_key_pem().unwrap();
        assert!(matches!(
            SigningKeys::from_pem(pem_of(&[&a, &a]).as_bytes()),
            Err(SigningKeyError::DuplicateKey { index: 2, .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_private_keys() {
        let pem = new_key_pem().unwrap();
        let keys = SigningKeys::from_pem(pem.expose().as_bytes()).unwrap();
        let body_line = pem.expose().lines().nth(1).unwrap();
        for shown in [format!("{pem:?}"), format!("{keys:?}")] {
            assert!(!shown.contains(body_line), "{shown}");
        }
        assert!(format!("{keys:?}").contains(keys.newest().kid()));
    }

    #[test]
    fn the_jwks_has_the_documented_shape_and_verifies_a_token() {
        let keys = SigningKeys::from_pem(
            pem_of(&[&new_key_pem().unwrap(), &new_key_pem().unwrap()]).as_bytes(),
        )
        .unwrap();
        let json = keys.jwks_json();

        let raw: serde_json::Value = serde_json::from_str(&json).unwrap();
        let first = &raw["keys"][0];
        assert_eq!(first["kty"], "EC");
        assert_eq!(first["crv"], "P-256");
        assert_eq!(first["use"], "sig");
        assert_eq!(first["alg"], "ES256");
        assert_eq!(first["kid"], keys.newest().kid());
        assert_eq!(first["x"].as_str().unwrap().len(), 43);
        assert_eq!(first["y"].as_str().unwrap().len(), 43);

        let set: JwkSet = serde_json::from_str(&json).unwrap();
        assert_eq!(set.keys.len(), 2);
        let token = keys.sign("JWT", &claims()).unwrap();

        // With jsonwebtoken alone, as an upstream would.
        let jwk = set.find(keys.newest().kid()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["app.example"]);
        validation.validate_exp = false;
        let plain = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(plain.claims, claims());

        // And with this module's verifier built from the JWKS.
        let from_jwks = VerifyingKeys::from_jwk_set(&set).unwrap();
        let got: Claims = from_jwks.verify(&token, &expect(NOW)).unwrap();
        assert_eq!(got, claims());
    }

    #[test]
    fn a_jwks_without_p256_keys_is_rejected() {
        let json = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#;
        assert!(matches!(
            VerifyingKeys::from_jwks_json(json),
            Err(JwksError::NoUsableKeys)
        ));
    }

    #[test]
    fn expiry_and_issue_time_are_checked_against_the_given_clock_with_leeway() {
        let keys = SigningKeys::generate().unwrap();
        let token = keys.sign("JWT", &claims()).unwrap();
        let verify =
            |now| -> Result<Claims, _> { keys.verifying_keys().verify(&token, &expect(now)) };
        let exp = NOW + 300;
        assert!(verify(exp + CLOCK_SKEW_LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            verify(exp + CLOCK_SKEW_LEEWAY_SECS),
            Err(TokenError::Expired {
                expired_at: exp,
                now: exp + CLOCK_SKEW_LEEWAY_SECS
            })
        );
        assert!(verify(NOW - CLOCK_SKEW_LEEWAY_SECS).is_ok());
        assert!(matches!(
            verify(NOW - CLOCK_SKEW_LEEWAY_SECS - 1),
            Err(TokenError::IssuedInFuture { .. })
        ));
    }

    #[test]
    fn a_token_with_a_foreign_typ_is_rejected_when_jwt_is_expected() {
        let keys = SigningKeys::generate().unwrap();
        let token = keys.sign("sekisho-user+jwt", &claims()).unwrap();
        let got: Result<Claims, _> = keys.verifying_keys().verify(&token, &expect(NOW));
        assert!(matches!(got, Err(TokenError::WrongType { .. })), "{got:?}");
    }
}
