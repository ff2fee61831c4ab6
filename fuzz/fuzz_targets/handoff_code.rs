//! The one-time values sealed like session cookies: the handoff code (auth host to app host),
//! and with it the CLI's authorization code, refresh token, CSRF token and device approval and
//! the login cookie, which share its envelope and record decoder.
//!
//! The first byte picks the mode:
//!
//! - 0: the rest is a code text for every opener.
//! - 1: the second byte picks a purpose and the rest is a plaintext sealed for it as the proxy
//!   seals (so the decoders behind the AEAD see arbitrary bytes). An opened handoff code has a
//!   local return path, is for the host and current at the clock; sealing what opened again
//!   gives it back; the replay guard takes its nonce once. A CSRF token checks exactly when its
//!   plaintext is version 1, the session id and a later expiry; a device approval opens only
//!   for the device code hash it holds; a login cookie opens to its plaintext.
//! - 2: a structured round trip for each kind: what is sealed opens to itself, or the sealing
//!   is refused for a reason the input has; and it opens as no other kind and on no other host.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sekisho_fuzz::{HOST, IDLE, NOW, keys, label, seal, split_mode};
use sekisho_proxy::fuzzing::session::{
    CSRF_TTL, HANDOFF_TTL, MAX_HANDOFF_CODE_LEN, ReplayError, ReplayGuard, SessionError, SessionId,
    SessionKeys, SessionRecord,
};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                open_all(keys, text);
            }
        }
        1 => {
            if let Some((purpose, plaintext)) = split_mode(rest) {
                sealed_plaintext(keys, purpose, plaintext);
            }
        }
        _ => {
            if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(rest)) {
                round_trip(keys, input);
            }
        }
    }
});

fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

fn check_session(session: &SessionRecord, now: u64) {
    assert!(session.host.eq_ignore_ascii_case(HOST), "{session:?}");
    assert!(now < session.expires_at, "{session:?}");
}

/// Every opener on one text; whatever opens must satisfy its checks.
fn open_all(keys: &SessionKeys, text: &str) {
    if let Ok(code) = keys.open_handoff(text, HOST, NOW) {
        check_handoff(keys, &code);
    }
    if let Ok(code) = keys.open_cli_code(text, HOST, NOW) {
        check_session(&code.session, NOW);
        assert!(NOW < code.expires_at);
    }
    if let Ok(refresh) = keys.open_cli_refresh(text, HOST, NOW) {
        check_session(&refresh.session, NOW);
    }
    let _ = keys.check_csrf(text, HOST, &SessionId([7; 16]), NOW);
    if let Ok(session) = keys.open_device_approval(text, HOST, &[7; 32], NOW) {
        check_session(&session, NOW);
    }
    let _ = keys.open_login(text, HOST);
}

fn check_handoff(keys: &SessionKeys, code: &sekisho_proxy::fuzzing::session::HandoffCode) {
    assert!(is_local_path(&code.return_path), "{code:?}");
    check_session(&code.session, NOW);
    assert!(NOW < code.expires_at, "{code:?}");
    let guard = ReplayGuard::new(4);
    assert_eq!(guard.redeem(code, NOW), Ok(()));
    assert_eq!(guard.redeem(code, NOW), Err(ReplayError::AlreadyUsed));
    assert_eq!(guard.purge(code.expires_at), 1);
    // What opened seals again and opens to the same code (a fresh nonce and expiry).
    let sealed = keys
        .seal_handoff(&code.session, &code.return_path, NOW, &|_| true)
        .expect("an opened code seals again");
    assert_eq!(sealed.dropped_groups, 0);
    let again = keys
        .open_handoff(&sealed.code, HOST, NOW)
        .expect("a resealed code opens");
    assert_eq!(again.return_path, code.return_path);
    assert_eq!(
        again.session,
        SessionRecord {
            groups_trimmed: false,
            ..code.session.clone()
        }
    );
    assert_eq!(again.expires_at, NOW + HANDOFF_TTL.as_secs());
    // A code is never a session cookie.
    assert!(keys.open(&sealed.code, HOST, NOW, IDLE).is_err());
}

