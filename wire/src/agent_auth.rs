//! The agent's credential: an Ed25519 key pair whose public half is registered with the proxy.
//!
//! On every connection the agent signs a fresh statement (the proxy's host, its own name, the
//! time and a random nonce) and sends it in the [`crate::AGENT_AUTH_HEADER`] header:
//!
//! ```text
//! v1 name=nas ts=1764600000 nonce=<16 bytes, base64url> sig=<64 bytes, base64url>
//! ```
//!
//! The proxy checks the signature against the agent's registered keys, the time against a
//! bounded skew, and remembers the nonce for as long as the time is acceptable, so a captured
//! header cannot be replayed. No secret crosses the wire and the proxy stores only public keys.
//! The statement names the host rather than the TLS session, so it survives a TLS-terminating
//! load balancer between the agent and the proxy.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

/// The longest credential header accepted; checked before anything is parsed.
pub const MAX_HEADER_LEN: usize = 512;
/// The prefix of a public key's text form.
const PUBLIC_KEY_PREFIX: &str = "ed25519:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the key file is not a PKCS#8 Ed25519 private key in PEM")]
    BadPrivateKey,
    #[error("a public key looks like `ed25519:` and 43 base64url characters")]
    BadPublicKey,
    #[error("the system random generator failed")]
    Random,
    #[error("the credential is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    #[error("the credential is malformed: {0}")]
    Malformed(&'static str),
    #[error("the credential's time is {0} s away from the proxy's clock")]
    Skewed(u64),
    #[error("the signature does not match any of the agent's keys")]
    BadSignature,
}

/// An agent's private key. Its `Debug` never shows the key.
pub struct AgentKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// A new key from the OS CSPRNG, and its PEM text (PKCS#8) to store with mode 0600.
    pub fn generate() -> Result<(Self, String), CredentialError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| CredentialError::Random)?;
        let pem = pem("PRIVATE KEY", document.as_ref());
        Ok((Self::from_pem(&pem)?, pem))
    }

    /// Reads a key written by [`AgentKey::generate`] (or `openssl genpkey -algorithm ed25519`).
    pub fn from_pem(text: &str) -> Result<Self, CredentialError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
            .map_err(|_| CredentialError::BadPrivateKey)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|_| CredentialError::BadPrivateKey)?;
        Ok(Self { pair })
    }

    pub fn public_key(&self) -> AgentPublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        AgentPublicKey(bytes)
    }

    /// A signed statement for one connection to `host` as `name` at `now` (Unix seconds).
    pub fn credential(
        &self,
        host: &str,
        name: &str,
        now: u64,
    ) -> Result<AgentCredential, CredentialError> {
        let mut nonce = [0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CredentialError::Random)?;
        let message = statement(host, name, now, &nonce);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(&message).as_ref());
        Ok(AgentCredential {
            name: name.to_owned(),
            timestamp: now,
            nonce,
            signature,
        })
    }
}

/// An agent's public key; its text form is `ed25519:` and the key in unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentPublicKey([u8; 32]);

impl AgentPublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for AgentPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for AgentPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for AgentPublicKey {
    type Err = CredentialError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(CredentialError::BadPublicKey)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CredentialError::BadPublicKey)?;
        Ok(Self(
            bytes
                .try_into()
                .map_err(|_| CredentialError::BadPublicKey)?,
        ))
    }
}

/// One connection's signed statement, as carried in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCredential {
    pub name: String,
    /// Unix seconds when the agent signed it.
    pub timestamp: u64,
    pub nonce: [u8; 16],
    signature: [u8; 64],
}

impl AgentCredential {
    /// Parses the header value. Anything but exactly the four fields, in order, is refused.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        if text.len() > MAX_HEADER_LEN {
            return Err(CredentialError::TooLong);
        }
        let mut fields = text.split(' ');
        if fields.next() != Some("v1") {
            return Err(CredentialError::Malformed("it does not start with `v1`"));
        }
        let mut field = |key: &'static str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(key))
                .and_then(|f| f.strip_prefix('='))
                .ok_or(CredentialError::Malformed(key))
        };
        let name = field("name")?;
        let timestamp = field("ts")?;
        let nonce = field("nonce")?;
        let signature = field("sig")?;
        if fields.next().is_some() {
            return Err(CredentialError::Malformed("trailing fields"));
        }
        if !crate::is_name(name) {
            return Err(CredentialError::Malformed("name"));
        }
        let decode = |value: &str, what: &'static str| {
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| CredentialError::Malformed(what))
        };
        Ok(Self {
            name: name.to_owned(),
            timestamp: timestamp
                .parse()
                .map_err(|_| CredentialError::Malformed("ts"))?,
            nonce: decode(nonce, "nonce")?
                .try_into()
                .map_err(|_| CredentialError::Malformed("nonce"))?,
            signature: decode(signature, "sig")?
                .try_into()
                .map_err(|_| CredentialError::Malformed("sig"))?,
        })
    }

    /// Checks the statement for a connection to `host`: the time within `max_skew_secs` of
    /// `now`, and the signature by one of `keys`. The caller still has to refuse a nonce it has
    /// seen within the skew window.
    pub fn verify(
        &self,
        host: &str,
        keys: &[AgentPublicKey],
        now: u64,
        max_skew_secs: u64,
    ) -> Result<(), CredentialError> {
        let skew = now.abs_diff(self.timestamp);
        if skew > max_skew_secs {
            return Err(CredentialError::Skewed(skew));
        }
        let message = statement(host, &self.name, self.timestamp, &self.nonce);
        keys.iter()
            .any(|key| {
                UnparsedPublicKey::new(&ED25519, key.as_bytes())
                    .verify(&message, &self.signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or(CredentialError::BadSignature)
    }
}

impl fmt::Display for AgentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v1 name={} ts={} nonce={} sig={}",
            self.name,
            self.timestamp,
            URL_SAFE_NO_PAD.encode(self.nonce),
            URL_SAFE_NO_PAD.encode(self.signature)
        )
    }
}

