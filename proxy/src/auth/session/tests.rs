//! Sealing and opening sessions and handoff codes, the cookie helpers, and inputs an attacker
//! controls.

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cookie::CookieError;
use super::envelope::{ENVELOPE_VERSION, HEADER_LEN, Purpose};
use super::envelope::{MAX_COOKIE_VALUE_LEN, SealError, SessionError};
use super::handoff::HANDOFF_TTL;
use super::key::{SessionKey, new_key_file_line};
use super::record::EncodeError;
use super::record::tests::sample;
use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::NONCE_LEN;

const HOST: &str = "app.example.com";
const IDLE: Duration = Duration::from_secs(3600);

fn keys() -> SessionKeys {
    SessionKeys::generate().unwrap()
}

fn all(_: &str) -> bool {
    true
}

/// A moment inside `sample`'s lifetime and idle window.
fn now() -> u64 {
    sample(HOST, 0).last_seen + 60
}

fn sealed(keys: &SessionKeys, groups: usize) -> String {
    keys.seal(&sample(HOST, groups), &all)
        .unwrap()
        .value()
        .to_owned()
}

/// Found by the `handoff_code` fuzz target: an empty login state sealed, then was refused as
/// malformed (the opener wanted at least one byte of plaintext).
#[test]
fn an_empty_login_state_opens_as_it_was_sealed() {
    let keys = keys();
    let sealed = keys.seal_login(HOST, b"").unwrap();
    assert_eq!(keys.open_login(&sealed, HOST), Ok(Vec::new()));
    assert_eq!(
        keys.open_login(&sealed, "other.example.com"),
        Err(SessionError::Tampered)
    );
    let mut short = sealed.clone();
    short.pop();
    assert!(keys.open_login(&short, HOST).is_err());
}

#[test]
fn a_sealed_cookie_opens_to_the_same_record() {
    let keys = keys();
    let record = sample(HOST, 12);
    let cookie = keys.seal(&record, &all).unwrap();
    assert_eq!(cookie.dropped_groups(), 0);
    let opened = keys.open(cookie.value(), HOST, now(), IDLE).unwrap();
    assert_eq!(
        opened,
        SessionRecord {
            last_seen: record.last_seen / 60 * 60,
            ..record
        }
    );
}

#[test]
fn every_seal_uses_a_fresh_nonce() {
    let keys = keys();
    assert_ne!(sealed(&keys, 1), sealed(&keys, 1));
}

#[test]
fn a_cookie_sealed_for_one_host_does_not_open_on_another() {
    let keys = keys();
    let cookie = sealed(&keys, 2);
    for other in [
        "other.example.com",
        "app.example.co",
        "app.example.com.",
        "xapp.example.com",
        "auth.example.com",
        "",
    ] {
        assert_eq!(
            keys.open(&cookie, other, now(), IDLE),
            Err(SessionError::Tampered),
            "{other}"
        );
    }
    assert_eq!(
        keys.open(&cookie, &"a".repeat(300), now(), IDLE),
        Err(SessionError::WrongHost)
    );
}

#[test]
fn host_matching_ignores_ascii_case() {
    let keys = keys();
    let cookie = sealed(&keys, 0);
    assert!(keys.open(&cookie, "App.Example.COM", now(), IDLE).is_ok());
}

#[test]
fn a_record_for_another_host_is_refused_even_when_the_associated_data_matches() {
    let keys = keys();
    let record = sample("evil.example.com", 0);
    let mut buf = vec![0u8; HEADER_LEN + NONCE_LEN];
    record::encode(&record, &all, false, &mut buf).unwrap();
    let cookie = keys.seal_buffer(Purpose::Session, HOST, buf).unwrap();
    assert_eq!(
        keys.open(&cookie, HOST, now(), IDLE),
        Err(SessionError::WrongHost)
    );
}

#[test]
fn an_expired_session_is_refused_from_its_expiry_on() {
    let keys = keys();
    let mut record = sample(HOST, 0);
    record.last_seen = record.expires_at;
    let cookie = keys.seal(&record, &all).unwrap();
    let at = record.expires_at;
    assert!(keys.open(cookie.value(), HOST, at - 1, IDLE).is_ok());
    assert_eq!(
        keys.open(cookie.value(), HOST, at, IDLE),
        Err(SessionError::Expired)
    );
    assert_eq!(
        keys.open(cookie.value(), HOST, u64::MAX, IDLE),
        Err(SessionError::Expired)
    );
}

