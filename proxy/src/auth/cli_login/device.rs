//! The device-authorization grants in flight (RFC 8628): a device code the CLI polls with, a
//! user code the person types or confirms on the auth host, and what became of it.
//!
//! The grants live in this process's memory only (see `docs/identity.md`, "Known limits"): a
//! CLI must poll the replica that started its grant, and the person must approve on it too.
//! The map is bounded; when full, expired grants are swept, and if it is still full a new grant
//! is refused. Device codes are kept only as their SHA-256, so the map holds nothing a poller
//! could use.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::auth::session::SessionRecord;

/// How long a device grant may wait for its approval.
pub(crate) const DEVICE_CODE_TTL: Duration = Duration::from_secs(600);
/// How often the CLI may poll, at first.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// What a `slow_down` adds to a grant's interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Letters that are hard to confuse with each other or with digits, and that spell few words
/// (RFC 8628 §6.1's example set: consonants only).
pub(crate) const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code (shown as `XXXX-XXXX`): 20⁸ ≈ 2.6 × 10¹⁰ codes.
pub(crate) const USER_CODE_LEN: usize = 8;
/// The longest device code accepted when polling (ours are 43 characters).
const MAX_DEVICE_CODE: usize = 128;

/// A device code: what only the CLI that asked knows. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DeviceCode(String);

impl DeviceCode {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCode(<redacted>)")
    }
}

/// A user code: eight letters of [`USER_CODE_ALPHABET`], shown as `XXXX-XXXX`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserCode([u8; USER_CODE_LEN]);

impl UserCode {
    /// Reads what a person typed: case, spaces and dashes do not matter; anything else must be
    /// a letter of the alphabet, eight in all.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() > 32 {
            return None;
        }
        let mut code = [0u8; USER_CODE_LEN];
        let mut n = 0;
        for b in text.bytes() {
            if b == b'-' || b == b' ' {
                continue;
            }
            let b = b.to_ascii_uppercase();
            if n == USER_CODE_LEN || !USER_CODE_ALPHABET.contains(&b) {
                return None;
            }
            code[n] = b;
            n += 1;
        }
        (n == USER_CODE_LEN).then_some(Self(code))
    }

    fn random(rng: &SystemRandom) -> Result<Self, DeviceError> {
        let mut code = [0u8; USER_CODE_LEN];
        let mut filled = 0;
        // Rejection sampling: bytes of 240 and above would make the first letters likelier.
        let limit = 256 - 256 % USER_CODE_ALPHABET.len();
        while filled < USER_CODE_LEN {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes).map_err(|_| DeviceError::Random)?;
            for b in bytes {
                if usize::from(b) < limit && filled < USER_CODE_LEN {
                    code[filled] = USER_CODE_ALPHABET[usize::from(b) % USER_CODE_ALPHABET.len()];
                    filled += 1;
                }
            }
        }
        Ok(Self(code))
    }
}

impl fmt::Display for UserCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only alphabet letters are ever stored.
        let text = std::str::from_utf8(&self.0).map_err(|_| fmt::Error)?;
        write!(f, "{}-{}", &text[..4], &text[4..])
    }
}

impl fmt::Debug for UserCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserCode({self})")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("too many device logins are waiting to start another")]
    Full,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// Why a person's decision was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecideError {
    #[error("no device login with this code is waiting (it may have expired)")]
    Unknown,
    #[error("this device login was already approved or denied")]
    AlreadyDecided,
}

/// What a poll finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Not decided yet (`authorization_pending`).
    Pending,
    /// Polled sooner than the interval allows; the interval grew (`slow_down`).
    SlowDown,
    /// Approved by this session; the grant is gone now, so this is returned once.
    Approved(Box<SessionRecord>),
    /// Denied (`access_denied`); returned once.
    Denied,
    /// Expired unapproved (`expired_token`); returned once.
    Expired,
    /// No such device code (`invalid_grant`).
    Unknown,
}

#[derive(Debug)]
enum Status {
    Pending,
    Approved(Box<SessionRecord>),
    Denied,
}

#[derive(Debug)]
struct Grant {
    user_code: UserCode,
    /// Unix milliseconds.
    expires_at: u64,
    interval: u64,
    last_poll: Option<u64>,
    status: Status,
}

/// The device grants in flight on this proxy.
pub(crate) struct DeviceGrants {
    /// SHA-256 of the device code → the grant.
    grants: DashMap<[u8; 32], Grant>,
    /// User code → SHA-256 of the device code.
    by_user_code: DashMap<UserCode, [u8; 32]>,
    capacity: usize,
    rng: SystemRandom,
}

