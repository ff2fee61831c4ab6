//! The device-authorization grants in flight (RFC 8628): a device code the CLI polls with, a
//! user code the person types or confirms on the auth host, and what became of it.
//!
//! A grant is kept in a [`GrantStore`] under its user code: this process's memory
//! ([`MemoryGrants`]), or, in Kubernetes mode, a Lease in the proxy's namespace
//! (`source/kube/device.rs`), so that the CLI may poll any replica and the person approve on
//! any. The device code carries the user code (so that a poll finds the grant) and 32 random
//! bytes; the store holds only the code's SHA-256, and an approved session sealed for that hash
//! (`SessionKeys::seal_device_approval`), so nothing in it lets anyone poll or sign in. A
//! decision is written only over the version of the grant read as pending, and a decided grant
//! is taken by deleting the version read, so each grant is decided once and answered once,
//! whichever replicas race. How fast a CLI polls is checked by each replica it polls.
//!
//! Grants are bounded per replica: when [`DeviceGrants::new`]'s capacity is reached, expired
//! grants are swept, and if it is still reached a new grant is refused.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use dashmap::mapref::entry::{Entry, OccupiedEntry};
use futures_util::future::BoxFuture;
use ring::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;

use crate::auth::once::Unshared;
use crate::every::Every;

/// How long a device grant may wait for its approval.
pub(crate) const DEVICE_CODE_TTL: Duration = Duration::from_secs(600);
/// How often the CLI may poll, at first.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// What a `slow_down` adds to a grant's interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Calls on the store a second that no grant known here makes: new grants, and polls of
/// grants this replica has not seen. Anyone may make them and each costs the store (an API
/// request in Kubernetes mode), so beyond this a flood is answered from memory.
const UNKNOWN_CALLS_PER_SECOND: u32 = 50;
/// Letters that are hard to confuse with each other or with digits, and that spell few words
/// (RFC 8628 §6.1's example set: consonants only).
pub(crate) const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code (shown as `XXXX-XXXX`): 20⁸ ≈ 2.6 × 10¹⁰ codes.
pub(crate) const USER_CODE_LEN: usize = 8;
/// The random bytes in a device code, after the user code's eight letters.
const DEVICE_SECRET_LEN: usize = 32;
/// The longest device code accepted when polling (ours are 54 characters).
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
    /// The eight letters, as stored.
    pub(crate) fn as_str(&self) -> &str {
        // Only alphabet letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The user code a device code begins with (its first eight bytes, alphabet letters only).
    fn of_device_code(bytes: &[u8]) -> Option<Self> {
        let letters: [u8; USER_CODE_LEN] = bytes.get(..USER_CODE_LEN)?.try_into().ok()?;
        letters
            .iter()
            .all(|b| USER_CODE_ALPHABET.contains(b))
            .then_some(Self(letters))
    }

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
        let text = self.as_str();
        write!(f, "{}-{}", &text[..4], &text[4..])
    }
}

impl fmt::Debug for UserCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserCode({self})")
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("too many device logins are waiting to start another")]
    Full,
    #[error("too many device logins are starting at once: try again in a moment")]
    Busy,
    #[error("the operating system's random number generator failed")]
    Random,
    #[error(transparent)]
    Unshared(#[from] Unshared),
}

/// Why a person's decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecideError {
    #[error("no device login with this code is waiting (it may have expired)")]
    Unknown,
    #[error("this device login was already approved or denied")]
    AlreadyDecided,
    #[error("the approval could not be sealed")]
    Seal,
    #[error(transparent)]
    Unshared(#[from] Unshared),
}

/// What a poll finds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Not decided yet (`authorization_pending`).
    Pending,
    /// Polled sooner than the interval allows; the interval grew (`slow_down`).
    SlowDown,
    /// Approved: the session sealed for this device code (open it with
    /// `SessionKeys::open_device_approval` and [`device_code_sha256`]). The grant is gone
    /// now, so this is returned once.
    Approved(String),
    /// Denied (`access_denied`); returned once.
    Denied,
    /// Expired unapproved (`expired_token`); returned once.
    Expired,
    /// No such device code (`invalid_grant`).
    Unknown,
    /// The replicas' shared state could not be read or written; the grant is as it was.
    Unavailable(String),
}

/// A person's decision, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Pending,
    Denied,
    /// The approved session, sealed for the grant's device code.
    Approved(String),
}

