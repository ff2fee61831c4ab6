//! The sealed envelope every session value shares: AES-256-GCM under a key of the ring, with
//! a purpose label and the host in the associated data (see the module documentation of
//! [`super`]). Pure logic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, NONCE_LEN, Nonce};

use super::key::{RandomUnavailable, SessionKeys, fill_random};
use super::record::{self, EncodeError, MAX_HOST, Reader, SessionRecord};

/// The longest session cookie value this module produces (1.5 KiB), so that the whole
/// `Set-Cookie` header stays far below browsers' 4 KiB per cookie.
pub const MAX_COOKIE_VALUE_LEN: usize = 1536;

/// The longest handoff code this module produces or accepts (it travels in a URL).
pub const MAX_HANDOFF_CODE_LEN: usize = 4096;

pub(super) const ENVELOPE_VERSION: u8 = 1;
pub(super) const HEADER_LEN: usize = 2;
pub(super) const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext.
const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The longest purpose label.
pub(super) const PURPOSE_MAX: usize = 23;
/// Room for the decoded bytes of the longest accepted text (base64 decoding needs up to 3 bytes
/// of slack).
pub(super) const OPEN_BUFFER: usize = MAX_HANDOFF_CODE_LEN / 4 * 3 + 3;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Why a session cookie or handoff code was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session value is malformed")]
    Malformed,
    #[error("the session was sealed with key {key_id}, which is not in the key ring")]
    UnknownKey { key_id: u8 },
    #[error("the session value failed authentication")]
    Tampered,
    #[error("the session has expired")]
    Expired,
    #[error("the session has been idle too long")]
    Idle,
    #[error("the session is for another host")]
    WrongHost,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(
        "the sealed value would have {len} bytes even with only the groups policies need; \
         at most {max} fit"
    )]
    TooLarge { len: usize, max: usize },
    #[error("the return path must be a local path starting with a single `/`")]
    BadReturnPath,
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

/// A sealed session cookie value. Only [`SessionKeys::seal`] makes one, so its value is always
/// base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSession {
    value: String,
    dropped_groups: usize,
}

impl SealedSession {
    /// The cookie value: base64url, at most [`MAX_COOKIE_VALUE_LEN`] bytes.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Groups left out to make the cookie fit (only the groups policies need were kept). The
    /// caller logs it when not zero.
    pub fn dropped_groups(&self) -> usize {
        self.dropped_groups
    }
}

/// What a sealed value is for: its label in the associated data and its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Session,
    Handoff,
    Login,
    CliCode,
    CliRefresh,
    CliCsrf,
    CliDevice,
}

impl Purpose {
    pub(super) fn label(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"sekisho-session-v1\0",
            Purpose::Handoff => b"sekisho-handoff-v1\0",
            Purpose::Login => b"sekisho-login-v1\0",
            Purpose::CliCode => b"sekisho-cli-code-v1\0",
            Purpose::CliRefresh => b"sekisho-cli-refresh-v1\0",
            Purpose::CliCsrf => b"sekisho-cli-csrf-v1\0",
            Purpose::CliDevice => b"sekisho-cli-device-v1\0",
        }
    }

    fn max_text_len(self) -> usize {
        match self {
            Purpose::Session => MAX_COOKIE_VALUE_LEN,
            Purpose::Handoff
            | Purpose::Login
            | Purpose::CliCode
            | Purpose::CliRefresh
            | Purpose::CliCsrf
            | Purpose::CliDevice => MAX_HANDOFF_CODE_LEN,
        }
    }
}

/// The session record that ends an opened value, if it is for `host` and neither it nor the
/// value (which `value_expires_at`, Unix seconds) has expired at `now`:
/// [`SessionError::Malformed`], [`SessionError::WrongHost`], then [`SessionError::Expired`].
pub(super) fn current_session(
    rest: &[u8],
    host: &str,
    now: u64,
    value_expires_at: u64,
) -> Result<SessionRecord, SessionError> {
    let session = record::decode(rest).map_err(|_| SessionError::Malformed)?;
    if !session.host.eq_ignore_ascii_case(host) {
        return Err(SessionError::WrongHost);
    }
    if now >= value_expires_at || now >= session.expires_at {
        return Err(SessionError::Expired);
    }
    Ok(session)
}

/// The base64url (no padding) length of a sealed value with `plaintext_len` bytes inside.
fn sealed_text_len(plaintext_len: usize) -> usize {
    ((OVERHEAD + plaintext_len) * 4).div_ceil(3)
}