#[test]
fn an_idle_session_is_refused_after_the_idle_timeout() {
    let keys = keys();
    let mut record = sample(HOST, 0);
    record.last_seen = 1_700_000_400; // a whole minute
    let cookie = keys.seal(&record, &all).unwrap();
    let limit = record.last_seen + IDLE.as_secs();
    assert!(keys.open(cookie.value(), HOST, limit, IDLE).is_ok());
    assert_eq!(
        keys.open(cookie.value(), HOST, limit + 1, IDLE),
        Err(SessionError::Idle)
    );
}

#[test]
fn a_cookie_from_a_key_not_in_the_ring_is_unknown_and_a_different_key_with_its_id_is_tampered() {
    let cookie = sealed(&keys(), 0); // id 1
    let other = SessionKeys::new(vec![SessionKey::generate(2).unwrap()]).unwrap();
    assert_eq!(
        other.open(&cookie, HOST, now(), IDLE),
        Err(SessionError::UnknownKey { key_id: 1 })
    );
    assert_eq!(
        keys().open(&cookie, HOST, now(), IDLE),
        Err(SessionError::Tampered)
    );
}

#[test]
fn a_rotated_ring_seals_with_the_new_key_and_opens_with_both_until_the_old_is_removed() {
    let old_line = new_key_file_line(1).unwrap();
    let new_line = new_key_file_line(2).unwrap();
    let old = SessionKeys::parse(&old_line).unwrap();
    let rotated = SessionKeys::parse(&format!("{new_line}\n{old_line}\n")).unwrap();
    let retired = SessionKeys::parse(&new_line).unwrap();

    let old_cookie = sealed(&old, 0);
    let new_cookie = sealed(&rotated, 0);
    assert!(rotated.open(&old_cookie, HOST, now(), IDLE).is_ok());
    assert!(retired.open(&new_cookie, HOST, now(), IDLE).is_ok());
    assert_eq!(
        retired.open(&old_cookie, HOST, now(), IDLE),
        Err(SessionError::UnknownKey { key_id: 1 })
    );
}

