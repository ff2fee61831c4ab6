//! The agent's credential header (`sekisho-agent-auth`) and public key text.
//!
//! The first byte picks the mode:
//!
//! - 0: the rest is a header value. What parses is at most `MAX_HEADER_LEN` bytes, names a valid
//!   agent, prints back to a header that parses to the same credential, and never verifies with
//!   a key that did not sign it. Public key text that parses prints back to itself.
//! - 1: a structured round trip: a credential signed for a host, name and time prints to a
//!   header that parses back exactly when the name is valid, verifies for that host (any case,
//!   any port added) within the skew and for no other host or key.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sekisho_fuzz::split_mode;
use sekisho_wire::agent_auth::{
    AgentCredential, AgentKey, AgentPublicKey, CredentialError, MAX_HEADER_LEN,
};

const HOST: &str = "proxy.example.com";
const NOW: u64 = 1_764_600_000;
const SKEW: u64 = 60;

struct Keys {
    signer: AgentKey,
    other: AgentPublicKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        signer: AgentKey::generate().expect("a key").0,
        other: AgentKey::generate().expect("a key").0.public_key(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            header(text);
            public_key(text);
        }
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(rest)) {
        round_trip(input);
    }
});

fn header(text: &str) {
    let Ok(credential) = AgentCredential::parse(text) else {
        return;
    };
    assert!(text.len() <= MAX_HEADER_LEN);
    assert!(sekisho_wire::is_name(&credential.name), "{credential:?}");
    let printed = credential.to_string();
    assert_eq!(AgentCredential::parse(&printed), Ok(credential.clone()));
    let keys = keys();
    for host in [HOST, "", text] {
        assert!(
            credential
                .verify(
                    host,
                    &[keys.signer.public_key(), keys.other],
                    credential.timestamp,
                    SKEW
                )
                .is_err(),
            "a credential nobody signed verified: {text:?}"
        );
    }
    assert!(matches!(
        credential.verify(HOST, &[], NOW, SKEW),
        Err(CredentialError::Skewed(_) | CredentialError::BadSignature)
    ));
}

fn public_key(text: &str) {
    let Ok(key) = text.parse::<AgentPublicKey>() else {
        return;
    };
    let printed = key.to_string();
    assert_eq!(printed.len(), "ed25519:".len() + 43);
    assert_eq!(printed.parse::<AgentPublicKey>(), Ok(key));
}

#[derive(Arbitrary, Debug)]
struct Input {
    host: String,
    name: String,
    timestamp: u64,
    /// How far the verifier's clock is from the signer's.
    drift: i16,
    skew: u8,
    other_host: String,
    port: u16,
}

/// The host as the statement names it: lowercase, without a port (`host:digits`, where the
/// name has no `:` or is a bracketed IPv6 literal).
fn statement_host(host: &str) -> String {
    let host = match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    };
    host.to_ascii_lowercase()
}

fn round_trip(input: Input) {
    let keys = keys();
    let credential = keys
        .signer
        .credential(&input.host, &input.name, input.timestamp)
        .expect("signing never fails");
    let printed = credential.to_string();
    let parsed = AgentCredential::parse(&printed);
    if sekisho_wire::is_name(&input.name) && printed.len() <= MAX_HEADER_LEN {
        assert_eq!(parsed, Ok(credential.clone()));
    } else {
        assert!(parsed.is_err(), "{printed:?}");
    }

    let skew = u64::from(input.skew);
    let now = input
        .timestamp
        .saturating_add_signed(i64::from(input.drift));
    let within = now.abs_diff(input.timestamp) <= skew;
    let mine = [keys.signer.public_key()];
    let verify = |host: &str, keys: &[AgentPublicKey]| credential.verify(host, keys, now, skew);
    if !within {
        assert_eq!(
            verify(&input.host, &mine),
            Err(CredentialError::Skewed(now.abs_diff(input.timestamp)))
        );
        return;
    }
    // Case and an added port do not matter (one check for both: each costs a signature check).
    let host = if input.host.contains(':') {
        input.host.to_ascii_uppercase()
    } else {
        format!("{}:{}", input.host.to_ascii_uppercase(), input.port)
    };
    assert_eq!(verify(&host, &mine), Ok(()));
    assert_eq!(
        verify(&input.host, &[keys.other]),
        Err(CredentialError::BadSignature)
    );
    let same = statement_host(&input.other_host) == statement_host(&input.host);
    assert_eq!(
        verify(&input.other_host, &mine).is_ok(),
        same,
        "{:?} vs {:?}",
        input.other_host,
        input.host
    );
}