/// Associated data in a stack buffer: `label || header || lowercase host`. `None` when the host
/// is longer than any host can be.
fn associated_data<'b>(
    purpose: Purpose,
    header: [u8; HEADER_LEN],
    host: &str,
    buf: &'b mut [u8; PURPOSE_MAX + HEADER_LEN + MAX_HOST],
) -> Option<&'b [u8]> {
    if host.len() > MAX_HOST {
        return None;
    }
    let label = purpose.label();
    let end = label.len() + HEADER_LEN + host.len();
    buf[..label.len()].copy_from_slice(label);
    buf[label.len()..label.len() + HEADER_LEN].copy_from_slice(&header);
    for (to, from) in buf[label.len() + HEADER_LEN..end]
        .iter_mut()
        .zip(host.bytes())
    {
        *to = from.to_ascii_lowercase();
    }
    Some(&buf[..end])
}

type EncodeFn<'a> =
    dyn Fn(&dyn Fn(&str) -> bool, bool, &mut Vec<u8>) -> Result<(), EncodeError> + 'a;

impl SessionKeys {
    /// Seals `record` into a cookie value for `record.host` with the newest key.
    ///
    /// When all groups do not fit in [`MAX_COOKIE_VALUE_LEN`], only those for which
    /// `groups_needed` is true are kept, and [`SealedSession::dropped_groups`] says how many were
    /// left out; if even that does not fit, [`SealError::TooLarge`].
    pub fn seal(
        &self,
        record: &SessionRecord,
        groups_needed: &dyn Fn(&str) -> bool,
    ) -> Result<SealedSession, SealError> {
        let (value, dropped_groups) = self.seal_fitting(
            Purpose::Session,
            &record.host,
            &record.groups,
            groups_needed,
            &|keep, trimmed, out| record::encode(record, keep, trimmed, out),
        )?;
        Ok(SealedSession {
            value,
            dropped_groups,
        })
    }

