//! The session record and its compact binary encoding (the plaintext inside the cookie).
//!
//! Layout, version 1 (integers big-endian, strings UTF-8 without control characters):
//!
//! ```text
//! u8  format version (1)
//! u8  flags: bit 0 = some groups were left out to fit the cookie; other bits must be 0
//! 16  session id
//! u64 auth_time, u64 issued_at, u64 expires_at   (Unix seconds)
//! u32 last_seen                                  (Unix minutes)
//! u8  len, host      (≤ 253)
//! u8  len, subject   (≤ 255)
//! u8  len, email     (≤ 255)
//! u16 len, issuer    (≤ 1024)
//! u16 count (≤ 1024), then per group: u8 len, group (≤ 255)
//! ```
//!
//! The decoder checks every length against the bytes that remain and against the field's
//! maximum before it allocates, and rejects trailing bytes.

use std::fmt;

use ring::rand::SystemRandom;

use super::key::{RandomUnavailable, fill_random};

pub(super) const FORMAT_VERSION: u8 = 1;
const FLAG_GROUPS_TRIMMED: u8 = 0b0000_0001;

pub(super) const MAX_HOST: usize = 253;
const MAX_SUBJECT: usize = 255;
const MAX_EMAIL: usize = 255;
const MAX_ISSUER: usize = 1024;
const MAX_GROUP: usize = 255;
const MAX_GROUPS: usize = 1024;

/// A session's 128-bit random id: what revocation and logs name a session by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id from the OS CSPRNG.
    pub fn random() -> Result<Self, RandomUnavailable> {
        let mut id = [0u8; 16];
        fill_random(&SystemRandom::new(), &mut id)?;
        Ok(Self(id))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Who a session belongs to and for how long. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    /// The IdP's `sub`.
    pub subject: String,
    /// May be empty when the IdP gave none.
    pub email: String,
    pub groups: Vec<String>,
    /// The IdP's issuer URL.
    pub issuer: String,
    /// When the user last authenticated at the IdP.
    pub auth_time: u64,
    pub issued_at: u64,
    /// Absolute end of the session, whatever the activity.
    pub expires_at: u64,
    /// Last activity, for the idle timeout. Stored in whole minutes: an opened record's value is
    /// rounded down to the minute.
    pub last_seen: u64,
    /// The host this session's cookie is for (lowercase, no port).
    pub host: String,
    /// Set on an opened record when some groups were left out to keep the cookie small: only
    /// the groups that policies need were kept. Ignored when sealing.
    pub groups_trimmed: bool,
}

impl SessionRecord {
    /// Records activity at `now`. True when the stored (minute) value changed, that is when the
    /// caller should send a fresh cookie so that the idle timer restarts on other replicas too.
    pub fn touch(&mut self, now: u64) -> bool {
        let minute = now / 60 * 60;
        if minute > self.last_seen / 60 * 60 {
            self.last_seen = minute;
            true
        } else {
            false
        }
    }
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the {field} has {len} bytes; at most {max} fit a session")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the {field} contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("the session has {count} groups; at most {max} fit")]
    TooManyGroups { count: usize, max: usize },
    #[error("the session has no host")]
    NoHost,
}

/// The plaintext did not decode (after authentication, so only a key holder's bug makes this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

