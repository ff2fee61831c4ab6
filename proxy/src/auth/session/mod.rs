//! Stateless browser sessions: a [`SessionRecord`] sealed with AES-256-GCM into a cookie that
//! any replica holding the shared key file can open.
//!
//! This module is pure logic: it never touches the network, and the key file (reading it with
//! [`SessionKeys::load`], adding a key with [`add_key_to_file`]) is its only I/O. It must not depend on the request pipeline; the
//! pipeline calls it. Per-request work is one AEAD open (about a microsecond), no public-key
//! crypto.
//!
//! Sealed value (cookie value or handoff code), base64url without padding:
//!
//! ```text
//! u8 envelope version (1) || u8 key id || 12-byte random nonce || ciphertext || 16-byte tag
//! ```
//!
//! The associated data is `purpose || envelope version || key id || lowercase host`, where the
//! purpose is `b"sekisho-session-v1\0"` for session cookies and `b"sekisho-handoff-v1\0"` for
//! handoff codes (the login cookie and the CLI's codes, refresh tokens and CSRF tokens have
//! labels of their own: see [`cli`]). So a cookie sealed for one host fails authentication on every other host, and
//! a session cookie is never accepted as a handoff code nor the other way round. The host is
//! given without a port (browsers send a host's cookies to all its ports).
//!
//! Nonces are 96 random bits per seal; with AES-GCM a key should seal well under 2³² values, so
//! rotate the key file (see [`key`](SessionKeys::parse)) long before that.

mod cli;
mod cookie;
mod envelope;
mod handoff;
mod key;
mod record;

pub(crate) use cli::MAX_REDIRECT_URI;
pub(crate) use cookie::{clear_cookie, session_cookie, set_cookie, strip_session_cookies};
pub(crate) use envelope::SealError;
pub use envelope::unix_now;
pub(crate) use handoff::{ReplayError, ReplayGuard};
pub(crate) use key::RandomUnavailable;
pub(crate) use key::SessionKey;
pub use key::{KeyError, SessionKeys, add_key_to_file};
pub use record::{SessionId, SessionRecord};

/// Everything the fuzz targets drive (see [`crate::fuzzing`]).
pub(crate) mod fuzzing {
    pub use super::cli::{CSRF_TTL, CliCode, CliRefresh};
    pub use super::cookie::{
        COOKIE_NAME, CookieError, session_cookie, set_cookie, strip_session_cookies,
    };
    pub use super::envelope::{
        MAX_COOKIE_VALUE_LEN, MAX_HANDOFF_CODE_LEN, SealError, SealedSession, SessionError,
    };
    pub use super::handoff::{HANDOFF_TTL, HandoffCode, ReplayError, ReplayGuard, SealedHandoff};
    pub use super::key::SessionKeys;
    pub use super::record::{SessionId, SessionRecord};
}

#[cfg(test)]
mod tests;