    /// Opens a session cookie value for a request to `host` at `now` (Unix seconds).
    ///
    /// Errors, in the order checked: [`Malformed`](SessionError::Malformed),
    /// [`UnknownKey`](SessionError::UnknownKey), [`Tampered`](SessionError::Tampered) (also what
    /// a cookie sealed for another host gives), [`WrongHost`](SessionError::WrongHost),
    /// [`Expired`](SessionError::Expired) (`now >= expires_at`), and
    /// [`Idle`](SessionError::Idle) (`now - last_seen > idle_timeout`, `last_seen` in whole
    /// minutes).
    pub fn open(
        &self,
        value: &str,
        host: &str,
        now: u64,
        idle_timeout: Duration,
    ) -> Result<SessionRecord, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        let plaintext = self.open_bytes(Purpose::Session, value, host, &mut buf)?;
        let record = record::decode(plaintext).map_err(|_| SessionError::Malformed)?;
        if !record.host.eq_ignore_ascii_case(host) {
            return Err(SessionError::WrongHost);
        }
        if now >= record.expires_at {
            return Err(SessionError::Expired);
        }
        if now.saturating_sub(record.last_seen) > idle_timeout.as_secs() {
            return Err(SessionError::Idle);
        }
        Ok(record)
    }

    /// Seals the state of a login in progress (the short-lived login cookie) for `host`.
    pub fn seal_login(&self, host: &str, state: &[u8]) -> Result<String, SealError> {
        let start = HEADER_LEN + NONCE_LEN;
        let len = sealed_text_len(state.len());
        if len > Purpose::Login.max_text_len() {
            return Err(SealError::TooLarge {
                len,
                max: Purpose::Login.max_text_len(),
            });
        }
        let mut buf = Vec::with_capacity(start + state.len() + TAG_LEN);
        buf.resize(start, 0);
        buf.extend_from_slice(state);
        self.seal_buffer(Purpose::Login, host, buf)
    }

    /// Opens what [`SessionKeys::seal_login`] sealed for `host`.
    pub fn open_login(&self, text: &str, host: &str) -> Result<Vec<u8>, SessionError> {
        let mut buf = [0u8; OPEN_BUFFER];
        Ok(self
            .open_bytes(Purpose::Login, text, host, &mut buf)?
            .to_vec())
    }

    /// Encodes with all groups, then with only the needed ones if that is too large, and seals.
    /// Returns the text and how many groups were dropped.
    pub(super) fn seal_fitting(
        &self,
        purpose: Purpose,
        host: &str,
        groups: &[String],
        groups_needed: &dyn Fn(&str) -> bool,
        encode: &EncodeFn<'_>,
    ) -> Result<(String, usize), SealError> {
        let max = purpose.max_text_len();
        let start = HEADER_LEN + NONCE_LEN;
        let mut buf = Vec::with_capacity(512);
        buf.resize(start, 0);
        let all_fit =
            encode(&|_| true, false, &mut buf).is_ok() && sealed_text_len(buf.len() - start) <= max;
        let mut dropped = 0;
        if !all_fit {
            buf.truncate(start);
            encode(groups_needed, true, &mut buf)?;
            let len = sealed_text_len(buf.len() - start);
            if len > max {
                return Err(SealError::TooLarge { len, max });
            }
            dropped = groups.iter().filter(|group| !groups_needed(group)).count();
        }
        self.seal_buffer(purpose, host, buf)
            .map(|text| (text, dropped))
    }

    /// Seals `buf` (room for header and nonce, then the plaintext) with the newest key.
    pub(super) fn seal_buffer(
        &self,
        purpose: Purpose,
        host: &str,
        mut buf: Vec<u8>,
    ) -> Result<String, SealError> {
        let key = self.newest();
        let header = [ENVELOPE_VERSION, key.id()];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&self.rng, &mut nonce)?;
        buf[..HEADER_LEN].copy_from_slice(&header);
        buf[HEADER_LEN..HEADER_LEN + NONCE_LEN].copy_from_slice(&nonce);
        let mut aad_buf = [0u8; PURPOSE_MAX + HEADER_LEN + MAX_HOST];
        let aad = associated_data(purpose, header, host, &mut aad_buf).ok_or(
            EncodeError::FieldTooLong {
                field: "host",
                len: host.len(),
                max: MAX_HOST,
            },
        )?;
        let tag = key
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[HEADER_LEN + NONCE_LEN..],
            )
            // ring refuses only inputs longer than AES-GCM's limit (about 64 GiB); the
            // plaintext here is a few KiB at most.
            .map_err(|_| SealError::TooLarge {
                len: buf.len(),
                max: purpose.max_text_len(),
            })?;
        buf.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&buf))
    }

    /// Opens a value whose plaintext starts with a version byte: a reader after it, or
    /// [`SessionError::Malformed`] for another version.
    pub(super) fn open_versioned<'b>(
        &self,
        purpose: Purpose,
        text: &str,
        host: &str,
        version: u8,
        buf: &'b mut [u8; OPEN_BUFFER],
    ) -> Result<Reader<'b>, SessionError> {
        let mut r = Reader::new(self.open_bytes(purpose, text, host, buf)?);
        match r.u8() {
            Ok(v) if v == version => Ok(r),
            _ => Err(SessionError::Malformed),
        }
    }

    /// Decodes, finds the key, and authenticates; returns the plaintext inside `buf`.
    pub(super) fn open_bytes<'b>(
        &self,
        purpose: Purpose,
        text: &str,
        host: &str,
        buf: &'b mut [u8; OPEN_BUFFER],
    ) -> Result<&'b [u8], SessionError> {
        if text.len() > purpose.max_text_len() {
            return Err(SessionError::Malformed);
        }
        let len = URL_SAFE_NO_PAD
            .decode_slice(text, buf)
            .map_err(|_| SessionError::Malformed)?;
        // An empty plaintext is a value too (`seal_login` seals an empty state).
        if len < OVERHEAD {
            return Err(SessionError::Malformed);
        }
        let (head, sealed) = buf[..len].split_at_mut(HEADER_LEN + NONCE_LEN);
        let header = [head[0], head[1]];
        if header[0] != ENVELOPE_VERSION {
            return Err(SessionError::Malformed);
        }
        let key = self
            .get(header[1])
            .ok_or(SessionError::UnknownKey { key_id: header[1] })?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&head[HEADER_LEN..]);
        let mut aad_buf = [0u8; PURPOSE_MAX + HEADER_LEN + MAX_HOST];
        let aad =
            associated_data(purpose, header, host, &mut aad_buf).ok_or(SessionError::WrongHost)?;
        let plaintext = key
            .aead()
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
            .map_err(|_| SessionError::Tampered)?;
        Ok(plaintext)
    }
}
