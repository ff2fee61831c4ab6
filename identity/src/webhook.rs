//! GitHub webhook signatures (`X-Hub-Signature-256: sha256=<64 hex>`).
//!
//! GitHub signs the raw request body with HMAC-SHA256 under the webhook's secret. A route that
//! asks for webhook verification checks the body as it streams to the upstream:
//! [`WebhookSecret::start`] returns a [`WebhookCheck`], each body chunk goes through
//! [`WebhookCheck::update`], and [`WebhookCheck::finish`] compares the result with the header in
//! constant time. The check also bounds the body: past its limit `update` fails with
//! [`WebhookError::BodyTooLarge`], so the proxy can stop reading.
//!
//! The header must be exactly `sha256=` and 64 **lowercase** hex digits, the form GitHub sends:
//! one accepted spelling leaves nothing to guess, so `SHA256=…` or uppercase digits are refused
//! as malformed rather than normalised.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::SystemRandom;

/// The request header GitHub puts the signature in.
pub const HEADER_NAME: &str = "x-hub-signature-256";

/// GitHub's own cap on a webhook payload (25 MB).
pub const DEFAULT_MAX_BODY: u64 = 25 * 1000 * 1000;

const PREFIX: &[u8] = b"sha256=";
const TAG_LEN: usize = 32;

/// Why a webhook secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSecretError {
    #[error("{path}: cannot read the webhook secret file")]
    SecretFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid webhook secret file")]
    SecretFileInvalid {
        path: PathBuf,
        #[source]
        source: Box<WebhookSecretError>,
    },
    #[error("the webhook secret is empty")]
    EmptySecret,
    #[error("the operating system's random number generator failed")]
    RandomUnavailable,
}

/// Why a webhook request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the request has no X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("the X-Hub-Signature-256 header is not `sha256=` and 64 lowercase hex digits")]
    MalformedSignature,
    #[error("the webhook signature does not match the body")]
    BadSignature,
    #[error("the webhook body is larger than {max} bytes")]
    BodyTooLarge { max: u64 },
}

/// A route's webhook secret; `Debug` never shows it.
pub struct WebhookSecret {
    key: hmac::Key,
    /// A random per-process key that blinds both tags before the constant-time compare, so
    /// the incremental HMAC can still be checked with `ring::hmac::verify`.
    blind: hmac::Key,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// A secret from its bytes, as configured at GitHub.
    pub fn new(secret: &[u8]) -> Result<Self, WebhookSecretError> {
        if secret.is_empty() {
            return Err(WebhookSecretError::EmptySecret);
        }
        let blind = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| WebhookSecretError::RandomUnavailable)?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            blind,
        })
    }

    /// Reads a secret file ([`WebhookSecret::stored`]).
    pub fn load(path: &Path) -> Result<Self, WebhookSecretError> {
        let bytes =
            std::fs::read(path).map_err(|source| WebhookSecretError::SecretFileUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
        Self::stored(&bytes).map_err(|source| WebhookSecretError::SecretFileInvalid {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// A secret as it is stored (a file's or a Kubernetes Secret's bytes): one trailing
    /// newline (`\n` or `\r\n`), as editors and `kubectl create secret --from-file` leave, is
    /// not part of the secret; anything else is.
    pub fn stored(bytes: &[u8]) -> Result<Self, WebhookSecretError> {
        let secret = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        Self::new(secret)
    }

    /// Starts checking one request body of at most `max_body` bytes.
    pub fn start(&self, max_body: u64) -> WebhookCheck<'_> {
        WebhookCheck {
            secret: self,
            context: hmac::Context::with_key(&self.key),
            seen: 0,
            max_body,
        }
    }
}

/// The check of one request body in progress.
pub struct WebhookCheck<'a> {
    secret: &'a WebhookSecret,
    context: hmac::Context,
    seen: u64,
    max_body: u64,
}

impl fmt::Debug for WebhookCheck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookCheck")
            .field("seen", &self.seen)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl WebhookCheck<'_> {
    /// Adds the next body chunk. Fails once the body is past the limit; the caller should stop
    /// reading and refuse the request (`finish` fails the same way).
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), WebhookError> {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.max_body {
            return Err(WebhookError::BodyTooLarge { max: self.max_body });
        }
        self.context.update(chunk);
        Ok(())
    }

    /// Checks the whole body against the `X-Hub-Signature-256` header value (`None` when the
    /// request had none).
    pub fn finish(self, header: Option<&[u8]>) -> Result<(), WebhookError> {
        if self.seen > self.max_body {
            return Err(WebhookError::BodyTooLarge { max: self.max_body });
        }
        let expected = parse_signature(header)?;
        let computed = self.context.sign();
        let blind = &self.secret.blind;
        hmac::verify(
            blind,
            computed.as_ref(),
            hmac::sign(blind, &expected).as_ref(),
        )
        .map_err(|_| WebhookError::BadSignature)
    }
}

/// The 32 signature bytes of an `X-Hub-Signature-256` value, so a request without a usable
/// header can be refused before its body is read.
pub fn parse_signature(header: Option<&[u8]>) -> Result<[u8; TAG_LEN], WebhookError> {
    let value = header.ok_or(WebhookError::MissingSignature)?;
    let hex = value
        .strip_prefix(PREFIX)
        .ok_or(WebhookError::MalformedSignature)?;
    if hex.len() != TAG_LEN * 2 {
        return Err(WebhookError::MalformedSignature);
    }
    let mut tag = [0u8; TAG_LEN];
    for (byte, pair) in tag.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
    }
    Ok(tag)
}

