//! The session and signing keys of a gate, kept in its `NAME-keys` Secret, and their rotation.
//!
//! The Secret holds `session-keys` (the proxy's session key file: `ID:BASE64URL` lines, newest
//! first) and `signing-keys` (PKCS#8 PEM keys, newest first); the proxy seals and signs with
//! the first key of each and accepts every key listed. Its annotations say which rotation
//! request (`spec.keys.rotation`) the keys follow, in which phase, since when.
//!
//! A rotation never breaks a session or an assertion, even while old and new pods serve side
//! by side during a rollout:
//!
//! 1. **Introducing**: new keys are added *second*. Pods that get them accept them, but still
//!    seal and sign with the old keys, which every pod knows.
//! 2. **Retiring**, once every pod runs with the new keys: they move first. Now new sessions
//!    and assertions use them, and every pod can open them; old ones still open.
//! 3. **Stable**, after the overlap: the old keys are removed.
//!
//! Each step changes the Secret, which rolls the pods. Everything here is pure: time and
//! randomness are given.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Bytes of a session key (AES-256-GCM).
const SESSION_KEY_LEN: usize = 32;

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Stable,
    Introducing,
    Retiring,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "Stable",
            Phase::Introducing => "Introducing",
            Phase::Retiring => "Retiring",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Phase::Stable, Phase::Introducing, Phase::Retiring]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// One generation of keys: a session key and a signing key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeyPair {
    /// `ID:BASE64URL`.
    pub(crate) session: String,
    /// One PKCS#8 PEM private key.
    pub(crate) signing: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.session.split(':').next().unwrap_or("?");
        write!(f, "KeyPair(session key {id}, <redacted>)")
    }
}

/// The keys of a gate and where their rotation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ring {
    /// The keys that seal and sign now.
    pub(crate) current: KeyPair,
    /// Introducing: the new keys, accepted but not used. Retiring: the old keys, accepted
    /// until the overlap has passed.
    pub(crate) other: Option<KeyPair>,
    pub(crate) phase: Phase,
    /// The `spec.keys.rotation` these keys follow.
    pub(crate) rotation: Option<String>,
    pub(crate) since: Timestamp,
}

/// What the operator decides to do with the keys in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to change.
    Keep,
    /// New keys were made (the first ones, or the next of a rotation).
    Generated,
    /// Every pod knows the new keys: they seal and sign now.
    Promoted,
    /// The overlap has passed: the old keys are gone.
    Retired,
}

/// Randomness and key generation, given so that tests can see what happens.
pub(crate) trait Generate {
    fn key_pair(&mut self, session_id: u8) -> Result<KeyPair, GenerateError>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GenerateError {
    #[error("the operating system's random number generator failed")]
    Random,
}

/// Keys from the operating system's CSPRNG.
pub(crate) struct OsRandom;

impl Generate for OsRandom {
    fn key_pair(&mut self, session_id: u8) -> Result<KeyPair, GenerateError> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; SESSION_KEY_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| GenerateError::Random)?;
        let signing =
            sekisho_identity::signing::new_key_pem().map_err(|_| GenerateError::Random)?;
        Ok(KeyPair {
            session: format!("{session_id}:{}", URL_SAFE_NO_PAD.encode(bytes)),
            signing: signing.expose().to_owned(),
        })
    }
}

/// The Secret's contents: data and annotations.
pub(crate) const SESSION_KEYS: &str = "session-keys";
pub(crate) const SIGNING_KEYS: &str = "signing-keys";
pub(crate) const ROTATION_ANNOTATION: &str = "sekisho.dev/rotation";
pub(crate) const PHASE_ANNOTATION: &str = "sekisho.dev/rotation-phase";
pub(crate) const SINCE_ANNOTATION: &str = "sekisho.dev/rotation-since";