/// A grant as a [`GrantStore`] keeps it, under its user code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// SHA-256 of the device code.
    pub(crate) device_code_sha256: [u8; 32],
    /// Unix milliseconds.
    pub(crate) expires_at: u64,
    pub(crate) decision: Decision,
}

/// Where grants are kept, each under its user code, with a version that changes on every
/// write. Writes at a version fail (`Ok(false)`) when the grant has changed or is gone since.
pub(crate) trait GrantStore: Send + Sync {
    /// Adds `grant`: `Ok(false)` when a grant has this user code already.
    fn create<'a>(
        &'a self,
        user_code: &'a UserCode,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>>;
    /// The grant of `user_code`, with its version.
    fn get<'a>(
        &'a self,
        user_code: &'a UserCode,
    ) -> BoxFuture<'a, Result<Option<(Grant, String)>, Unshared>>;
    /// Replaces the grant of `user_code` if it is still at `version`.
    fn replace<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>>;
    /// Removes the grant of `user_code` if it is still at `version`.
    fn remove<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
    ) -> BoxFuture<'a, Result<bool, Unshared>>;
}

impl fmt::Debug for dyn GrantStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantStore")
    }
}

/// Grants in this process's memory, for a proxy that shares them with no other replica.
#[derive(Debug, Default)]
struct MemoryGrants {
    grants: DashMap<UserCode, (Grant, u64)>,
    versions: AtomicU64,
}

impl MemoryGrants {
    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets the grants expired at `now` (Unix milliseconds).
    fn sweep(&self, now: u64) {
        self.grants.retain(|_, (grant, _)| grant.expires_at > now);
    }

    /// The grant of `user_code`, held for a write, if it is at `version`.
    fn at_version(
        &self,
        user_code: &UserCode,
        version: &str,
    ) -> Option<OccupiedEntry<'_, UserCode, (Grant, u64)>> {
        match self.grants.entry(user_code.clone()) {
            Entry::Occupied(held) if held.get().1.to_string() == version => Some(held),
            _ => None,
        }
    }
}

impl GrantStore for MemoryGrants {
    fn create<'a>(
        &'a self,
        user_code: &'a UserCode,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            Ok(match self.grants.entry(user_code.clone()) {
                Entry::Occupied(_) => false,
                Entry::Vacant(slot) => {
                    slot.insert((grant.clone(), self.next_version()));
                    true
                }
            })
        })
    }

    fn get<'a>(
        &'a self,
        user_code: &'a UserCode,
    ) -> BoxFuture<'a, Result<Option<(Grant, String)>, Unshared>> {
        Box::pin(async move {
            Ok(self
                .grants
                .get(user_code)
                .map(|held| (held.0.clone(), held.1.to_string())))
        })
    }

    fn replace<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            let next = self.next_version();
            Ok(self
                .at_version(user_code, version)
                .map(|mut held| *held.get_mut() = (grant.clone(), next))
                .is_some())
        })
    }

    fn remove<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            Ok(self
                .at_version(user_code, version)
                .map(OccupiedEntry::remove)
                .is_some())
        })
    }
}

/// How the CLI of one grant polls this replica.
#[derive(Debug)]
struct Polling {
    /// Unix milliseconds.
    expires_at: u64,
    interval: u64,
    last_poll: Option<u64>,
}

/// The device grants: where they are kept, and how their CLIs poll this replica.
pub(crate) struct DeviceGrants {
    memory: Arc<MemoryGrants>,
    /// Where the replicas keep grants, once set ([`DeviceGrants::share_with`]).
    shared: OnceLock<Arc<dyn GrantStore>>,
    /// SHA-256 of a device code → how its CLI polls here.
    polls: DashMap<[u8; 32], Polling>,
    capacity: usize,
    /// When expired grants are forgotten (else only when full).
    sweep: Every<60>,
    unknown_calls: Budget,
    rng: SystemRandom,
}

/// [`UNKNOWN_CALLS_PER_SECOND`], counted per whole second (of Unix milliseconds).
#[derive(Debug, Default)]
struct Budget {
    second: AtomicU64,
    used: AtomicU32,
}

impl Budget {
    /// Whether one more call fits in the second of `now`.
    fn take(&self, now: u64) -> bool {
        let second = now / 1000;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < UNKNOWN_CALLS_PER_SECOND
    }
}