#[test]
fn malformed_values_are_malformed() {
    let keys = keys();
    let valid = sealed(&keys, 0);
    let mut wrong_version = URL_SAFE_NO_PAD.decode(&valid).unwrap();
    wrong_version[0] = 2;
    for value in [
        String::new(),
        "x".to_owned(),
        "not base64!".to_owned(),
        format!("{valid}="),
        format!("{valid} "),
        valid.replace(['-', '_'], "+"),
        // 27 bytes: less than version, key id, nonce and tag (40 characters, 30 bytes, are an
        // empty plaintext, which only fails authentication).
        valid[..36].to_owned(),
        URL_SAFE_NO_PAD.encode([1u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        URL_SAFE_NO_PAD.encode(wrong_version),
        "A".repeat(MAX_COOKIE_VALUE_LEN + 1),
    ] {
        if value == valid {
            continue; // the replace found nothing to replace
        }
        assert_eq!(
            keys.open(&value, HOST, now(), IDLE),
            Err(SessionError::Malformed),
            "{value:?}"
        );
    }
}

#[test]
fn flipping_any_single_bit_of_a_valid_cookie_makes_it_fail_to_open() {
    let keys = keys();
    let cookie = sealed(&keys, 5);
    let bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let err = keys
            .open(&URL_SAFE_NO_PAD.encode(&flipped), HOST, now(), IDLE)
            .unwrap_err();
        let expected = match bit / 8 {
            0 => SessionError::Malformed,
            1 => SessionError::UnknownKey { key_id: flipped[1] },
            _ => SessionError::Tampered,
        };
        assert_eq!(err, expected, "bit {bit}");
    }
    let text = cookie.as_bytes();
    for bit in 0..text.len() * 8 {
        let mut flipped = text.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let Ok(flipped) = String::from_utf8(flipped) else {
            continue;
        };
        assert!(keys.open(&flipped, HOST, now(), IDLE).is_err(), "bit {bit}");
    }
}

#[test]
fn random_inputs_of_random_lengths_never_panic_and_never_open() {
    let keys = keys();
    let key_id = keys.newest().id();
    let mut rng = StdRng::seed_from_u64(0x5e55_1011);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ ;\"";
    for _ in 0..20_000 {
        let len = rng.random_range(0..2_000);
        let text: String = (0..len)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect();
        assert!(keys.open(&text, HOST, now(), IDLE).is_err());
        assert!(keys.open_handoff(&text, HOST, now()).is_err());
        // Valid envelope header and key id, random body: reaches the AEAD.
        let len = rng.random_range(0..1_100);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if bytes.len() >= 2 {
            bytes[0] = ENVELOPE_VERSION;
            bytes[1] = key_id;
        }
        let text = URL_SAFE_NO_PAD.encode(&bytes);
        assert!(keys.open(&text, HOST, now(), IDLE).is_err());
        assert!(keys.open_handoff(&text, HOST, now()).is_err());
    }
}

#[test]
fn cookie_sizes_stay_under_the_limit_and_trim_unneeded_groups() {
    let keys = keys();
    for groups in [0, 10, 100] {
        let cookie = keys.seal(&sample(HOST, groups), &all).unwrap();
        println!(
            "session cookie with {groups} groups: {} bytes (dropped {})",
            cookie.value().len(),
            cookie.dropped_groups()
        );
        assert!(cookie.value().len() <= MAX_COOKIE_VALUE_LEN);
        assert_eq!(cookie.dropped_groups(), 0);
    }

    // 300 groups cannot all fit; only the ones policies need are kept.
    let record = sample(HOST, 300);
    let needed = |group: &str| group.ends_with('7');
    let cookie = keys.seal(&record, &needed).unwrap();
    println!(
        "session cookie with 300 groups, 30 needed: {} bytes (dropped {})",
        cookie.value().len(),
        cookie.dropped_groups()
    );
    assert_eq!(cookie.dropped_groups(), 270);
    let opened = keys.open(cookie.value(), HOST, now(), IDLE).unwrap();
    assert!(opened.groups_trimmed);
    assert_eq!(opened.groups.len(), 30);
    assert!(opened.groups.iter().all(|g| needed(g)));

    // When even the needed groups do not fit, sealing fails.
    assert!(matches!(
        keys.seal(&record, &all),
        Err(SealError::TooLarge {
            max: MAX_COOKIE_VALUE_LEN,
            ..
        })
    ));
}

#[test]
fn an_overlong_group_that_policies_do_not_need_is_dropped_instead_of_failing() {
    let keys = keys();
    let mut record = sample(HOST, 2);
    record.groups.push("g".repeat(300));
    let cookie = keys.seal(&record, &|g: &str| g.len() < 100).unwrap();
    assert_eq!(cookie.dropped_groups(), 1);
    assert!(matches!(
        keys.seal(&record, &all),
        Err(SealError::Encode(EncodeError::FieldTooLong {
            field: "group",
            ..
        }))
    ));
}

#[test]
fn a_handoff_code_opens_on_its_target_host_until_it_expires() {
    let keys = keys();
    let session = sample(HOST, 4);
    let issued = now();
    let sealed = keys
        .seal_handoff(&session, "/dashboard?tab=1", issued, &all)
        .unwrap();
    assert_eq!(sealed.dropped_groups, 0);
    let code = keys.open_handoff(&sealed.code, HOST, issued).unwrap();
    assert_eq!(code.return_path, "/dashboard?tab=1");
    assert_eq!(code.expires_at, issued + HANDOFF_TTL.as_secs());
    assert_eq!(code.session.groups, session.groups);
    assert_eq!(code.session.id, session.id);
    assert!(
        keys.open_handoff(&sealed.code, HOST, code.expires_at - 1)
            .is_ok()
    );
    assert_eq!(
        keys.open_handoff(&sealed.code, HOST, code.expires_at),
        Err(SessionError::Expired)
    );
    assert_eq!(
        keys.open_handoff(&sealed.code, "other.example.com", issued),
        Err(SessionError::Tampered)
    );
}

#[test]
fn a_handoff_for_an_expired_session_is_refused() {
    let keys = keys();
    let session = sample(HOST, 0);
    let sealed = keys
        .seal_handoff(&session, "/", session.expires_at - 10, &all)
        .unwrap();
    assert_eq!(
        keys.open_handoff(&sealed.code, HOST, session.expires_at),
        Err(SessionError::Expired)
    );
}

#[test]
fn a_session_cookie_is_never_a_handoff_code_and_a_handoff_code_is_never_a_session_cookie() {
    let keys = keys();
    let cookie = sealed(&keys, 1);
    assert_eq!(
        keys.open_handoff(&cookie, HOST, now()),
        Err(SessionError::Tampered)
    );
    let code = keys
        .seal_handoff(&sample(HOST, 1), "/", now(), &all)
        .unwrap()
        .code;
    assert_eq!(
        keys.open(&code, HOST, now(), IDLE),
        Err(SessionError::Tampered)
    );
}

#[test]
fn return_paths_that_leave_the_host_are_refused() {
    let keys = keys();
    for path in [
        "",
        "https://evil.example",
        "//evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/\t/evil.example",
        "/a\r\nSet-Cookie: x",
        "evil",
    ] {
        assert!(
            matches!(
                keys.seal_handoff(&sample(HOST, 0), path, now(), &all),
                Err(SealError::BadReturnPath)
            ),
            "{path:?}"
        );
    }
    assert!(
        keys.seal_handoff(&sample(HOST, 0), "/a/b?c=//d", now(), &all)
            .is_ok()
    );
}

#[test]
fn flipping_any_single_bit_of_a_handoff_code_makes_it_fail_to_open() {
    let keys = keys();
    let code = keys
        .seal_handoff(&sample(HOST, 3), "/x", now(), &all)
        .unwrap()
        .code;
    let bytes = URL_SAFE_NO_PAD.decode(&code).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            keys.open_handoff(&URL_SAFE_NO_PAD.encode(&flipped), HOST, now())
                .is_err(),
            "bit {bit}"
        );
    }
}