/// Why a keys Secret cannot be read back; the operator reports it and does not overwrite it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ReadError {
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{SESSION_KEYS}` must hold one or two `ID:KEY` lines")]
    SessionKeys,
    #[error("`{SIGNING_KEYS}` must hold one or two PEM private keys")]
    SigningKeys,
    #[error("annotation {PHASE_ANNOTATION} is not Stable, Introducing or Retiring")]
    Phase,
    #[error("annotation {SINCE_ANNOTATION} is not an RFC 3339 time")]
    Since,
    #[error("the phase says {expected} key generations but the Secret holds {found}")]
    Count { expected: usize, found: usize },
}

impl Ring {
    /// The keys a new gate starts with.
    pub(crate) fn first(
        rotation: Option<&str>,
        now: Timestamp,
        generate: &mut dyn Generate,
    ) -> Result<Self, GenerateError> {
        Ok(Self {
            current: generate.key_pair(1)?,
            other: None,
            phase: Phase::Stable,
            rotation: rotation.map(str::to_owned),
            since: now,
        })
    }

    /// Reads the Secret's data (text) and annotations.
    pub(crate) fn read(
        session_keys: Option<&str>,
        signing_keys: Option<&str>,
        annotation: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ReadError> {
        let sessions: Vec<&str> = session_keys
            .ok_or(ReadError::Missing(SESSION_KEYS))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let signing = split_pem(signing_keys.ok_or(ReadError::Missing(SIGNING_KEYS))?);
        if !(1..=2).contains(&sessions.len()) || sessions.iter().any(|l| !l.contains(':')) {
            return Err(ReadError::SessionKeys);
        }
        if !(1..=2).contains(&signing.len()) {
            return Err(ReadError::SigningKeys);
        }
        if sessions.len() != signing.len() {
            return Err(ReadError::Count {
                expected: sessions.len(),
                found: signing.len(),
            });
        }
        let phase = match annotation(PHASE_ANNOTATION) {
            Some(text) => Phase::parse(&text).ok_or(ReadError::Phase)?,
            None => Phase::Stable,
        };
        let since = match annotation(SINCE_ANNOTATION) {
            Some(text) => text.parse().map_err(|_| ReadError::Since)?,
            None => Timestamp::UNIX_EPOCH,
        };
        let expected = if phase == Phase::Stable { 1 } else { 2 };
        if sessions.len() != expected {
            return Err(ReadError::Count {
                expected,
                found: sessions.len(),
            });
        }
        // The first key of each file seals and signs: `current` in every phase.
        let mut pairs = sessions
            .iter()
            .zip(signing)
            .map(|(session, signing)| KeyPair {
                session: (*session).to_owned(),
                signing,
            });
        let current = pairs.next().ok_or(ReadError::SessionKeys)?;
        Ok(Self {
            current,
            other: pairs.next(),
            phase,
            rotation: annotation(ROTATION_ANNOTATION),
            since,
        })
    }

    /// The session key file: the sealing key first.
    pub(crate) fn session_keys(&self) -> String {
        self.in_file_order()
            .map(|k| format!("{}\n", k.session))
            .collect()
    }

    /// The signing key file: the signing key first.
    pub(crate) fn signing_keys(&self) -> String {
        self.in_file_order().map(|k| k.signing.as_str()).collect()
    }

    /// Sealing key first. Introducing keeps the old (current) keys first; Retiring has the
    /// new (current) keys first and the old ones after.
    fn in_file_order(&self) -> impl Iterator<Item = &KeyPair> {
        std::iter::once(&self.current).chain(self.other.as_ref())
    }

    /// The annotations that go on the Secret.
    pub(crate) fn annotations(&self) -> Vec<(&'static str, String)> {
        let mut annotations = vec![
            (PHASE_ANNOTATION, self.phase.as_str().to_owned()),
            (SINCE_ANNOTATION, self.since.to_string()),
        ];
        if let Some(rotation) = &self.rotation {
            annotations.push((ROTATION_ANNOTATION, rotation.clone()));
        }
        annotations
    }

    /// One step of the rotation: `wanted` is `spec.keys.rotation`, `rolled_out` whether every
    /// pod runs with the Secret as it is now.
    pub(crate) fn advance(
        &mut self,
        wanted: Option<&str>,
        overlap: SignedDuration,
        now: Timestamp,
        rolled_out: bool,
        generate: &mut dyn Generate,
    ) -> Result<Step, GenerateError> {
        match self.phase {
            Phase::Stable if wanted.is_some() && wanted != self.rotation.as_deref() => {
                let id = next_id(&self.current.session);
                self.other = Some(generate.key_pair(id)?);
                self.phase = Phase::Introducing;
                self.rotation = wanted.map(str::to_owned);
                self.since = now;
                Ok(Step::Generated)
            }
            Phase::Introducing if rolled_out => {
                if let Some(new) = self.other.take() {
                    self.other = Some(std::mem::replace(&mut self.current, new));
                }
                self.phase = Phase::Retiring;
                self.since = now;
                Ok(Step::Promoted)
            }
            Phase::Retiring if self.since.checked_add(overlap).is_ok_and(|end| end <= now) => {
                self.other = None;
                self.phase = Phase::Stable;
                self.since = now;
                Ok(Step::Retired)
            }
            _ => Ok(Step::Keep),
        }
    }

    /// When the next step could happen by time alone (the end of the overlap).
    pub(crate) fn next_deadline(&self, overlap: SignedDuration) -> Option<Timestamp> {
        (self.phase == Phase::Retiring)
            .then(|| self.since.checked_add(overlap).ok())
            .flatten()
    }
}

/// The session key id after `line`'s (`ID:KEY`), wrapping at 255 and never 0.
fn next_id(line: &str) -> u8 {
    let id: u8 = line
        .split(':')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    id.checked_add(1).unwrap_or(1)
}

/// Each `-----BEGIN ...-----` to `-----END ...-----` section of `text`, with its end line.
fn split_pem(text: &str) -> Vec<String> {
    let mut sections = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(section) = &mut current {
            section.push_str(line);
            section.push('\n');
        }
        if line.starts_with("-----END ") {
            sections.extend(current.take());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbered keys, so that a test can tell them apart.
    struct Counter(u32);

    impl Generate for Counter {
        fn key_pair(&mut self, session_id: u8) -> Result<KeyPair, GenerateError> {
            self.0 += 1;
            Ok(KeyPair {
                session: format!("{session_id}:key-{}", self.0),
                signing: format!(
                    "-----BEGIN PRIVATE KEY-----\nsigning-{}\n-----END PRIVATE KEY-----\n",
                    self.0
                ),
            })
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("a time")
    }

    fn round_trip(ring: &Ring) -> Ring {
        let annotations = ring.annotations();
        Ring::read(
            Some(&ring.session_keys()),
            Some(&ring.signing_keys()),
            |name| {
                annotations
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            },
        )
        .expect("reads what it wrote")
    }

    #[test]
    fn a_rotation_introduces_then_promotes_then_retires_and_survives_each_write() {
        let overlap = SignedDuration::from_hours(13);
        let mut keys = Counter(0);
        let mut ring = Ring::first(None, at(0), &mut keys).expect("keys");
        assert_eq!(ring.session_keys(), "1:key-1\n");

        // Nothing asked: nothing moves, however long.
        let step = ring.advance(None, overlap, at(1_000_000), true, &mut keys);
        assert_eq!(step.expect("step"), Step::Keep);

        let step = ring.advance(Some("2026-12"), overlap, at(10), false, &mut keys);
        assert_eq!(step.expect("step"), Step::Generated);
        // The old key still seals; the new one is only accepted.
        assert_eq!(ring.session_keys(), "1:key-1\n2:key-2\n");
        assert!(
            ring.signing_keys()
                .starts_with("-----BEGIN PRIVATE KEY-----\nsigning-1\n")
        );
        let mut ring = round_trip(&ring);
        assert_eq!(ring.phase, Phase::Introducing);

        // Until every pod has the new keys, they do not seal.
        let step = ring.advance(Some("2026-12"), overlap, at(20), false, &mut keys);
        assert_eq!(step.expect("step"), Step::Keep);
        let step = ring.advance(Some("2026-12"), overlap, at(30), true, &mut keys);
        assert_eq!(step.expect("step"), Step::Promoted);
        assert_eq!(ring.session_keys(), "2:key-2\n1:key-1\n");
        let mut ring = round_trip(&ring);
        assert_eq!(ring.phase, Phase::Retiring);
        assert_eq!(ring.next_deadline(overlap), Some(at(30 + 13 * 3600)));

        let step = ring.advance(
            Some("2026-12"),
            overlap,
            at(30 + 13 * 3600 - 1),
            true,
            &mut keys,
        );
        assert_eq!(step.expect("step"), Step::Keep);
        let step = ring.advance(
            Some("2026-12"),
            overlap,
            at(30 + 13 * 3600),
            true,
            &mut keys,
        );
        assert_eq!(step.expect("step"), Step::Retired);
        assert_eq!(ring.session_keys(), "2:key-2\n");
        let mut ring = round_trip(&ring);
        assert_eq!(
            (ring.phase, ring.rotation.as_deref()),
            (Phase::Stable, Some("2026-12"))
        );

        // The same request again changes nothing; a new one starts over.
        let step = ring.advance(Some("2026-12"), overlap, at(99_999_999), true, &mut keys);
        assert_eq!(step.expect("step"), Step::Keep);
        let step = ring.advance(Some("2027-01"), overlap, at(99_999_999), true, &mut keys);
        assert_eq!(step.expect("step"), Step::Generated);
        assert_eq!(ring.session_keys(), "2:key-2\n3:key-3\n");
    }

    #[test]
    fn a_new_rotation_request_waits_until_the_running_one_is_done() {
        let overlap = SignedDuration::from_hours(1);
        let mut keys = Counter(0);
        let mut ring = Ring::first(Some("a"), at(0), &mut keys).expect("keys");
        assert_eq!(
            ring.advance(Some("a"), overlap, at(1), true, &mut keys)
                .expect("step"),
            Step::Keep
        );
        assert_eq!(
            ring.advance(Some("b"), overlap, at(2), false, &mut keys)
                .expect("step"),
            Step::Generated
        );
        assert_eq!(
            ring.advance(Some("c"), overlap, at(3), false, &mut keys)
                .expect("step"),
            Step::Keep
        );
        assert_eq!(ring.rotation.as_deref(), Some("b"));
        assert_eq!(ring.session_keys().lines().count(), 2);
    }

    #[test]
    fn session_key_ids_count_up_and_wrap_without_zero() {
        assert_eq!(next_id("1:x"), 2);
        assert_eq!(next_id("254:x"), 255);
        assert_eq!(next_id("255:x"), 1);
        assert_eq!(next_id("garbage"), 1);
    }

    #[test]
    fn a_secret_that_does_not_match_its_phase_is_refused_rather_than_overwritten() {
        let pem = "-----BEGIN PRIVATE KEY-----\na\n-----END PRIVATE KEY-----\n";
        let phase =
            |p: &'static str| move |name: &str| (name == PHASE_ANNOTATION).then(|| p.to_owned());
        assert_eq!(
            Ring::read(Some("1:a\n"), Some(pem), phase("Retiring")),
            Err(ReadError::Count {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            Ring::read(None, Some(pem), phase("Stable")),
            Err(ReadError::Missing(SESSION_KEYS))
        );
        assert_eq!(
            Ring::read(Some("1:a\n"), Some("nothing"), phase("Stable")),
            Err(ReadError::SigningKeys)
        );
        assert_eq!(
            Ring::read(Some("1:a\n"), Some(pem), phase("Sideways")),
            Err(ReadError::Phase)
        );
        assert_eq!(
            Ring::read(Some("1:a\n2:b\n"), Some(&pem.repeat(2)), phase("Stable")),
            Err(ReadError::Count {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn operating_system_keys_are_distinct_and_in_the_proxys_formats() {
        let a = OsRandom.key_pair(7).expect("keys");
        let b = OsRandom.key_pair(7).expect("keys");
        assert_ne!(a, b);
        let (id, key) = a.session.split_once(':').expect("ID:KEY");
        assert_eq!(id, "7");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(key).expect("base64url").len(),
            SESSION_KEY_LEN
        );
        sekisho_identity::signing::SigningKeys::from_pem(a.signing.as_bytes())
            .expect("the proxy reads the signing key");
        assert!(!format!("{a:?}").contains(key), "Debug shows no key");
    }
}
