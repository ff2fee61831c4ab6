//! The CLI's parameters that need no key: PKCE S256 (RFC 7636), the `state` the CLI checks on
//! its loopback callback, and the loopback redirect URI (RFC 8252 §7.3).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq as _;
use url::Url;

use crate::auth::session::MAX_REDIRECT_URI;

/// The longest `state` accepted.
pub(crate) const MAX_STATE: usize = 128;

/// RFC 3986 unreserved characters: what verifiers, challenges and our states are made of.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// A code verifier: 43 to 128 unreserved characters (RFC 7636 §4.1).
pub(crate) fn is_verifier(text: &str) -> bool {
    (43..=128).contains(&text.len()) && text.bytes().all(is_unreserved)
}

/// An S256 challenge: the base64url of a SHA-256, so exactly 43 base64url characters.
pub(crate) fn is_s256_challenge(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `state`: 1 to [`MAX_STATE`] unreserved characters.
pub(crate) fn is_state(text: &str) -> bool {
    (1..=MAX_STATE).contains(&text.len()) && text.bytes().all(is_unreserved)
}

/// Whether `verifier` hashes to `challenge` (`BASE64URL(SHA256(verifier)) == challenge`),
/// compared in constant time.
pub(crate) fn verify_s256(verifier: &str, challenge: &str) -> bool {
    if !is_verifier(verifier) {
        return false;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let expected = URL_SAFE_NO_PAD.encode(digest.as_ref());
    bool::from(expected.as_bytes().ct_eq(challenge.as_bytes()))
}

/// Why a redirect URI is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RedirectUriError {
    #[error("the redirect URI is longer than {MAX_REDIRECT_URI} bytes")]
    TooLong,
    #[error("the redirect URI is not a URL in its canonical form")]
    NotCanonical,
    #[error("the redirect URI must be http://127.0.0.1:PORT/… or http://[::1]:PORT/…")]
    NotLoopback,
    #[error("the redirect URI must name its port")]
    NoPort,
    #[error("the redirect URI must have no user, query or fragment")]
    Extra,
}

/// A loopback redirect URI: `http://127.0.0.1:PORT/…` or `http://[::1]:PORT/…`, written the
/// way a URL parser writes it back (no `127.1`, no `localhost`, no upper case, no `..`), with
/// an explicit port and no user, query or fragment. Only the CLI on the person's own machine
/// can listen there, so the code cannot be sent anywhere else.
pub(crate) fn check_redirect_uri(raw: &str) -> Result<Url, RedirectUriError> {
    if raw.len() > MAX_REDIRECT_URI {
        return Err(RedirectUriError::TooLong);
    }
    let url = Url::parse(raw).map_err(|_| RedirectUriError::NotCanonical)?;
    if url.as_str() != raw {
        return Err(RedirectUriError::NotCanonical);
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        _ => false,
    };
    if url.scheme() != "http" || !loopback {
        return Err(RedirectUriError::NotLoopback);
    }
    if url.port().is_none() {
        return Err(RedirectUriError::NoPort);
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(RedirectUriError::Extra);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_7636_example_verifies_and_nothing_else_does() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_verifier(verifier));
        assert!(is_s256_challenge(challenge));
        assert!(verify_s256(verifier, challenge));
        assert!(!verify_s256(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            challenge
        ));
        assert!(!verify_s256(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"
        ));
        assert!(!verify_s256(verifier, ""));
        assert!(!verify_s256(challenge, challenge));
        // `plain` is not a thing here: the verifier as its own challenge fails.
        assert!(!verify_s256(verifier, verifier));
    }

    #[test]
    fn verifiers_challenges_and_states_are_bounded_in_length_and_charset() {
        assert!(!is_verifier(&"a".repeat(42)));
        assert!(is_verifier(&"a".repeat(43)));
        assert!(is_verifier(&"a-._~".repeat(26)[..128]));
        assert!(!is_verifier(&"a".repeat(129)));
        assert!(!is_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!is_s256_challenge(&"a".repeat(44)));
        assert!(!is_s256_challenge(&format!("{}=", "a".repeat(42))));
        assert!(!is_s256_challenge(&format!("{}.", "a".repeat(42))));
        assert!(is_state("x"));
        assert!(is_state(&"Az09-._~".repeat(16)));
        assert!(!is_state(""));
        assert!(!is_state(&"a".repeat(MAX_STATE + 1)));
        for bad in ["a b", "a&b", "a=b", "<x>", "é", "a\nb", "a%20"] {
            assert!(!is_state(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_canonical_loopback_ip_redirect_uris_with_a_port_are_accepted() {
        for good in [
            "http://127.0.0.1:53682/callback",
            "http://127.0.0.1:1/",
            "http://[::1]:8080/cb",
            "http://127.0.0.1:65535/a/b-c_d.e~f",
        ] {
            assert_eq!(
                check_redirect_uri(good).map(|u| u.to_string()),
                Ok(good.to_owned()),
                "{good}"
            );
        }
        use RedirectUriError::*;
        for (bad, why) in [
            ("http://localhost:53682/callback", NotLoopback),
            ("http://LOCALHOST:1/", NotCanonical),
            ("https://127.0.0.1:53682/callback", NotLoopback),
            ("http://127.0.0.2:53682/callback", NotLoopback),
            ("http://10.0.0.1:53682/callback", NotLoopback),
            ("http://evil.example:53682/callback", NotLoopback),
            ("http://evil.example/", NotLoopback),
            ("https://evil.example/cb", NotLoopback),
            ("http://[::ffff:127.0.0.1]:1/", NotCanonical),
            ("http://[::ffff:7f00:1]:1/", NotLoopback),
            ("http://[::2]:1/", NotLoopback),
            ("http://127.1:53682/", NotCanonical),
            ("http://0x7f000001:53682/", NotCanonical),
            ("http://2130706433:53682/", NotCanonical),
            ("http://127.0.0.1:80/cb", NotCanonical),
            ("http://127.0.0.1/cb", NoPort),
            ("http://127.0.0.1:53682", NotCanonical),
            ("http://127.0.0.1:53682/a/../cb", NotCanonical),
            ("http://127.0.0.1:53682/%2e%2e/cb", NotCanonical),
            ("HTTP://127.0.0.1:53682/cb", NotCanonical),
            (" http://127.0.0.1:53682/cb", NotCanonical),
            ("http://127.0.0.1:53682/cb\n", NotCanonical),
            ("http://user@127.0.0.1:53682/cb", Extra),
            ("http://127.0.0.1:53682@evil.example/cb", NotLoopback),
            ("http://127.0.0.1:53682/cb?next=https://evil.example", Extra),
            ("http://127.0.0.1:53682/cb#x", Extra),
            ("//127.0.0.1:53682/cb", NotCanonical),
            ("javascript:alert(1)", NotLoopback),
            ("data:text/html,x", NotLoopback),
            ("", NotCanonical),
        ] {
            assert_eq!(
                check_redirect_uri(bad).map(|u| u.to_string()),
                Err(why),
                "{bad:?}"
            );
        }
        let long = format!("http://127.0.0.1:1/{}", "a".repeat(MAX_REDIRECT_URI));
        assert_eq!(check_redirect_uri(&long), Err(TooLong));
    }
}
