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

pub use cli::{
    CLI_CODE_TTL, CSRF_TTL, CliCode, CliRefresh, MAX_CODE_CHALLENGE, MAX_REDIRECT_URI, SealedText,
};
pub use cookie::{
    COOKIE_NAME, CookieError, clear_cookie, session_cookie, set_cookie, strip_session_cookies,
};
pub use envelope::{MAX_COOKIE_VALUE_LEN, SealError, SealedSession, SessionError, unix_now};
pub use handoff::{
    HANDOFF_TTL, HandoffCode, MAX_HANDOFF_CODE_LEN, ReplayError, ReplayGuard, SealedHandoff,
};
pub use key::{
    KEY_LEN, KeyError, RandomUnavailable, SessionKey, SessionKeys, add_key_to_file,
    new_key_file_line,
};
pub use record::{EncodeError, SessionId, SessionRecord};

#[cfg(test)]
mod tests;