/// Appends the encoding of `record` with only the groups `keep` allows.
pub(super) fn encode(
    record: &SessionRecord,
    keep: &dyn Fn(&str) -> bool,
    trimmed: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if record.host.is_empty() {
        return Err(EncodeError::NoHost);
    }
    out.push(FORMAT_VERSION);
    out.push(if trimmed { FLAG_GROUPS_TRIMMED } else { 0 });
    out.extend_from_slice(&record.id.0);
    out.extend_from_slice(&record.auth_time.to_be_bytes());
    out.extend_from_slice(&record.issued_at.to_be_bytes());
    out.extend_from_slice(&record.expires_at.to_be_bytes());
    let minutes = u32::try_from(record.last_seen / 60).unwrap_or(u32::MAX);
    out.extend_from_slice(&minutes.to_be_bytes());
    put_u8_text(out, "host", &record.host, MAX_HOST)?;
    put_u8_text(out, "subject", &record.subject, MAX_SUBJECT)?;
    put_u8_text(out, "email", &record.email, MAX_EMAIL)?;
    put_u16_text(out, "issuer", &record.issuer, MAX_ISSUER)?;
    let count_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut count = 0usize;
    for group in record.groups.iter().filter(|group| keep(group)) {
        put_u8_text(out, "group", group, MAX_GROUP)?;
        count += 1;
    }
    if count > MAX_GROUPS {
        return Err(EncodeError::TooManyGroups {
            count,
            max: MAX_GROUPS,
        });
    }
    // `count` ≤ MAX_GROUPS (1024) was just checked, so it fits a u16.
    let count = u16::try_from(count).unwrap_or(u16::MAX);
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    Ok(())
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), EncodeError> {
    if text.len() > max {
        return Err(EncodeError::FieldTooLong {
            field,
            len: text.len(),
            max,
        });
    }
    if text.chars().any(char::is_control) {
        return Err(EncodeError::ControlCharacter { field });
    }
    Ok(())
}

