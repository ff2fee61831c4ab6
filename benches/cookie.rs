//! What the session cookie costs on every request: opening one (base64, AES-256-GCM, decoding
//! the record and its checks) and sealing one (building the record too), next to the bare
//! base64 decoding and AES-256-GCM opening of as many bytes, measured in the same run: the
//! floor that any sealed cookie of that size pays.
//!
//! ```sh
//! cargo run --release -p sekisho-benches --bin cookie [ROUNDS]   # default 200000
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sekisho_proxy::{SessionId, SessionKeys, SessionRecord};

const HOST: &str = "app.example.com";
const IDLE: Duration = Duration::from_secs(3600);

/// A signed-in person with ten groups, as a browser brings it on every request.
fn record() -> SessionRecord {
    SessionRecord {
        id: SessionId([7; 16]),
        subject: "110169484474386276334".to_owned(),
        email: "alice@example.com".to_owned(),
        groups: (0..10).map(|i| format!("team-{i:03}")).collect(),
        issuer: "https://accounts.google.com".to_owned(),
        auth_time: 1_700_000_000,
        issued_at: 1_700_000_010,
        expires_at: 1_700_000_010 + 12 * 3600,
        last_seen: 1_700_000_040,
        host: HOST.to_owned(),
        groups_trimmed: false,
    }
}

/// The time of one call of `f`, over `rounds` calls.
fn per_call(rounds: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn main() {
    let rounds: u32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("ROUNDS is a whole number"),
        None => 200_000,
    };
    let keys = SessionKeys::generate().expect("the OS random source works");
    let record = record();
    let cookie = keys
        .seal(&record, &|_| true)
        .expect("the record fits")
        .value()
        .to_owned();
    let now = record.last_seen + 60;

    // The floor: a base64 text of the cookie's length that decodes to a nonce and an
    // AES-256-GCM ciphertext of the rest.
    let sealed_len = URL_SAFE_NO_PAD
        .decode(&cookie)
        .expect("the cookie is base64")
        .len();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9; 32]).expect("a 32-byte key"));
    let mut plain = vec![0u8; sealed_len - NONCE_LEN - AES_256_GCM.tag_len()];
    let nonce = [3u8; NONCE_LEN];
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(HOST),
        &mut plain,
    )
    .expect("sealing works");
    let bare = URL_SAFE_NO_PAD.encode([&nonce[..], &plain].concat());
    assert_eq!(bare.len(), cookie.len());

    let open = per_call(rounds, || {
        black_box(
            keys.open(black_box(&cookie), HOST, now, IDLE)
                .expect("the cookie opens"),
        );
    });
    let floor = per_call(rounds, || {
        let mut bytes = URL_SAFE_NO_PAD.decode(black_box(&bare)).expect("base64");
        let (nonce, rest) = bytes.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("a nonce");
        black_box(
            key.open_in_place(nonce, Aad::from(HOST), rest)
                .expect("it opens"),
        );
    });
    let seal = per_call(rounds, || {
        black_box(keys.seal(black_box(&record), &|_| true).expect("it fits"));
    });

    println!("session cookie of {} bytes, {rounds} rounds", cookie.len());
    println!("  open:  {open:>10?} per call");
    println!("  seal:  {seal:>10?} per call (the record built and encoded too)");
    println!("  floor: {floor:>10?} per call (base64 + AES-256-GCM open of as many bytes)");
    println!(
        "  open / floor: {:.2}",
        open.as_secs_f64() / floor.as_secs_f64()
    );
}
