//! The one-time code that carries a session from the auth host to an app host.
//!
//! After login the auth host seals a [`HandoffCode`] for the app host (purpose
//! `sekisho-handoff-v1`, a different associated data from session cookies) and redirects the
//! browser there with it; the app host opens it, checks it with a [`ReplayGuard`] and sets its
//! own host-only cookie. Plaintext layout, version 1:
//!
//! ```text
//! u8 version (1) || 16-byte random nonce || u64 expires_at || u16 len, return path || session record
//! ```
//!
//! The target host is the session record's `host`, and it is also the host in the associated
//! data: a code minted for one app host does not open on another.

use std::time::Duration;

use dashmap::DashMap;

use super::envelope::{OPEN_BUFFER, Purpose, SealError, SessionError, current_session};
use super::key::SessionKeys;
use super::key::fill_random;
use super::record;
use super::record::SessionRecord;

/// How long a handoff code may be redeemed.
pub const HANDOFF_TTL: Duration = Duration::from_secs(60);

const HANDOFF_VERSION: u8 = 1;
const MAX_RETURN_PATH: usize = 2048;

/// An opened handoff code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffCode {
    /// The session to install on the target host (`session.host`).
    pub session: SessionRecord,
    /// Where to send the browser on the target host: a local path starting with one `/`.
    pub return_path: String,
    /// Random; what the [`ReplayGuard`] remembers.
    pub nonce: [u8; 16],
    /// Unix seconds; the code is refused from then on.
    pub expires_at: u64,
}

/// A sealed handoff code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHandoff {
    /// base64url, at most [`MAX_HANDOFF_CODE_LEN`](super::envelope::MAX_HANDOFF_CODE_LEN) bytes.
    pub code: String,
    /// Groups left out to make the code fit (see [`SessionKeys::seal`]).
    pub dropped_groups: usize,
}

/// A local path (one leading `/`, never `//` or a backslash, which browsers read as another
/// host), no control characters.
fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path.len() <= MAX_RETURN_PATH
}

impl SessionKeys {
    /// Seals a handoff code that expires [`HANDOFF_TTL`] after `now`, for the host
    /// `session.host`. Groups are trimmed as in [`SessionKeys::seal`].
    pub fn seal_handoff(
        &self,
        session: &SessionRecord,
        return_path: &str,
        now: u64,
        groups_needed: &dyn Fn(&str) -> bool,
    ) -> Result<SealedHandoff, SealError> {
        if !is_local_path(return_path) {
            return Err(SealError::BadReturnPath);
        }
        let mut nonce = [0u8; 16];
        fill_random(&self.rng, &mut nonce)?;
        let expires_at = now.saturating_add(HANDOFF_TTL.as_secs());
        let (code, dropped_groups) = self.seal_fitting(
            Purpose::Handoff,
            &session.host,
            &session.groups,
            groups_needed,
            &|keep, trimmed, out| {
                out.push(HANDOFF_VERSION);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&expires_at.to_be_bytes());
                record::put_u16_text(out, "return path", return_path, MAX_RETURN_PATH)?;
                record::encode(session, keep, trimmed, out)
            },
        )?;
        Ok(SealedHandoff {
            code,
            dropped_groups,
        })
    }

    /// Opens a handoff code on `host` at `now`. It fails like [`SessionKeys::open`] (a session
    /// cookie gives [`SessionError::Tampered`]), and with [`SessionError::Expired`] once the
    /// code or the session inside it has expired. One-time use is the [`ReplayGuard`]'s job.
    pub fn open_handoff(
        &self,
        code: &str,
        host: &str,
        now: u64,
    ) -> Result<HandoffCode, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        let mut r = self.open_versioned(Purpose::Handoff, code, host, HANDOFF_VERSION, &mut buf)?;
        let malformed = |_| SessionError::Malformed;
        let nonce = r.array::<16>().map_err(malformed)?;
        let expires_at = r.u64().map_err(malformed)?;
        let return_path = r.u16_text(MAX_RETURN_PATH).map_err(malformed)?;
        if !is_local_path(&return_path) {
            return Err(SessionError::Malformed);
        }
        let session = current_session(r.rest(), host, now, expires_at)?;
        Ok(HandoffCode {
            session,
            return_path,
            nonce,
            expires_at,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the handoff code was already used")]
    AlreadyUsed,
    #[error("too many handoff codes are in flight to remember another")]
    Full,
}

/// Remembers the nonces of redeemed handoff codes until they expire, so each code works once.
///
/// This is per process; `auth/once.rs` adds the replicas' shared state on top of it. The
/// size is bounded: when full, expired entries are purged, and if it is still full the code is
/// refused (fail closed). The caller also runs [`ReplayGuard::purge`] periodically.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: DashMap<[u8; 16], u64>,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard that remembers about `capacity` codes at a time (concurrent redeems may overshoot
    /// it by the number of threads).
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: DashMap::new(),
            capacity,
        }
    }

    /// Marks `code` used; fails when it was used before or the guard is full.
    pub fn redeem(&self, code: &HandoffCode, now: u64) -> Result<(), ReplayError> {
        self.redeem_nonce(code.nonce, code.expires_at, now)
    }

    /// Marks a nonce used until `expires_at`.
    pub(crate) fn redeem_nonce(
        &self,
        nonce: [u8; 16],
        expires_at: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        if self.seen.len() >= self.capacity {
            self.purge(now);
            if self.seen.len() >= self.capacity {
                return Err(ReplayError::Full);
            }
        }
        match self.seen.entry(nonce) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(ReplayError::AlreadyUsed),
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(expires_at);
                Ok(())
            }
        }
    }

    /// Forgets nonces whose codes have expired (they can no longer be opened); returns how many.
    pub fn purge(&self, now: u64) -> usize {
        let before = self.seen.len();
        self.seen.retain(|_, expires_at| *expires_at > now);
        before.saturating_sub(self.seen.len())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