#[test]
fn a_handoff_code_is_redeemed_once() {
    let keys = keys();
    let guard = ReplayGuard::new(100);
    let sealed = keys
        .seal_handoff(&sample(HOST, 0), "/", now(), &all)
        .unwrap();
    let code = keys.open_handoff(&sealed.code, HOST, now()).unwrap();
    assert_eq!(guard.redeem(&code, now()), Ok(()));
    assert_eq!(guard.redeem(&code, now()), Err(ReplayError::AlreadyUsed));
    let again = keys.open_handoff(&sealed.code, HOST, now()).unwrap();
    assert_eq!(guard.redeem(&again, now()), Err(ReplayError::AlreadyUsed));
}

#[test]
fn a_full_replay_guard_purges_expired_codes_and_otherwise_refuses() {
    let guard = ReplayGuard::new(2);
    assert_eq!(guard.redeem_nonce([1; 16], 100, 50), Ok(()));
    assert_eq!(guard.redeem_nonce([2; 16], 200, 50), Ok(()));
    assert_eq!(guard.redeem_nonce([3; 16], 200, 60), Err(ReplayError::Full));
    assert_eq!(guard.len(), 2);
    // At 100 the first code has expired: it is purged to make room.
    assert_eq!(guard.redeem_nonce([3; 16], 200, 100), Ok(()));
    assert_eq!(guard.len(), 2);
    assert_eq!(guard.purge(199), 0);
    assert_eq!(guard.purge(200), 2);
    assert!(guard.is_empty());
}

#[test]
fn the_set_cookie_value_is_host_only_secure_and_http_only() {
    let keys = keys();
    let cookie = keys.seal(&sample(HOST, 0), &all).unwrap();
    let header = set_cookie(&cookie, Duration::from_secs(43_200));
    let text = header.to_str().unwrap();
    assert_eq!(
        text,
        format!(
            "__Host-sekisho={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=43200",
            cookie.value()
        )
    );
    let clear = clear_cookie();
    let clear = clear.to_str().unwrap();
    assert!(clear.starts_with("__Host-sekisho=;"));
    assert!(clear.ends_with("Max-Age=0"));
    for text in [text, clear] {
        assert!(!text.to_ascii_lowercase().contains("domain"), "{text}");
        assert!(text.contains("; Path=/;") && text.contains("; Secure;"));
        assert!(text.contains("; HttpOnly;"));
    }
}

fn cookie_headers(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-other", HeaderValue::from_static("1"));
    for value in values {
        headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
    }
    headers
}