pub(super) fn put_u8_text(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), EncodeError> {
    debug_assert!(max <= usize::from(u8::MAX));
    check_text(field, text, max)?;
    out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

pub(super) fn put_u16_text(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), EncodeError> {
    debug_assert!(max <= usize::from(u16::MAX));
    check_text(field, text, max)?;
    out.extend_from_slice(&u16::try_from(text.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A cursor over untrusted bytes: every read is checked against what remains.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.rest.len() {
            return Err(Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// `len` bytes of text, checked against `max` and the remaining input before allocating.
    fn text(&mut self, len: usize, max: usize) -> Result<String, Malformed> {
        if len > max || len > self.rest.len() {
            return Err(Malformed);
        }
        let text = std::str::from_utf8(self.take(len)?).map_err(|_| Malformed)?;
        if text.chars().any(char::is_control) {
            return Err(Malformed);
        }
        Ok(text.to_owned())
    }

    pub(super) fn u8_text(&mut self, max: usize) -> Result<String, Malformed> {
        let len = usize::from(self.u8()?);
        self.text(len, max)
    }

    pub(super) fn u16_text(&mut self, max: usize) -> Result<String, Malformed> {
        let len = usize::from(self.u16()?);
        self.text(len, max)
    }

    pub(super) fn rest(self) -> &'a [u8] {
        self.rest
    }

    fn finish(self) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

/// Decodes a whole record; trailing bytes are an error.
pub(super) fn decode(bytes: &[u8]) -> Result<SessionRecord, Malformed> {
    let mut r = Reader::new(bytes);
    if r.u8()? != FORMAT_VERSION {
        return Err(Malformed);
    }
    let flags = r.u8()?;
    if flags & !FLAG_GROUPS_TRIMMED != 0 {
        return Err(Malformed);
    }
    let id = SessionId(r.array()?);
    let auth_time = r.u64()?;
    let issued_at = r.u64()?;
    let expires_at = r.u64()?;
    let last_seen = u64::from(r.u32()?) * 60;
    let host = r.u8_text(MAX_HOST)?;
    if host.is_empty() {
        return Err(Malformed);
    }
    let subject = r.u8_text(MAX_SUBJECT)?;
    let email = r.u8_text(MAX_EMAIL)?;
    let issuer = r.u16_text(MAX_ISSUER)?;
    let count = usize::from(r.u16()?);
    // Each group takes at least its length byte: a count the input cannot hold is rejected
    // before the vector is allocated.
    if count > MAX_GROUPS || count > r.rest.len() {
        return Err(Malformed);
    }
    let mut groups = Vec::with_capacity(count);
    for _ in 0..count {
        groups.push(r.u8_text(MAX_GROUP)?);
    }
    r.finish()?;
    Ok(SessionRecord {
        id,
        subject,
        email,
        groups,
        issuer,
        auth_time,
        issued_at,
        expires_at,
        last_seen,
        host,
        groups_trimmed: flags & FLAG_GROUPS_TRIMMED != 0,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    pub(in crate::auth::session) fn sample(host: &str, groups: usize) -> SessionRecord {
        SessionRecord {
            id: SessionId([7; 16]),
            subject: "110169484474386276334".to_owned(),
            email: "alice@example.com".to_owned(),
            groups: (0..groups).map(|i| format!("team-{i:03}")).collect(),
            issuer: "https://accounts.google.com".to_owned(),
            auth_time: 1_700_000_000,
            issued_at: 1_700_000_010,
            expires_at: 1_700_000_010 + 12 * 3600,
            last_seen: 1_700_000_040,
            host: host.to_owned(),
            groups_trimmed: false,
        }
    }

    fn encoded(record: &SessionRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode(record, &|_| true, false, &mut out).unwrap();
        out
    }

    #[test]
    fn a_record_round_trips_with_last_seen_rounded_down_to_the_minute() {
        let record = sample("app.example.com", 3);
        let decoded = decode(&encoded(&record)).unwrap();
        assert_eq!(decoded.last_seen, 1_700_000_040 / 60 * 60);
        assert_eq!(
            decoded,
            SessionRecord {
                last_seen: decoded.last_seen,
                ..record
            }
        );
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_rejected() {
        let bytes = encoded(&sample("app.example.com", 4));
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), Err(Malformed), "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(Malformed));
    }

    #[test]
    fn a_group_count_larger_than_the_input_is_rejected_before_allocating() {
        let mut bytes = encoded(&sample("app.example.com", 0));
        let at = bytes.len() - 2;
        bytes[at..].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&bytes), Err(Malformed));
        bytes[at..].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(decode(&bytes), Err(Malformed));
    }

    #[test]
    fn unknown_versions_and_flags_are_rejected() {
        let bytes = encoded(&sample("app.example.com", 1));
        let mut wrong = bytes.clone();
        wrong[0] = 2;
        assert_eq!(decode(&wrong), Err(Malformed));
        let mut wrong = bytes;
        wrong[1] = 0b10;
        assert_eq!(decode(&wrong), Err(Malformed));
    }

    #[test]
    fn fields_that_do_not_fit_or_carry_control_characters_are_refused() {
        let mut out = Vec::new();
        let mut record = sample("app.example.com", 0);
        record.subject = "s".repeat(256);
        assert!(matches!(
            encode(&record, &|_| true, false, &mut out),
            Err(EncodeError::FieldTooLong {
                field: "subject",
                ..
            })
        ));
        let mut record = sample("app.example.com", 0);
        record.email = "a@b\r\nX-Injected: 1".to_owned();
        assert_eq!(
            encode(&record, &|_| true, false, &mut out),
            Err(EncodeError::ControlCharacter { field: "email" })
        );
        let mut record = sample("", 0);
        assert_eq!(
            encode(&record, &|_| true, false, &mut out),
            Err(EncodeError::NoHost)
        );
        record.host = "h".to_owned();
        record.groups = vec!["g".to_owned(); MAX_GROUPS + 1];
        assert!(matches!(
            encode(&record, &|_| true, false, &mut out),
            Err(EncodeError::TooManyGroups { .. })
        ));
    }

    #[test]
    fn random_and_mutated_plaintexts_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5ec1_5e55);
        let valid = encoded(&sample("app.example.com", 5));
        for _ in 0..20_000 {
            let len = rng.random_range(0..300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decode(&bytes);
            let mut mutated = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..mutated.len());
                mutated[at] = rng.random();
            }
            let _ = decode(&mutated);
        }
    }

    #[test]
    fn touching_a_record_reports_only_minute_changes() {
        let mut record = sample("app.example.com", 0);
        record.last_seen = 600;
        assert!(!record.touch(659));
        assert!(record.touch(660));
        assert_eq!(record.last_seen, 660);
        assert!(!record.touch(700));
    }

    #[test]
    fn a_session_id_prints_as_hex() {
        let id = SessionId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_ne!(SessionId::random().unwrap(), SessionId::random().unwrap());
    }
}
