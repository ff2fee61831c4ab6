//! An accepted tunnel stream's record: who opened it for which host, the newest token it
//! presented, and once it has closed, why. The hub keeps these for the client to ask about; a
//! leaf, so that the registry does not depend on the tunnel endpoints.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sekisho_wire::tunnel::StreamEnd;

/// A tunnel stream's id: random, known only to the client that opened it.
pub(crate) type StreamId = [u8; 16];

/// An accepted tunnel: what it was allowed by, to ask again while it is open, and once it has
/// closed, why.
pub(crate) struct Stream {
    pub(crate) id: StreamId,
    pub(crate) host: String,
    pub(crate) user: Arc<str>,
    /// The agent whose link carries the stream, if the target is behind one.
    pub(crate) agent: Option<String>,
    /// When the stream was accepted.
    pub(crate) opened: Instant,
    /// Who the token was for: a renewal must be for the same person.
    pub(crate) issuer: String,
    pub(crate) subject: String,
    /// The newest token the client presented (the first, or one from a renewal).
    pub(crate) token: Mutex<String>,
    pub(crate) closed: Mutex<Option<Closed>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("host", &self.host)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Closed {
    pub(crate) at: Instant,
    pub(crate) end: StreamEnd,
    /// The sentence for people: `end`'s, or the proxy's own words for a cut.
    pub(crate) reason: String,
}

impl Stream {
    pub(crate) fn closed_since(&self) -> Option<Instant> {
        lock(&self.closed).as_ref().map(|c| c.at)
    }

    /// Records how the stream ended, unless it has already: the first end is the one that
    /// counts. False when it had.
    pub(crate) fn close(&self, end: StreamEnd, reason: String) -> bool {
        let mut closed = lock(&self.closed);
        if closed.is_some() {
            return false;
        }
        *closed = Some(Closed {
            at: Instant::now(),
            end,
            reason,
        });
        true
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
