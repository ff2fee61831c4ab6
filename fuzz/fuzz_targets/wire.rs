//! What the proxy, the agent and the CLI read from each other (`sekisho-wire`): tunnel error
//! codes and statuses, the JSON bodies of a refused tunnel and of a stream's status, agent and
//! site names, public key text and the agent credential header.
//!
//! The first byte picks the parser; each accepted value reads back as itself:
//!
//! - 0: an error code: `from_code` agrees with the JSON form and gives a code that is the text.
//! - 1: a refused tunnel's JSON body (`ErrorBody`), and its `error` code.
//! - 2: a stream status's JSON body (`StreamStatus`).
//! - 3: an agent's answer status: always one of the agent-side errors, whose status maps back.
//! - 4: a name: `is_name` is 1 to 63 of `a-z 0-9 - _ .`.
//! - 5: a public key's text.
//! - 6: the agent credential header, as a header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_fuzz::split_mode;
use sekisho_wire::agent_auth::{AgentCredential, AgentPublicKey};
use sekisho_wire::tunnel::{ErrorBody, StreamStatus, TunnelError};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    match mode % 7 {
        0 => code(rest),
        1 => {
            if let Ok(body) = serde_json::from_slice::<ErrorBody>(rest) {
                let json = serde_json::to_string(&body).expect("serialises");
                assert_eq!(
                    serde_json::from_str::<ErrorBody>(&json).ok(),
                    Some(body.clone())
                );
                if let Some(error) = TunnelError::from_code(&body.error) {
                    assert_eq!(error.code(), body.error);
                }
            }
        }
        2 => {
            if let Ok(status) = serde_json::from_slice::<StreamStatus>(rest) {
                let json = serde_json::to_string(&status).expect("serialises");
                assert_eq!(
                    serde_json::from_str::<StreamStatus>(&json).ok(),
                    Some(status)
                );
            }
        }
        3 => {
            let status = u16::from_be_bytes([
                rest.first().copied().unwrap_or(0),
                rest.get(1).copied().unwrap_or(0),
            ]);
            let error = TunnelError::from_agent_status(status);
            assert!(matches!(
                error,
                TunnelError::TargetNotAllowed
                    | TunnelError::TargetUnreachable
                    | TunnelError::TargetTimeout
            ));
            assert_eq!(TunnelError::from_agent_status(error.status()), error);
        }
        4 => {
            if let Ok(name) = std::str::from_utf8(rest) {
                let expected = (1..=63).contains(&name.len())
                    && name
                        .chars()
                        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'));
                assert_eq!(sekisho_wire::is_name(name), expected, "{name:?}");
            }
        }
        5 => {
            if let Ok(key) = std::str::from_utf8(rest).map(str::parse::<AgentPublicKey>)
                && let Ok(key) = key
            {
                assert_eq!(key.to_string().parse::<AgentPublicKey>(), Ok(key));
            }
        }
        _ => {
            if let Ok(value) = http::HeaderValue::from_bytes(rest)
                && let Ok(text) = value.to_str()
                && let Ok(credential) = AgentCredential::parse(text)
            {
                assert!(sekisho_wire::is_name(&credential.name));
                assert_eq!(
                    AgentCredential::parse(&credential.to_string()),
                    Ok(credential)
                );
            }
        }
    }
});

fn code(rest: &[u8]) {
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = TunnelError::from_code(text);
    if let Some(error) = parsed {
        assert_eq!(error.code(), text);
        assert!(matches!(error.status(), 400..=599));
        assert!(!error.message().is_empty());
    }
    let from_json = serde_json::from_value::<TunnelError>(serde_json::Value::String(text.into()));
    assert_eq!(from_json.ok(), parsed, "{text:?}");
    // Codes are also read inside a JSON document.
    if let Ok(error) = serde_json::from_slice::<TunnelError>(rest) {
        assert_eq!(
            serde_json::to_string(&error).ok(),
            Some(format!("\"{}\"", error.code()))
        );
    }
}