fn cookies_of(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn the_session_cookie_is_found_among_other_cookies_and_headers() {
    for (values, want) in [
        (vec!["__Host-sekisho=abc"], Some("abc")),
        (vec!["a=1; __Host-sekisho=abc; b=2"], Some("abc")),
        (vec!["a=1;__Host-sekisho = abc ;b=2"], Some("abc")),
        (vec!["a=1", "b=2", "__Host-sekisho=abc"], Some("abc")),
        (vec!["a=1; b=2"], None),
        (
            vec!["__Host-sekisho2=abc; x__Host-sekisho=abc; __host-sekisho=abc"],
            None,
        ),
        (vec!["__Host-sekisho"], None),
        (vec![], None),
    ] {
        let headers = cookie_headers(&values);
        assert_eq!(session_cookie(&headers), Ok(want), "{values:?}");
    }
}

#[test]
fn two_session_cookies_are_ambiguous_and_rejected() {
    for values in [
        vec!["__Host-sekisho=a; __Host-sekisho=b"],
        vec!["__Host-sekisho=a", "x=1; __Host-sekisho=a"],
    ] {
        let headers = cookie_headers(&values);
        assert_eq!(session_cookie(&headers), Err(CookieError::Duplicate));
    }
}

#[test]
fn a_session_cookie_that_is_not_utf8_is_not_text() {
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_bytes(b"__Host-sekisho=\xff\xfe").unwrap(),
    );
    assert_eq!(session_cookie(&headers), Err(CookieError::NotText));
}

#[test]
fn stripping_removes_only_our_cookies_and_empty_headers() {
    let mut headers = cookie_headers(&[
        "a=1; __Host-sekisho=abc; b=2",
        "__Host-sekisho=def",
        "c=3;d=4",
        " __Host-sekisho=x ; e=5 ",
    ]);
    strip_session_cookies(&mut headers);
    assert_eq!(cookies_of(&headers), vec!["a=1; b=2", "c=3;d=4", "e=5"]);
    assert_eq!(session_cookie(&headers), Ok(None));
    assert_eq!(headers.get("x-other").unwrap(), "1");

    let mut only_ours = cookie_headers(&["__Host-sekisho=abc", "__Host-sekisho=def"]);
    strip_session_cookies(&mut only_ours);
    assert!(only_ours.get(COOKIE).is_none());
    assert_eq!(only_ours.len(), 1);
}

#[test]
fn a_lone_session_cookie_header_goes_whole_and_look_alikes_stay() {
    for lone in ["__Host-sekisho=abc", " __Host-sekisho = abc "] {
        let mut headers = cookie_headers(&[lone]);
        strip_session_cookies(&mut headers);
        assert!(headers.get(COOKIE).is_none(), "{lone:?} was kept");
        assert_eq!(headers.get("x-other").unwrap(), "1");
    }
    for other in [
        "__Host-sekishoo=abc",
        "x__Host-sekisho=abc",
        "__Host-sekisho",
    ] {
        let mut headers = cookie_headers(&[other]);
        strip_session_cookies(&mut headers);
        assert_eq!(cookies_of(&headers), vec![other]);
    }
}

#[test]
fn stripping_leaves_headers_without_our_cookie_byte_for_byte() {
    let values = ["a=1;  b=2 ", "c=3; x__Host-sekisho=1; __Host-sekishoo=2"];
    let mut headers = cookie_headers(&values);
    strip_session_cookies(&mut headers);
    assert_eq!(cookies_of(&headers), values.to_vec());
}

#[test]
fn stripping_random_cookie_headers_never_panics_and_always_removes_ours() {
    let mut rng = StdRng::seed_from_u64(0xc00c1e);
    let parts = [
        "__Host-sekisho",
        "=",
        ";",
        " ",
        "a",
        "b=1",
        "\t",
        "\"",
        "__Host-",
        "x",
    ];
    for _ in 0..5_000 {
        let mut headers = HeaderMap::new();
        for _ in 0..rng.random_range(0..4) {
            let text: String = (0..rng.random_range(0..12))
                .map(|_| parts[rng.random_range(0..parts.len())])
                .collect();
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.append(COOKIE, value);
            }
        }
        let before: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        let _ = session_cookie(&headers);
        strip_session_cookies(&mut headers);
        assert_eq!(session_cookie(&headers), Ok(None));
        // A header is either one we did not need to touch or a non-empty rewrite.
        for value in headers.get_all(COOKIE) {
            assert!(before.contains(value) || !value.is_empty(), "{before:?}");
        }
    }
}