/// What the agent signs. The host is lowercased and any port dropped, as the proxy sees it.
fn statement(host: &str, name: &str, timestamp: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let host = host_without_port(host).to_ascii_lowercase();
    format!(
        "sekisho-agent-auth-v1\n{host}\n{name}\n{timestamp}\n{}",
        URL_SAFE_NO_PAD.encode(nonce)
    )
    .into_bytes()
}

fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_600_000;

    fn key() -> AgentKey {
        AgentKey::generate().unwrap().0
    }

    #[test]
    fn a_credential_survives_its_header_form_and_verifies() {
        let key = key();
        let credential = key.credential("proxy.example.com", "nas", NOW).unwrap();
        let parsed = AgentCredential::parse(&credential.to_string()).unwrap();
        assert_eq!(parsed, credential);
        parsed
            .verify("proxy.example.com", &[key.public_key()], NOW + 10, 60)
            .unwrap();
    }

    #[test]
    fn the_port_and_case_of_the_host_do_not_matter() {
        let key = key();
        let credential = key
            .credential("Proxy.Example.com:8443", "nas", NOW)
            .unwrap();
        credential
            .verify("proxy.example.com", &[key.public_key()], NOW, 60)
            .unwrap();
    }

    #[test]
    fn a_credential_for_another_host_or_name_or_time_is_refused() {
        let key = key();
        let keys = [key.public_key()];
        let credential = key.credential("proxy.example.com", "nas", NOW).unwrap();
        assert_eq!(
            credential.verify("evil.example.com", &keys, NOW, 60),
            Err(CredentialError::BadSignature)
        );
        let mut renamed = credential.clone();
        renamed.name = "other".into();
        assert_eq!(
            renamed.verify("proxy.example.com", &keys, NOW, 60),
            Err(CredentialError::BadSignature)
        );
        let mut moved = credential.clone();
        moved.timestamp += 1;
        assert_eq!(
            moved.verify("proxy.example.com", &keys, NOW, 60),
            Err(CredentialError::BadSignature)
        );
        assert_eq!(
            credential.verify("proxy.example.com", &keys, NOW + 61, 60),
            Err(CredentialError::Skewed(61))
        );
    }

    #[test]
    fn a_credential_signed_by_an_unregistered_key_is_refused() {
        let credential = key().credential("p.example", "nas", NOW).unwrap();
        assert_eq!(
            credential.verify("p.example", &[key().public_key()], NOW, 60),
            Err(CredentialError::BadSignature)
        );
        assert_eq!(
            credential.verify("p.example", &[], NOW, 60),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn any_of_several_registered_keys_may_sign() {
        let (old, new) = (key(), key());
        let credential = new.credential("p.example", "nas", NOW).unwrap();
        credential
            .verify("p.example", &[old.public_key(), new.public_key()], NOW, 60)
            .unwrap();
    }

    #[test]
    fn malformed_headers_are_refused_before_any_crypto() {
        let good = key()
            .credential("p.example", "nas", NOW)
            .unwrap()
            .to_string();
        assert_eq!(
            AgentCredential::parse(&"v1 ".repeat(200)),
            Err(CredentialError::TooLong)
        );
        for bad in [
            "",
            "v2 name=nas ts=1 nonce=AAAAAAAAAAAAAAAAAAAAAA sig=AA",
            "v1 ts=1 name=nas nonce=AAAAAAAAAAAAAAAAAAAAAA sig=AA",
            "v1 name=NAS ts=1 nonce=AAAAAAAAAAAAAAAAAAAAAA sig=AA",
            "v1 name=nas ts=-1 nonce=AAAAAAAAAAAAAAAAAAAAAA sig=AA",
            "v1 name=nas ts=1 nonce=AAAA sig=AA",
            &format!("{good} extra=1"),
            &good.replace("sig=", "sig=A"),
        ] {
            assert!(
                matches!(
                    AgentCredential::parse(bad),
                    Err(CredentialError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_key_round_trips_through_its_pem_and_its_public_text() {
        let (key, pem) = AgentKey::generate().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = AgentKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let text = key.public_key().to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 43);
        assert_eq!(text.parse::<AgentPublicKey>().unwrap(), key.public_key());
        assert!(!format!("{key:?}").contains(&pem[30..60]));
    }

    #[test]
    fn bad_key_texts_are_refused() {
        assert_eq!(
            AgentKey::from_pem("not a key").unwrap_err(),
            CredentialError::BadPrivateKey
        );
        for bad in ["", "ed25519:", "ed25519:AAAA", "rsa:AAAA", "AAAA"] {
            assert_eq!(
                bad.parse::<AgentPublicKey>(),
                Err(CredentialError::BadPublicKey),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_lose_their_port_only() {
        assert_eq!(host_without_port("a.example:443"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
