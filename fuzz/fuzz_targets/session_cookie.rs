//! The session cookie: finding it in `Cookie` headers, removing it before a request goes
//! upstream, and opening the sealed value into a session record.
//!
//! The first byte picks the mode:
//!
//! - 0: the rest is `Cookie` header values, one per line. `session_cookie` agrees with a plain
//!   reading of the headers (none, one, or `Duplicate`); after `strip_session_cookies` no session
//!   cookie is left and every other cookie is still there, in order; a found value that opens is
//!   a current session for the host.
//! - 1: the rest is a cookie value for `SessionKeys::open`.
//! - 2: the rest is a plaintext, sealed with the ring's key as the proxy seals (so the record
//!   decoder behind the AEAD sees arbitrary bytes). What opens is a current session for the host,
//!   and sealing it again gives the same plaintext (the encoding is canonical) and the same
//!   record.
//! - 3: a structured round trip: a record built from the input is sealed; `seal` fails only when
//!   a field is invalid or the record does not fit, the value is a short base64url text that
//!   opens to the record (last activity in whole minutes, groups trimmed to the needed ones only
//!   when all do not fit) or to exactly the time error the clock calls for, and it opens on no
//!   other host and as no other kind of sealed value.
#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use http::header::{COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sekisho_fuzz::{HOST, IDLE, NOW, keys, label, seal, split_mode, unseal};
use sekisho_proxy::fuzzing::session::{
    COOKIE_NAME, CookieError, MAX_COOKIE_VALUE_LEN, SessionError, SessionId, SessionRecord,
    session_cookie, set_cookie, strip_session_cookies,
};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 4 {
        0 => cookie_headers(rest),
        1 => {
            if let Ok(value) = std::str::from_utf8(rest) {
                check_opened(keys.open(value, HOST, NOW, IDLE), NOW, IDLE);
            }
        }
        2 => plaintext(rest),
        _ => {
            if let Ok(input) = RecordInput::arbitrary_take_rest(Unstructured::new(rest)) {
                round_trip(input);
            }
        }
    }
});

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Every `name=value` pair of every `Cookie` header, names and values trimmed (RFC 6265 §5.4
/// read plainly, without any of the proxy's shortcuts).
fn pairs(headers: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for header in headers.get_all(COOKIE) {
        for crumb in header.as_bytes().split(|b| *b == b';') {
            if let Some(eq) = crumb.iter().position(|b| *b == b'=') {
                out.push((trim(&crumb[..eq]).to_vec(), trim(&crumb[eq + 1..]).to_vec()));
            }
        }
    }
    out
}

fn cookie_headers(rest: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    let all = pairs(&headers);
    let (ours, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(name, _)| name == COOKIE_NAME.as_bytes());
    let found = session_cookie(&headers);
    match ours.as_slice() {
        [] => assert_eq!(found, Ok(None)),
        [(_, value)] => match std::str::from_utf8(value) {
            Ok(text) => assert_eq!(found, Ok(Some(text))),
            Err(_) => assert_eq!(found, Err(CookieError::NotText)),
        },
        _ => assert_eq!(found, Err(CookieError::Duplicate)),
    }
    if let Ok(Some(value)) = found {
        check_opened(keys().open(value, HOST, NOW, IDLE), NOW, IDLE);
    }
    strip_session_cookies(&mut headers);
    assert_eq!(
        session_cookie(&headers),
        Ok(None),
        "a session cookie survived"
    );
    assert_eq!(pairs(&headers), others, "other cookies changed");
}

/// What an opened cookie must be: a session for the host, current at `now`.
fn check_opened(opened: Result<SessionRecord, SessionError>, now: u64, idle: Duration) {
    let Ok(record) = opened else {
        return;
    };
    assert!(record.host.eq_ignore_ascii_case(HOST), "{record:?}");
    assert!(now < record.expires_at, "{record:?}");
    assert!(
        now.saturating_sub(record.last_seen) <= idle.as_secs(),
        "{record:?}"
    );
    assert_eq!(record.last_seen % 60, 0, "{record:?}");
}

fn plaintext(rest: &[u8]) {
    let keys = keys();
    let text = seal(label::SESSION, 7, HOST, rest);
    let opened = keys.open(&text, HOST, NOW, IDLE);
    check_opened(opened.clone(), NOW, IDLE);
    let Ok(record) = opened else {
        return;
    };
    let sealed = keys
        .seal(&record, &|_| true)
        .expect("an opened record seals again");
    assert_eq!(sealed.dropped_groups(), 0);
    if !record.groups_trimmed {
        assert_eq!(
            unseal(label::SESSION, HOST, sealed.value()).as_deref(),
            Some(rest),
            "the encoding is not canonical"
        );
    }
    let again = keys
        .open(sealed.value(), HOST, NOW, IDLE)
        .expect("a resealed record opens");
    assert_eq!(
        again,
        SessionRecord {
            groups_trimmed: false,
            ..record
        }
    );
}

#[derive(Arbitrary, Debug)]
struct RecordInput {
    id: [u8; 16],
    subject: String,
    email: String,
    groups: Vec<String>,
    issuer: String,
    auth_time: u64,
    issued_at: u64,
    expires_at: u64,
    last_seen: u64,
    host: String,
    /// Bit `len % 64` says whether a group of that length is needed by a policy.
    needed: u64,
    now: u64,
    idle: u32,
    open_uppercase: bool,
}

const MAX_HOST: usize = 253;
const MAX_GROUPS: usize = 1024;

fn text_ok(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(char::is_control)
}

/// The documented record layout's length with `groups`.
fn plaintext_len(record: &SessionRecord, groups: &[&String]) -> usize {
    2 + 16
        + 24
        + 4
        + 1
        + record.host.len()
        + 1
        + record.subject.len()
        + 1
        + record.email.len()
        + 2
        + record.issuer.len()
        + 2
        + groups.iter().map(|g| 1 + g.len()).sum::<usize>()
}

/// base64url length of a sealed value: version, key id, 12-byte nonce, plaintext, 16-byte tag.
fn sealed_len(plaintext_len: usize) -> usize {
    ((30 + plaintext_len) * 4).div_ceil(3)
}

fn round_trip(input: RecordInput) {
    let keys = keys();
    let record = SessionRecord {
        id: SessionId(input.id),
        subject: input.subject,
        email: input.email,
        groups: input.groups,
        issuer: input.issuer,
        auth_time: input.auth_time,
        issued_at: input.issued_at,
        expires_at: input.expires_at,
        last_seen: input.last_seen,
        host: input.host,
        groups_trimmed: false,
    };
    let needed = |group: &str| input.needed >> (group.len() % 64) & 1 == 1;
    let base_ok = !record.host.is_empty()
        && text_ok(&record.host, MAX_HOST)
        && text_ok(&record.subject, 255)
        && text_ok(&record.email, 255)
        && text_ok(&record.issuer, 1024);
    let fits = |groups: &[&String]| {
        base_ok
            && groups.len() <= MAX_GROUPS
            && groups.iter().all(|g| text_ok(g, 255))
            && sealed_len(plaintext_len(&record, groups)) <= MAX_COOKIE_VALUE_LEN
    };
    let all: Vec<&String> = record.groups.iter().collect();
    let kept: Vec<&String> = record.groups.iter().filter(|g| needed(g)).collect();
    let all_fit = fits(&all);
    let sealed = match keys.seal(&record, &needed) {
        Ok(sealed) => sealed,
        Err(error) => {
            assert!(
                !all_fit && !fits(&kept),
                "a record that fits was refused: {error}"
            );
            return;
        }
    };
    let value = sealed.value();
    assert!(value.len() <= MAX_COOKIE_VALUE_LEN);
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let _ = set_cookie(&sealed, Duration::from_secs(input.now % 100_000));
    let expected = SessionRecord {
        groups: if all_fit {
            record.groups.clone()
        } else {
            kept.into_iter().cloned().collect()
        },
        groups_trimmed: !all_fit,
        last_seen: (record.last_seen / 60).min(u64::from(u32::MAX)) * 60,
        ..record.clone()
    };
    if !all_fit {
        assert_eq!(
            sealed.dropped_groups(),
            record.groups.len() - expected.groups.len()
        );
    } else {
        assert_eq!(sealed.dropped_groups(), 0);
    }
    let idle = Duration::from_secs(u64::from(input.idle));
    let now = input.now;
    let want = if now >= expected.expires_at {
        Err(SessionError::Expired)
    } else if now.saturating_sub(expected.last_seen) > idle.as_secs() {
        Err(SessionError::Idle)
    } else {
        Ok(expected)
    };
    let host = if input.open_uppercase {
        record.host.to_ascii_uppercase()
    } else {
        record.host.clone()
    };
    assert_eq!(keys.open(value, &host, now, idle), want);

    let other = format!("x{}", record.host);
    assert!(matches!(
        keys.open(value, &other, now, idle),
        Err(SessionError::Tampered | SessionError::WrongHost)
    ));
    assert_eq!(
        keys.open_handoff(value, &record.host, now).unwrap_err(),
        SessionError::Tampered
    );
    assert_eq!(
        keys.open_login(value, &record.host).unwrap_err(),
        SessionError::Tampered
    );
}