fn lower_hex_digit(c: u8) -> Result<u8, WebhookError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(WebhookError::MalformedSignature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented example ("Validating webhook deliveries").
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const PAYLOAD: &[u8] = b"Hello, World!";
    const SIGNATURE: &[u8] =
        b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn secret() -> WebhookSecret {
        WebhookSecret::new(SECRET).unwrap()
    }

    fn check(
        secret: &WebhookSecret,
        body: &[u8],
        header: Option<&[u8]>,
    ) -> Result<(), WebhookError> {
        let mut check = secret.start(DEFAULT_MAX_BODY);
        check.update(body)?;
        check.finish(header)
    }

    #[test]
    fn githubs_example_delivery_verifies() {
        assert_eq!(check(&secret(), PAYLOAD, Some(SIGNATURE)), Ok(()));
    }

    #[test]
    fn the_body_checked_in_chunks_equals_the_body_checked_at_once() {
        let secret = secret();
        for split in 0..=PAYLOAD.len() {
            let mut check = secret.start(DEFAULT_MAX_BODY);
            let (a, b) = PAYLOAD.split_at(split);
            check.update(a).unwrap();
            check.update(&[]).unwrap();
            check.update(b).unwrap();
            assert_eq!(check.finish(Some(SIGNATURE)), Ok(()), "split at {split}");
        }
        let mut bytewise = secret.start(DEFAULT_MAX_BODY);
        for byte in PAYLOAD {
            bytewise.update(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(bytewise.finish(Some(SIGNATURE)), Ok(()));
    }

    #[test]
    fn a_different_secret_is_a_bad_signature() {
        let other = WebhookSecret::new(b"It's a Secret to Nobody").unwrap();
        assert_eq!(
            check(&other, PAYLOAD, Some(SIGNATURE)),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_changed_body_is_a_bad_signature() {
        assert_eq!(
            check(&secret(), b"Hello, World?", Some(SIGNATURE)),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn a_missing_header_is_a_missing_signature() {
        assert_eq!(
            check(&secret(), PAYLOAD, None),
            Err(WebhookError::MissingSignature)
        );
    }

    #[test]
    fn truncated_uppercase_or_garbage_headers_are_malformed() {
        let hex = &SIGNATURE[PREFIX.len()..];
        let upper_hex = format!(
            "sha256={}",
            std::str::from_utf8(hex).unwrap().to_uppercase()
        );
        let upper_prefix = format!("SHA256={}", std::str::from_utf8(hex).unwrap());
        let long = [SIGNATURE, b"0"].concat();
        let sha1 = b"sha1=d03207e4b030cf234e3447bac4d93add4c6643d8".to_vec();
        let spaced = [b" ", SIGNATURE].concat();
        let non_hex = [&SIGNATURE[..SIGNATURE.len() - 1], b"g"].concat();
        let cases: Vec<&[u8]> = vec![
            &SIGNATURE[..SIGNATURE.len() - 1],
            &SIGNATURE[..PREFIX.len()],
            b"",
            hex,
            upper_hex.as_bytes(),
            upper_prefix.as_bytes(),
            &long,
            &sha1,
            &spaced,
            &non_hex,
            "sha256=é".as_bytes(),
        ];
        for header in cases {
            assert_eq!(
                check(&secret(), PAYLOAD, Some(header)),
                Err(WebhookError::MalformedSignature),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn a_body_past_the_limit_is_refused_as_soon_as_it_crosses() {
        let secret = secret();
        let mut exact = secret.start(PAYLOAD.len() as u64);
        exact.update(PAYLOAD).unwrap();
        assert_eq!(exact.finish(Some(SIGNATURE)), Ok(()));

        let max = PAYLOAD.len() as u64 - 1;
        let mut check = secret.start(max);
        check.update(&PAYLOAD[..5]).unwrap();
        assert_eq!(
            check.update(&PAYLOAD[5..]),
            Err(WebhookError::BodyTooLarge { max })
        );
        assert_eq!(
            check.finish(Some(SIGNATURE)),
            Err(WebhookError::BodyTooLarge { max })
        );
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for (content, valid) in [
            (&b"It's a Secret to Everybody\n"[..], true),
            (b"It's a Secret to Everybody\r\n", true),
            (b"It's a Secret to Everybody", true),
            (b"It's a Secret to Everybody\n\n", false),
            (b"It's a Secret to Everybody ", false),
        ] {
            std::fs::write(&path, content).unwrap();
            let loaded = WebhookSecret::load(&path).unwrap();
            assert_eq!(
                check(&loaded, PAYLOAD, Some(SIGNATURE)).is_ok(),
                valid,
                "{content:?}"
            );
        }
    }

    #[test]
    fn an_empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"\n").unwrap();
        let err = WebhookSecret::load(&path).unwrap_err();
        assert!(
            matches!(&err, WebhookSecretError::SecretFileInvalid { source, .. }
                if matches!(**source, WebhookSecretError::EmptySecret)),
            "{err:?}"
        );
        assert!(err.to_string().contains("secret"), "{err}");
        assert!(matches!(
            WebhookSecret::load(&dir.path().join("missing")),
            Err(WebhookSecretError::SecretFileUnreadable { .. })
        ));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let shown = format!("{:?}", secret());
        assert!(!shown.contains("Everybody"), "{shown}");
    }
}
