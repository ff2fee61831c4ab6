//! A credential as text (access token, refresh token, device code, authorization code, PKCE
//! verifier): its `Debug` never shows it, and nothing prints it but the token cache.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text, for a request or the cache file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it can travel in an HTTP header or a form unchanged: 1 to 8 KiB of visible
    /// ASCII.
    pub fn is_token_text(&self) -> bool {
        (1..=8192).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_graphic())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `text` without control characters (a proxy's words end up on a terminal: no escape
/// sequences), at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_and_serde_keeps_it_as_a_plain_string() {
        let secret = Secret::new("eyJhbGciOi.very.secret");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(
            serde_json::to_string(&secret).unwrap(),
            "\"eyJhbGciOi.very.secret\""
        );
        let back: Secret = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
    }

    #[test]
    fn token_text_is_visible_ascii_of_bounded_length() {
        assert!(Secret::new("abc.DEF-_~+/=").is_token_text());
        for bad in ["", "a b", "a\r\nb", "é", &"a".repeat(8193)] {
            assert!(!Secret::new(bad).is_token_text(), "{bad:?}");
        }
    }

    #[test]
    fn printable_drops_control_characters_and_bounds_the_length() {
        assert_eq!(printable("ok\x1b[31mred\x07\n", 100), "ok[31mred");
        assert_eq!(printable("abcdef", 3), "abc");
    }
}