fn sealed_plaintext(keys: &SessionKeys, purpose: u8, plaintext: &[u8]) {
    match purpose % 6 {
        0 => {
            let text = seal(label::HANDOFF, 7, HOST, plaintext);
            if let Ok(code) = keys.open_handoff(&text, HOST, NOW) {
                check_handoff(keys, &code);
            }
        }
        1 => {
            let text = seal(label::CLI_CODE, 7, HOST, plaintext);
            if let Ok(code) = keys.open_cli_code(&text, HOST, NOW) {
                check_session(&code.session, NOW);
                assert!(NOW < code.expires_at);
                let sealed = keys
                    .seal_cli_code(
                        &code.session,
                        &code.code_challenge,
                        &code.redirect_uri,
                        NOW,
                        &|_| true,
                    )
                    .expect("an opened code seals again");
                let again = keys
                    .open_cli_code(sealed.expose(), HOST, NOW)
                    .expect("a resealed code opens");
                assert_eq!(again.code_challenge, code.code_challenge);
                assert_eq!(again.redirect_uri, code.redirect_uri);
                assert_eq!(
                    again.session,
                    SessionRecord {
                        groups_trimmed: false,
                        ..code.session
                    }
                );
            }
        }
        2 => {
            let text = seal(label::CLI_REFRESH, 7, HOST, plaintext);
            if let Ok(refresh) = keys.open_cli_refresh(&text, HOST, NOW) {
                check_session(&refresh.session, NOW);
                let sealed = keys
                    .seal_cli_refresh(&refresh.session, &|_| true)
                    .expect("an opened refresh token seals again");
                let again = keys
                    .open_cli_refresh(sealed.expose(), HOST, NOW)
                    .expect("a resealed refresh token opens");
                assert_eq!(
                    again.session,
                    SessionRecord {
                        groups_trimmed: false,
                        ..refresh.session
                    }
                );
            }
        }
        3 => {
            let text = seal(label::CLI_CSRF, 7, HOST, plaintext);
            let id: [u8; 16] = plaintext
                .get(1..17)
                .and_then(|id| id.try_into().ok())
                .unwrap_or([7; 16]);
            let expected = plaintext.len() == 25
                && plaintext[0] == 1
                && plaintext[1..17] == id
                && NOW < u64::from_be_bytes(plaintext[17..25].try_into().expect("8 bytes"));
            assert_eq!(
                keys.check_csrf(&text, HOST, &SessionId(id), NOW),
                expected,
                "{plaintext:?}"
            );
        }
        4 => {
            let text = seal(label::CLI_DEVICE, 7, HOST, plaintext);
            let hash: [u8; 32] = plaintext
                .get(1..33)
                .and_then(|hash| hash.try_into().ok())
                .unwrap_or([7; 32]);
            if let Ok(session) = keys.open_device_approval(&text, HOST, &hash, NOW) {
                check_session(&session, NOW);
                assert_eq!(plaintext[0], 1, "only version 1 opens");
                let mut other = hash;
                other[0] ^= 1;
                assert_eq!(
                    keys.open_device_approval(&text, HOST, &other, NOW),
                    Err(SessionError::Tampered)
                );
                let sealed = keys
                    .seal_device_approval(&session, &hash, &|_| true)
                    .expect("an opened approval seals again");
                let again = keys
                    .open_device_approval(sealed.expose(), HOST, &hash, NOW)
                    .expect("a resealed approval opens");
                assert_eq!(
                    again,
                    SessionRecord {
                        groups_trimmed: false,
                        ..session
                    }
                );
            }
        }
        _ => {
            let text = seal(label::LOGIN, 7, HOST, plaintext);
            let opened = keys.open_login(&text, HOST);
            if text.len() <= MAX_HANDOFF_CODE_LEN {
                assert_eq!(opened.as_deref(), Ok(plaintext));
            } else {
                assert_eq!(opened, Err(SessionError::Malformed));
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Handoff,
    CliCode,
    CliRefresh,
    Csrf,
    Login,
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: Kind,
    id: [u8; 16],
    subject: String,
    email: String,
    groups: Vec<String>,
    issuer: String,
    auth_time: u64,
    expires_at: u64,
    host: String,
    return_path: String,
    code_challenge: String,
    redirect_uri: String,
    state: Vec<u8>,
    now: u64,
}

fn text_ok(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(char::is_control)
}

/// base64url length of a sealed value: version, key id, 12-byte nonce, plaintext, 16-byte tag.
fn sealed_len(plaintext_len: usize) -> usize {
    ((30 + plaintext_len) * 4).div_ceil(3)
}

/// Which openers accept `text` on `host` at `now`, in the order of [`Kind`], then the session
/// cookie's and the device approval's.
fn opens_as(keys: &SessionKeys, text: &str, host: &str, now: u64, id: &SessionId) -> [bool; 7] {
    [
        keys.open_handoff(text, host, now).is_ok(),
        keys.open_cli_code(text, host, now).is_ok(),
        keys.open_cli_refresh(text, host, now).is_ok(),
        keys.check_csrf(text, host, id, now),
        keys.open_login(text, host).is_ok(),
        keys.open(text, host, now, IDLE).is_ok(),
        keys.open_device_approval(text, host, &[7; 32], now).is_ok(),
    ]
}

fn round_trip(keys: &SessionKeys, input: Input) {
    let session = SessionRecord {
        id: SessionId(input.id),
        subject: input.subject,
        email: input.email,
        groups: input.groups,
        issuer: input.issuer,
        auth_time: input.auth_time,
        issued_at: input.auth_time,
        expires_at: input.expires_at,
        last_seen: (input.auth_time / 60).min(u64::from(u32::MAX)) * 60,
        host: input.host,
        groups_trimmed: false,
    };
    let now = input.now;
    let host = session.host.clone();
    let record_ok = !host.is_empty()
        && text_ok(&host, 253)
        && text_ok(&session.subject, 255)
        && text_ok(&session.email, 255)
        && text_ok(&session.issuer, 1024)
        && session.groups.len() <= 1024
        && session.groups.iter().all(|g| text_ok(g, 255));
    // Version and flags, id, three times, last seen, three u8 lengths and host, subject and
    // email, the issuer with its u16 length, the group count and the groups.
    let record_len = 2
        + 16
        + 24
        + 4
        + 3
        + host.len()
        + session.subject.len()
        + session.email.len()
        + 2
        + session.issuer.len()
        + 2
        + session.groups.iter().map(|g| 1 + g.len()).sum::<usize>();
    let fits = |prefix: usize| sealed_len(prefix + record_len) <= MAX_HANDOFF_CODE_LEN;
    let all = |_: &str| true;
    let index;
    let text = match input.kind {
        Kind::Handoff => {
            index = 0;
            let ok = record_ok
                && is_local_path(&input.return_path)
                && input.return_path.len() <= 2048
                && fits(1 + 16 + 8 + 2 + input.return_path.len());
            match keys.seal_handoff(&session, &input.return_path, now, &all) {
                Ok(sealed) => {
                    assert!(ok, "sealed what should not seal");
                    let want_ok =
                        now.saturating_add(HANDOFF_TTL.as_secs()) > now && now < session.expires_at;
                    match keys.open_handoff(&sealed.code, &host, now) {
                        Ok(code) => {
                            assert!(want_ok);
                            assert_eq!(code.session, session);
                            assert_eq!(code.return_path, input.return_path);
                        }
                        Err(error) => {
                            assert!(!want_ok, "{error}");
                            assert_eq!(error, SessionError::Expired);
                        }
                    }
                    sealed.code
                }
                Err(error) => {
                    assert!(!ok, "a code that fits was refused: {error}");
                    return;
                }
            }
        }
        Kind::CliCode => {
            index = 1;
            let ok = record_ok
                && text_ok(&input.code_challenge, 128)
                && text_ok(&input.redirect_uri, 512)
                && fits(1 + 16 + 8 + 1 + input.code_challenge.len() + 2 + input.redirect_uri.len());
            match keys.seal_cli_code(
                &session,
                &input.code_challenge,
                &input.redirect_uri,
                now,
                &all,
            ) {
                Ok(sealed) => {
                    assert!(ok, "sealed what should not seal");
                    let want_ok = now.saturating_add(60) > now && now < session.expires_at;
                    match keys.open_cli_code(sealed.expose(), &host, now) {
                        Ok(code) => {
                            assert!(want_ok);
                            assert_eq!(code.session, session);
                            assert_eq!(code.code_challenge, input.code_challenge);
                            assert_eq!(code.redirect_uri, input.redirect_uri);
                        }
                        Err(error) => {
                            assert!(!want_ok, "{error}");
                            assert_eq!(error, SessionError::Expired);
                        }
                    }
                    sealed.expose().to_owned()
                }
                Err(error) => {
                    assert!(!ok, "a code that fits was refused: {error}");
                    return;
                }
            }
        }
        Kind::CliRefresh => {
            index = 2;
            let ok = record_ok && fits(1 + 16);
            match keys.seal_cli_refresh(&session, &all) {
                Ok(sealed) => {
                    assert!(ok, "sealed what should not seal");
                    match keys.open_cli_refresh(sealed.expose(), &host, now) {
                        Ok(refresh) => {
                            assert!(now < session.expires_at);
                            assert_eq!(refresh.session, session);
                        }
                        Err(error) => {
                            assert!(now >= session.expires_at, "{error}");
                            assert_eq!(error, SessionError::Expired);
                        }
                    }
                    sealed.expose().to_owned()
                }
                Err(error) => {
                    assert!(!ok, "a token that fits was refused: {error}");
                    return;
                }
            }
        }
        Kind::Csrf => {
            index = 3;
            match keys.seal_csrf(&session.id, &host, now) {
                Ok(sealed) => {
                    assert!(host.len() <= 253);
                    let fresh = now.saturating_add(CSRF_TTL.as_secs()) > now;
                    assert_eq!(
                        keys.check_csrf(sealed.expose(), &host, &session.id, now),
                        fresh
                    );
                    let mut other = session.id;
                    other.0[0] ^= 1;
                    assert!(!keys.check_csrf(sealed.expose(), &host, &other, now));
                    assert!(!keys.check_csrf(
                        sealed.expose(),
                        &host,
                        &session.id,
                        now.saturating_add(CSRF_TTL.as_secs())
                    ));
                    sealed.expose().to_owned()
                }
                Err(error) => {
                    assert!(host.len() > 253, "{error}");
                    return;
                }
            }
        }
        Kind::Login => {
            index = 4;
            let ok = host.len() <= 253 && sealed_len(input.state.len()) <= MAX_HANDOFF_CODE_LEN;
            match keys.seal_login(&host, &input.state) {
                Ok(text) => {
                    assert!(ok, "sealed what should not seal");
                    assert_eq!(keys.open_login(&text, &host), Ok(input.state.clone()));
                    text
                }
                Err(error) => {
                    assert!(!ok, "a state that fits was refused: {error}");
                    return;
                }
            }
        }
    };
    // Opened as anything else, or on another host, it fails.
    let others = opens_as(keys, &text, &host, now, &session.id);
    for (i, opened) in others.iter().enumerate() {
        if i != index {
            assert!(!opened, "a {:?} opened as kind {i}", input.kind);
        }
    }
    let elsewhere = format!("x{host}");
    assert_eq!(
        opens_as(keys, &text, &elsewhere, now, &session.id),
        [false; 7],
        "opened on another host"
    );
}
