//! What the fuzz targets share: a fixed session key ring and an envelope that seals arbitrary
//! plaintext exactly as `sekisho_proxy::fuzzing::session` does (so that the fuzzer reaches the record
//! decoders behind the AEAD through the public `open` functions), input framing, and a
//! loopback JWKS server for the bearer verifier.
//!
//! The envelope is written from the format documented in `proxy/src/session/mod.rs`;
//! [`check_envelope`] proves at start-up that it still matches the product (a target panics at
//! once otherwise, so a format change cannot leave the fuzzer testing only `Tampered`).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sekisho_proxy::fuzzing::session::{SessionId, SessionKeys, SessionRecord};

/// Key bytes 0, 1, …, 31 (id 3) and 32, 33, …, 63 (id 7, the newest); the proxy's own tests
/// use the same two keys.
pub const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
pub const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";
pub const KEY_IDS: [u8; 2] = [7, 3];

/// The host every byte-level input is opened on, and the clock it is opened at.
pub const HOST: &str = "app.example.com";
pub const NOW: u64 = 1_700_000_100;
pub const IDLE: Duration = Duration::from_secs(3600);

/// The purpose labels of the associated data (`Purpose::label` in the proxy).
pub mod label {
    pub const SESSION: &[u8] = b"sekisho-session-v1\0";
    pub const HANDOFF: &[u8] = b"sekisho-handoff-v1\0";
    pub const LOGIN: &[u8] = b"sekisho-login-v1\0";
    pub const CLI_CODE: &[u8] = b"sekisho-cli-code-v1\0";
    pub const CLI_REFRESH: &[u8] = b"sekisho-cli-refresh-v1\0";
    pub const CLI_CSRF: &[u8] = b"sekisho-cli-csrf-v1\0";
    pub const CLI_DEVICE: &[u8] = b"sekisho-cli-device-v1\0";
}

const ENVELOPE_VERSION: u8 = 1;

/// The ring every target opens with: key 7 (newest) and key 3.
pub fn keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = SessionKeys::parse(&format!("7:{KEY_B}\n3:{KEY_A}\n")).expect("fixed key ring");
        check_envelope(&keys);
        keys
    })
}

fn key_bytes(id: u8) -> Option<[u8; 32]> {
    let text = match id {
        7 => KEY_B,
        3 => KEY_A,
        _ => return None,
    };
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn aead(id: u8) -> LessSafeKey {
    // Ids without a key in the ring still seal (with key 7's bytes): the proxy must answer
    // `UnknownKey` before it tries any key.
    let bytes = key_bytes(id).or_else(|| key_bytes(7)).expect("key 7");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte key"))
}

fn aad(label: &[u8], key_id: u8, host: &str) -> Vec<u8> {
    let mut aad = label.to_vec();
    aad.extend_from_slice(&[ENVELOPE_VERSION, key_id]);
    aad.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
    aad
}

/// Seals `plaintext` for `host` under `label` with key `key_id`, as the proxy would.
pub fn seal(label: &[u8], key_id: u8, host: &str, plaintext: &[u8]) -> String {
    let nonce = [0x5e; NONCE_LEN];
    let mut sealed = plaintext.to_vec();
    aead(key_id)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(label, key_id, host)),
            &mut sealed,
        )
        .expect("a small plaintext");
    let mut out = vec![ENVELOPE_VERSION, key_id];
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

/// Opens what the proxy sealed (used only to check the envelope).
pub fn unseal(label: &[u8], host: &str, text: &str) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let (&[version, key_id], rest) = bytes.split_first_chunk::<2>()?;
    if version != ENVELOPE_VERSION {
        return None;
    }
    let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
    let mut sealed = sealed.to_vec();
    let plaintext = aead(key_id)
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad(label, key_id, host)),
            &mut sealed,
        )
        .ok()?;
    Some(plaintext.to_vec())
}

/// A record that opens on [`HOST`] at [`NOW`].
pub fn sample_record() -> SessionRecord {
    SessionRecord {
        id: SessionId([7; 16]),
        subject: "110169484474386276334".to_owned(),
        email: "alice@example.com".to_owned(),
        groups: vec!["staff".to_owned(), "admins".to_owned()],
        issuer: "https://accounts.google.com".to_owned(),
        auth_time: 1_700_000_000,
        issued_at: 1_700_000_010,
        expires_at: 1_700_000_010 + 12 * 3600,
        last_seen: 1_700_000_040,
        host: HOST.to_owned(),
        groups_trimmed: false,
    }
}

/// Panics unless the harness's envelope and the proxy's agree both ways.
fn check_envelope(keys: &SessionKeys) {
    let record = sample_record();
    let sealed = keys.seal(&record, &|_| true).expect("the sample seals");
    let plaintext = unseal(label::SESSION, HOST, sealed.value())
        .expect("the harness's envelope no longer matches proxy/src/session/mod.rs");
    let again = seal(label::SESSION, KEY_IDS[0], HOST, &plaintext);
    let opened = keys
        .open(&again, HOST, NOW, IDLE)
        .expect("the proxy does not open the harness's envelope");
    assert_eq!(opened.id, record.id);
}

/// Splits `data` into a selector byte and the rest.
pub fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(mode, rest)| (*mode, rest))
}

/// A loopback HTTP server that answers every request with `body` (JSON), for the JWKS of the
/// bearer verifier. Returns its address. It serves until the process ends.
pub fn serve_json(body: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    addr
}