impl fmt::Debug for DeviceGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceGrants")
            .field("polled_here", &self.polls.len())
            .field("capacity", &self.capacity)
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

/// SHA-256 of a device code: what the store keeps, and what its approval is sealed for.
pub(crate) fn device_code_sha256(device_code: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, device_code.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The approval of a grant, sealed for its device code's SHA-256 (`None`: denied).
pub(crate) type Approve<'a> = Option<&'a (dyn Fn(&[u8; 32]) -> Option<String> + Sync)>;

impl DeviceGrants {
    /// Room for about `capacity` grants started or polled here at a time.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            memory: Arc::default(),
            shared: OnceLock::new(),
            polls: DashMap::new(),
            capacity,
            sweep: Every::default(),
            unknown_calls: Budget::default(),
            rng: SystemRandom::new(),
        }
    }

    /// From now on, grants are kept in `shared`. Set once; later calls change nothing.
    pub(crate) fn share_with(&self, shared: Arc<dyn GrantStore>) {
        let _ = self.shared.set(shared);
    }

    fn store(&self) -> &dyn GrantStore {
        match self.shared.get() {
            Some(shared) => shared.as_ref(),
            None => self.memory.as_ref(),
        }
    }

    /// Starts a grant at `now` (Unix milliseconds): a device code (the user code and 32 random
    /// bytes) and a user code no other waiting grant has.
    pub(crate) async fn start(&self, now: u64) -> Result<(DeviceCode, UserCode), DeviceError> {
        if self.sweep.due(now / 1000) || self.polls.len() >= self.capacity {
            self.purge(now);
        }
        if self.polls.len() >= self.capacity {
            return Err(DeviceError::Full);
        }
        if !self.unknown_calls.take(now) {
            return Err(DeviceError::Busy);
        }
        let expires_at = now.saturating_add(millis(DEVICE_CODE_TTL));
        // A clash of user codes is rare (2.6 × 10¹⁰ codes); try a few.
        for _ in 0..8 {
            let user_code = UserCode::random(&self.rng)?;
            let mut bytes = [0u8; USER_CODE_LEN + DEVICE_SECRET_LEN];
            bytes[..USER_CODE_LEN].copy_from_slice(&user_code.0);
            self.rng
                .fill(&mut bytes[USER_CODE_LEN..])
                .map_err(|_| DeviceError::Random)?;
            let device_code = DeviceCode(URL_SAFE_NO_PAD.encode(bytes));
            let device_code_sha256 = device_code_sha256(device_code.expose());
            let grant = Grant {
                device_code_sha256,
                expires_at,
                decision: Decision::Pending,
            };
            if self.store().create(&user_code, &grant).await? {
                self.polls.insert(
                    device_code_sha256,
                    Polling {
                        expires_at,
                        interval: millis(POLL_INTERVAL),
                        last_poll: None,
                    },
                );
                return Ok((device_code, user_code));
            }
        }
        Err(DeviceError::Full)
    }

    /// The CLI asks at `now` (Unix milliseconds) whether its grant was decided.
    pub(crate) async fn poll(&self, device_code: &str, now: u64) -> Poll {
        if device_code.len() > MAX_DEVICE_CODE {
            return Poll::Unknown;
        }
        let Some(user_code) = URL_SAFE_NO_PAD
            .decode(device_code)
            .ok()
            .filter(|bytes| bytes.len() == USER_CODE_LEN + DEVICE_SECRET_LEN)
            .and_then(|bytes| UserCode::of_device_code(&bytes))
        else {
            return Poll::Unknown;
        };
        let key = device_code_sha256(device_code);
        match self.polls.get_mut(&key) {
            Some(mut polling) => {
                let too_soon = polling
                    .last_poll
                    .is_some_and(|last| now.saturating_sub(last) < polling.interval);
                polling.last_poll = Some(now);
                if too_soon {
                    polling.interval = polling.interval.saturating_add(millis(SLOW_DOWN_STEP));
                    return Poll::SlowDown;
                }
            }
            None if !self.unknown_calls.take(now) => return Poll::SlowDown,
            None => {}
        }
        let found = match self.store().get(&user_code).await {
            Ok(found) => found,
            Err(error) => return Poll::Unavailable(error.0),
        };
        let Some((grant, version)) =
            found.filter(|(grant, _)| bool::from(grant.device_code_sha256.ct_eq(&key)))
        else {
            self.polls.remove(&key);
            return Poll::Unknown;
        };
        let answer = if now >= grant.expires_at {
            Poll::Expired
        } else {
            match grant.decision {
                Decision::Pending => {
                    if self.polls.len() < self.capacity {
                        self.polls.entry(key).or_insert(Polling {
                            expires_at: grant.expires_at,
                            interval: millis(POLL_INTERVAL),
                            last_poll: Some(now),
                        });
                    }
                    return Poll::Pending;
                }
                Decision::Denied => Poll::Denied,
                Decision::Approved(approval) => Poll::Approved(approval),
            }
        };
        // Decided or expired: the first poll to take it answers, any other finds it gone.
        self.polls.remove(&key);
        match self.store().remove(&user_code, &version).await {
            Ok(true) => answer,
            Ok(false) => Poll::Unknown,
            Err(error) => Poll::Unavailable(error.0),
        }
    }

    /// Whether a grant with this user code waits for a decision at `now`.
    pub(crate) async fn is_pending(
        &self,
        user_code: &UserCode,
        now: u64,
    ) -> Result<bool, Unshared> {
        Ok(self
            .store()
            .get(user_code)
            .await?
            .is_some_and(|(grant, _)| {
                now < grant.expires_at && grant.decision == Decision::Pending
            }))
    }

    /// Records a person's decision at `now`: approved with what `approve` seals for the grant's
    /// device code, or denied (`None`).
    pub(crate) async fn decide(
        &self,
        user_code: &UserCode,
        approve: Approve<'_>,
        now: u64,
    ) -> Result<(), DecideError> {
        let (mut grant, version) = self
            .store()
            .get(user_code)
            .await?
            .ok_or(DecideError::Unknown)?;
        if now >= grant.expires_at {
            return Err(DecideError::Unknown);
        }
        if grant.decision != Decision::Pending {
            return Err(DecideError::AlreadyDecided);
        }
        grant.decision = match approve {
            Some(seal) => {
                Decision::Approved(seal(&grant.device_code_sha256).ok_or(DecideError::Seal)?)
            }
            None => Decision::Denied,
        };
        match self.store().replace(user_code, &version, &grant).await? {
            true => Ok(()),
            false => Err(DecideError::AlreadyDecided),
        }
    }

    /// Forgets grants that expired (here, and in this process's memory).
    fn purge(&self, now: u64) {
        self.polls.retain(|_, polling| polling.expires_at > now);
        self.memory.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// What `decide` seals: the device code's hash in hexadecimal, as a stand-in.
    fn approve(device_code_sha256: &[u8; 32]) -> Option<String> {
        Some(
            device_code_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
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

    #[tokio::test]
    async fn a_device_code_is_its_user_code_and_32_random_bytes_and_never_shown_by_debug() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).await.unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(device.expose()).unwrap();
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..8], user.as_str().as_bytes());
        assert!(!format!("{device:?}").contains(device.expose()));
        assert!(!format!("{grants:?}").contains(device.expose()));
        assert!(grants.is_pending(&user, NOW).await.unwrap());
        let (other, _) = grants.start(NOW).await.unwrap();
        assert_ne!(device, other);
        // The store keeps the code's hash, not the code.
        let (kept, _) = grants.memory.get(&user).await.unwrap().unwrap();
        assert_eq!(kept.device_code_sha256, device_code_sha256(device.expose()));
    }

    #[tokio::test]
    async fn a_grant_is_pending_until_approved_and_then_gives_its_approval_once() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).await.unwrap();
        assert_eq!(grants.poll(device.expose(), NOW).await, Poll::Pending);
        grants
            .decide(&user, Some(&approve), NOW + 1000)
            .await
            .unwrap();
        assert!(!grants.is_pending(&user, NOW + 1000).await.unwrap());
        assert!(matches!(
            grants.decide(&user, None, NOW + 1000).await,
            Err(DecideError::AlreadyDecided)
        ));
        let sealed = approve(&device_code_sha256(device.expose())).unwrap();
        assert_eq!(
            grants.poll(device.expose(), NOW + 2000).await,
            Poll::Approved(sealed)
        );
        assert_eq!(
            grants.poll(device.expose(), NOW + 4000).await,
            Poll::Unknown
        );
        assert!(grants.memory.grants.is_empty());
        assert!(grants.polls.is_empty());
        assert!(matches!(
            grants.decide(&user, None, NOW).await,
            Err(DecideError::Unknown)
        ));
    }

    #[tokio::test]
    async fn a_denied_grant_says_so_once() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).await.unwrap();
        grants.decide(&user, None, NOW).await.unwrap();
        assert_eq!(grants.poll(device.expose(), NOW).await, Poll::Denied);
        assert_eq!(
            grants.poll(device.expose(), NOW + 9000).await,
            Poll::Unknown
        );
    }

    #[tokio::test]
    async fn polling_faster_than_the_interval_slows_the_poller_down_by_five_seconds() {
        let grants = DeviceGrants::new(10);
        let (device, _) = grants.start(NOW).await.unwrap();
        let code = device.expose();
        assert_eq!(grants.poll(code, NOW).await, Poll::Pending);
        assert_eq!(grants.poll(code, NOW + 1999).await, Poll::SlowDown);
        // The interval is 7 s now, counted from the last poll.
        assert_eq!(grants.poll(code, NOW + 1999 + 6999).await, Poll::SlowDown);
        assert_eq!(
            grants.poll(code, NOW + 1999 + 6999 + 12_000).await,
            Poll::Pending
        );
    }

    #[tokio::test]
    async fn an_expired_grant_says_so_once_and_cannot_be_approved() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).await.unwrap();
        let end = NOW + millis(DEVICE_CODE_TTL);
        assert!(matches!(
            grants.decide(&user, Some(&approve), end).await,
            Err(DecideError::Unknown)
        ));
        assert!(!grants.is_pending(&user, end).await.unwrap());
        assert_eq!(grants.poll(device.expose(), end).await, Poll::Expired);
        assert_eq!(grants.poll(device.expose(), end).await, Poll::Unknown);
    }

    #[tokio::test]
    async fn unknown_forged_and_overlong_device_codes_are_unknown() {
        let grants = DeviceGrants::new(10);
        let (device, user) = grants.start(NOW).await.unwrap();
        // The user code is no secret: with other random bytes it polls nothing.
        let mut forged = user.as_str().as_bytes().to_vec();
        forged.extend([0u8; 32]);
        let forged = URL_SAFE_NO_PAD.encode(forged);
        let mut lowercase = URL_SAFE_NO_PAD.decode(device.expose()).unwrap();
        lowercase[..8].make_ascii_lowercase();
        let lowercase = URL_SAFE_NO_PAD.encode(lowercase);
        for bad in [
            "nope",
            "",
            &"a".repeat(10_000),
            &forged,
            &lowercase,
            &device.expose()[..50],
            &format!("{}AA", device.expose()),
        ] {
            assert_eq!(grants.poll(bad, NOW).await, Poll::Unknown, "{bad}");
        }
        assert_eq!(grants.poll(device.expose(), NOW).await, Poll::Pending);
    }

    #[tokio::test]
    async fn a_full_replica_sweeps_expired_grants_and_otherwise_refuses_new_ones() {
        let grants = DeviceGrants::new(2);
        grants.start(NOW).await.unwrap();
        grants.start(NOW + 1).await.unwrap();
        assert!(matches!(
            grants.start(NOW + 2).await,
            Err(DeviceError::Full)
        ));
        let later = NOW + millis(DEVICE_CODE_TTL) + 1;
        let (device, user) = grants.start(later).await.unwrap();
        assert_eq!(grants.polls.len(), 1);
        assert_eq!(grants.memory.grants.len(), 1);
        assert!(grants.is_pending(&user, later).await.unwrap());
        assert_eq!(grants.poll(device.expose(), later).await, Poll::Pending);
    }

    /// A store the test can cut off, shared by several replicas.
    #[derive(Default)]
    struct Flaky {
        grants: MemoryGrants,
        down: Mutex<bool>,
    }

    impl Flaky {
        fn up(&self) -> Result<(), Unshared> {
            match *self.down.lock().expect("not poisoned") {
                true => Err(Unshared("down".into())),
                false => Ok(()),
            }
        }
    }

    impl GrantStore for Flaky {
        fn create<'a>(
            &'a self,
            user_code: &'a UserCode,
            grant: &'a Grant,
        ) -> BoxFuture<'a, Result<bool, Unshared>> {
            Box::pin(async move {
                self.up()?;
                self.grants.create(user_code, grant).await
            })
        }
        fn get<'a>(
            &'a self,
            user_code: &'a UserCode,
        ) -> BoxFuture<'a, Result<Option<(Grant, String)>, Unshared>> {
            Box::pin(async move {
                self.up()?;
                self.grants.get(user_code).await
            })
        }
        fn replace<'a>(
            &'a self,
            user_code: &'a UserCode,
            version: &'a str,
            grant: &'a Grant,
        ) -> BoxFuture<'a, Result<bool, Unshared>> {
            Box::pin(async move {
                self.up()?;
                self.grants.replace(user_code, version, grant).await
            })
        }
        fn remove<'a>(
            &'a self,
            user_code: &'a UserCode,
            version: &'a str,
        ) -> BoxFuture<'a, Result<bool, Unshared>> {
            Box::pin(async move {
                self.up()?;
                self.grants.remove(user_code, version).await
            })
        }
    }

    #[tokio::test]
    async fn a_grant_started_on_one_replica_is_approved_on_a_second_and_answered_once_by_a_third() {
        let shared: Arc<Flaky> = Arc::default();
        let replicas = [(); 3].map(|()| DeviceGrants::new(10));
        for replica in &replicas {
            replica.share_with(shared.clone());
        }
        let [one, two, three] = &replicas;
        let (device, user) = one.start(NOW).await.unwrap();
        assert_eq!(three.poll(device.expose(), NOW).await, Poll::Pending);
        assert!(two.is_pending(&user, NOW).await.unwrap());
        two.decide(&user, Some(&approve), NOW).await.unwrap();
        assert!(matches!(
            one.decide(&user, None, NOW).await,
            Err(DecideError::AlreadyDecided)
        ));
        let sealed = approve(&device_code_sha256(device.expose())).unwrap();
        assert_eq!(
            three.poll(device.expose(), NOW + 2000).await,
            Poll::Approved(sealed)
        );
        assert_eq!(one.poll(device.expose(), NOW + 2000).await, Poll::Unknown);
        assert!(one.memory.grants.is_empty(), "nothing kept locally");
    }

    #[tokio::test]
    async fn a_flood_of_unknown_device_codes_and_new_grants_is_answered_from_memory() {
        let shared: Arc<Flaky> = Arc::default();
        let grants = DeviceGrants::new(1000);
        grants.share_with(shared.clone());
        let (device, _) = grants.start(NOW).await.unwrap();
        let unknown = |i: u8| {
            let mut bytes = b"BCDFGHJK".to_vec();
            bytes.extend([i; 32]);
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let mut asked = 0;
        for i in 0..200u8 {
            if grants.poll(&unknown(i), NOW + 10).await == Poll::Unknown {
                asked += 1;
            }
        }
        // One call went to the start; the rest of the second's budget to unknown codes.
        assert_eq!(asked, UNKNOWN_CALLS_PER_SECOND - 1);
        assert!(matches!(
            grants.start(NOW + 20).await,
            Err(DeviceError::Busy)
        ));
        // A grant this replica knows is still answered, and the next second has a new budget.
        assert_eq!(grants.poll(device.expose(), NOW + 30).await, Poll::Pending);
        assert_eq!(grants.poll(&unknown(0), NOW + 1000).await, Poll::Unknown);
        assert!(grants.start(NOW + 1000).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_store_loses_no_grant_and_says_so() {
        let shared: Arc<Flaky> = Arc::default();
        let grants = DeviceGrants::new(10);
        grants.share_with(shared.clone());
        let (device, user) = grants.start(NOW).await.unwrap();
        grants.decide(&user, Some(&approve), NOW).await.unwrap();
        *shared.down.lock().unwrap() = true;
        assert!(matches!(
            grants.poll(device.expose(), NOW + 2000).await,
            Poll::Unavailable(_)
        ));
        assert!(matches!(
            grants.start(NOW).await,
            Err(DeviceError::Unshared(_))
        ));
        assert!(grants.is_pending(&user, NOW).await.is_err());
        *shared.down.lock().unwrap() = false;
        assert!(matches!(
            grants.poll(device.expose(), NOW + 4000).await,
            Poll::Approved(_)
        ));
    }
}