impl fmt::Debug for DeviceGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceGrants")
            .field("in_flight", &self.grants.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn digest(device_code: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, device_code.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl DeviceGrants {
    /// Room for about `capacity` grants at a time.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            grants: DashMap::new(),
            by_user_code: DashMap::new(),
            capacity,
            rng: SystemRandom::new(),
        }
    }

    /// Starts a grant at `now` (Unix milliseconds): a device code of 32 random bytes and a
    /// user code no other waiting grant has.
    pub(crate) fn start(&self, now: u64) -> Result<(DeviceCode, UserCode), DeviceError> {
        if self.grants.len() >= self.capacity {
            self.purge(now);
            if self.grants.len() >= self.capacity {
                return Err(DeviceError::Full);
            }
        }
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| DeviceError::Random)?;
        let device_code = DeviceCode(URL_SAFE_NO_PAD.encode(bytes));
        let key = digest(device_code.expose());
        // A clash of user codes is rare (2.6 × 10¹⁰ codes); try a few.
        for _ in 0..8 {
            let user_code = UserCode::random(&self.rng)?;
            let Entry::Vacant(slot) = self.by_user_code.entry(user_code.clone()) else {
                continue;
            };
            slot.insert(key);
            self.grants.insert(
                key,
                Grant {
                    user_code: user_code.clone(),
                    expires_at: now.saturating_add(millis(DEVICE_CODE_TTL)),
                    interval: millis(POLL_INTERVAL),
                    last_poll: None,
                    status: Status::Pending,
                },
            );
            return Ok((device_code, user_code));
        }
        Err(DeviceError::Full)
    }

    /// The CLI asks at `now` (Unix milliseconds) whether its grant was decided.
    pub(crate) fn poll(&self, device_code: &str, now: u64) -> Poll {
        if device_code.len() > MAX_DEVICE_CODE {
            return Poll::Unknown;
        }
        let key = digest(device_code);
        let finished = {
            let Some(mut grant) = self.grants.get_mut(&key) else {
                return Poll::Unknown;
            };
            if now >= grant.expires_at {
                true
            } else {
                let too_soon = grant
                    .last_poll
                    .is_some_and(|last| now.saturating_sub(last) < grant.interval);
                grant.last_poll = Some(now);
                if too_soon {
                    grant.interval = grant.interval.saturating_add(millis(SLOW_DOWN_STEP));
                    return Poll::SlowDown;
                }
                match grant.status {
                    Status::Pending => return Poll::Pending,
                    Status::Approved(_) | Status::Denied => true,
                }
            }
        };
        debug_assert!(finished);
        let Some((_, grant)) = self.grants.remove(&key) else {
            return Poll::Unknown;
        };
        self.by_user_code.remove(&grant.user_code);
        if now >= grant.expires_at {
            return Poll::Expired;
        }
        match grant.status {
            Status::Approved(session) => Poll::Approved(session),
            Status::Denied => Poll::Denied,
            Status::Pending => Poll::Pending,
        }
    }

    /// Whether a grant with this user code waits for a decision at `now`.
    pub(crate) fn is_pending(&self, user_code: &UserCode, now: u64) -> bool {
        let Some(key) = self.by_user_code.get(user_code).map(|k| *k) else {
            return false;
        };
        self.grants
            .get(&key)
            .is_some_and(|g| now < g.expires_at && matches!(g.status, Status::Pending))
    }

    /// Records a person's decision: approved for `session`, or denied (`None`).
    pub(crate) fn decide(
        &self,
        user_code: &UserCode,
        session: Option<SessionRecord>,
        now: u64,
    ) -> Result<(), DecideError> {
        let key = self
            .by_user_code
            .get(user_code)
            .map(|k| *k)
            .ok_or(DecideError::Unknown)?;
        let mut grant = self.grants.get_mut(&key).ok_or(DecideError::Unknown)?;
        if now >= grant.expires_at {
            return Err(DecideError::Unknown);
        }
        if !matches!(grant.status, Status::Pending) {
            return Err(DecideError::AlreadyDecided);
        }
        grant.status = match session {
            Some(session) => Status::Approved(Box::new(session)),
            None => Status::Denied,
        };
        Ok(())
    }

    /// Forgets grants that expired; returns how many.
    pub(crate) fn purge(&self, now: u64) -> usize {
        let before = self.grants.len();
        self.grants.retain(|_, grant| grant.expires_at > now);
        self.by_user_code
            .retain(|_, key| self.grants.contains_key(key));
        before.saturating_sub(self.grants.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::session::SessionId;

    const NOW: u64 = 1_800_000_000_000;

    fn session() -> SessionRecord {
        SessionRecord {
            id: SessionId([3; 16]),
            subject: "alice".into(),
            email: "alice@example.com".into(),
            groups: vec!["staff".into()],
            issuer: "https://idp.example".into(),
            auth_time: NOW / 1000,
            issued_at: NOW / 1000,
            expires_at: NOW / 1000 + 3600,
            last_seen: NOW / 1000,
            host: "auth.example.com".into(),
            groups_trimmed: false,
        }
    }

    #[test]
    fn user_codes_use_only_the_unambiguous_alphabet_and_show_as_two_groups_of_four() {
        let rng = SystemRandom::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let code = UserCode::random(&rng).unwrap();
            let shown = code.to_string();
            assert_eq!(shown.len(), 9);
            assert_eq!(&shown[4..5], "-");
            for b in shown.bytes().filter(|b| *b != b'-') {
                assert!(USER_CODE_ALPHABET.contains(&b), "{shown}");
            }
            seen.extend(code.0);
        }
        // Every letter shows up in 16 000 draws; no vowel, digit or look-alike ever does.
        assert_eq!(seen.len(), USER_CODE_ALPHABET.len());
        for confusable in b"AEIOU01OIL5S8BY" {
            if !USER_CODE_ALPHABET.contains(confusable) {
                assert!(!seen.contains(confusable));
            }
        }
    }

    #[test]
    fn typed_user_codes_ignore_case_spaces_and_dashes_and_nothing_else() {
        let code = UserCode::parse("BCDF-GHJK").unwrap();
        for same in ["bcdfghjk", "BCDF GHJK", " bcdf-ghjk ", "B-C-D-F-G-H-J-K"] {
            assert_eq!(UserCode::parse(same), Some(code.clone()), "{same}");
        }
        for bad in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-EFGH",
            "BCDF-GHJ1",
            "BCDF_GHJK",
            "ＢCDF-GHJK",
            &"-".repeat(40),
        ] {
            assert_eq!(UserCode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_device_code_is_32_random_bytes_and_never_shown_by_debug() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(device.expose()).unwrap().len(), 32);
        assert!(!format!("{device:?}").contains(device.expose()));
        assert!(!format!("{grants:?}").contains(device.expose()));
        assert!(grants.is_pending(&user, NOW));
        let (other, _) = grants.start(NOW).unwrap();
        assert_ne!(device, other);
    }

    #[test]
    fn a_grant_is_pending_until_approved_and_then_gives_its_session_once() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).unwrap();
        assert_eq!(grants.poll(device.expose(), NOW), Poll::Pending);
        grants.decide(&user, Some(session()), NOW + 1000).unwrap();
        assert!(!grants.is_pending(&user, NOW + 1000));
        assert_eq!(
            grants.decide(&user, None, NOW + 1000),
            Err(DecideError::AlreadyDecided)
        );
        assert_eq!(
            grants.poll(device.expose(), NOW + 2000),
            Poll::Approved(Box::new(session()))
        );
        assert_eq!(grants.poll(device.expose(), NOW + 4000), Poll::Unknown);
        assert_eq!(grants.grants.len(), 0);
        assert_eq!(grants.decide(&user, None, NOW), Err(DecideError::Unknown));
    }

    #[test]
    fn a_denied_grant_says_so_once() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).unwrap();
        grants.decide(&user, None, NOW).unwrap();
        assert_eq!(grants.poll(device.expose(), NOW), Poll::Denied);
        assert_eq!(grants.poll(device.expose(), NOW + 9000), Poll::Unknown);
    }

    #[test]
    fn polling_faster_than_the_interval_slows_the_poller_down_by_five_seconds() {
        let grants = DeviceGrants::new(10);
        let (device, _) = grants.start(NOW).unwrap();
        assert_eq!(grants.poll(device.expose(), NOW), Poll::Pending);
        assert_eq!(grants.poll(device.expose(), NOW + 1999), Poll::SlowDown);
        // The interval is 7 s now, counted from the last poll.
        assert_eq!(
            grants.poll(device.expose(), NOW + 1999 + 6999),
            Poll::SlowDown
        );
        assert_eq!(
            grants.poll(device.expose(), NOW + 1999 + 6999 + 12_000),
            Poll::Pending
        );
    }

    #[test]
    fn an_expired_grant_says_so_once_and_cannot_be_approved() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).unwrap();
        let end = NOW + millis(DEVICE_CODE_TTL);
        assert_eq!(
            grants.decide(&user, Some(session()), end),
            Err(DecideError::Unknown)
        );
        assert!(!grants.is_pending(&user, end));
        assert_eq!(grants.poll(device.expose(), end), Poll::Expired);
        assert_eq!(grants.poll(device.expose(), end), Poll::Unknown);
    }

    #[test]
    fn unknown_and_overlong_device_codes_are_unknown() {
        let grants = DeviceGrants::new(10);
        grants.start(NOW).unwrap();
        assert_eq!(grants.poll("nope", NOW), Poll::Unknown);
        assert_eq!(grants.poll(&"a".repeat(10_000), NOW), Poll::Unknown);
        assert_eq!(grants.poll("", NOW), Poll::Unknown);
    }

    #[test]
    fn a_full_map_sweeps_expired_grants_and_otherwise_refuses_new_ones() {
        let grants = DeviceGrants::new(2);
        grants.start(NOW).unwrap();
        grants.start(NOW + 1).unwrap();
        assert_eq!(grants.start(NOW + 2).unwrap_err(), DeviceError::Full);
        let later = NOW + millis(DEVICE_CODE_TTL) + 1;
        let (device, user) = grants.start(later).unwrap();
        assert_eq!(grants.grants.len(), 1);
        assert_eq!(grants.by_user_code.len(), 1);
        assert!(grants.is_pending(&user, later));
        assert_eq!(grants.poll(device.expose(), later), Poll::Pending);
    }
}
