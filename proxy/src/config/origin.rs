//! A web origin (RFC 6454 §4) as the configuration and browsers write it: the routes'
//! `websocket_origins`, and what the cross-site WebSocket check compares a handshake's
//! `Origin` with. Pure parsing; it must not depend on the rest of the proxy.

use std::fmt;
use std::net::Ipv6Addr;

/// A web origin (RFC 6454 §4): scheme, host and port, as a browser's `Origin` header writes it
/// (`https://tools.example.com`, `http://127.0.0.1:8080`). Hosts are kept lowercase, the
/// default port of the scheme explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: Box<str>,
    port: u16,
}

/// Why a text is not a bare origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OriginError {
    #[error("`{0}` is not an origin: give scheme, host and optional port (https://host[:port])")]
    NotAnOrigin(String),
    #[error("`{0}`: the scheme must be https or http")]
    Scheme(String),
    #[error("`{0}`: an origin has no path, query, fragment or user name, not even a final '/'")]
    NotBare(String),
    #[error("`{0}`: the host must be a DNS name in ASCII or an IP address")]
    Host(String),
    #[error("`{0}`: the port must be a number from 1 to 65535")]
    Port(String),
}

impl Origin {
    pub(crate) fn parse(text: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| OriginError::NotAnOrigin(text.to_owned()))?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(OriginError::Scheme(text.to_owned()));
        };
        if rest.contains(['/', '\\', '?', '#', '@']) {
            return Err(OriginError::NotBare(text.to_owned()));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (address, after) = v6
                    .split_once(']')
                    .ok_or_else(|| OriginError::Host(text.to_owned()))?;
                let address: Ipv6Addr = address
                    .parse()
                    .map_err(|_| OriginError::Host(text.to_owned()))?;
                let port = match after {
                    "" => None,
                    _ => Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| OriginError::Host(text.to_owned()))?,
                    ),
                };
                (format!("[{address}]"), port)
            }
            None => {
                let (host, port) = match rest.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (rest, None),
                };
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                if !is_dns_name(&host) {
                    return Err(OriginError::Host(text.to_owned()));
                }
                (host, port)
            }
        };
        let default = if https { 443 } else { 80 };
        let port = match port {
            None => default,
            Some(digits) => digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .filter(|&port| port != 0)
                .ok_or_else(|| OriginError::Port(text.to_owned()))?,
        };
        Ok(Self {
            https,
            host: host.into(),
            port,
        })
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels (which IPv4 addresses are too).
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, default) = if self.https {
            ("https", 443)
        } else {
            ("http", 80)
        };
        write!(f, "{scheme}://{}", self.host)?;
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap()
    }

    #[test]
    fn bare_origins_parse_with_lowercase_hosts_and_the_default_port_made_explicit() {
        assert_eq!(
            origin("https://Tools.Example.COM"),
            origin("https://tools.example.com:443")
        );
        assert_eq!(origin("HTTP://127.0.0.1"), origin("http://127.0.0.1:80"));
        assert_ne!(origin("https://a.example"), origin("http://a.example"));
        assert_ne!(
            origin("https://a.example"),
            origin("https://a.example:8443")
        );
        assert_eq!(origin("https://a.example."), origin("https://a.example"));
        assert_eq!(
            origin("https://[::1]:8443"),
            origin("https://[0:0::1]:8443")
        );
        for (text, shown) in [
            ("https://Tools.example.com:443", "https://tools.example.com"),
            ("http://x.test:8080", "http://x.test:8080"),
            ("https://[::1]", "https://[::1]"),
        ] {
            assert_eq!(origin(text).to_string(), shown);
        }
    }

    #[test]
    fn anything_but_a_bare_origin_is_refused_with_its_reason() {
        for (text, expected) in [
            (
                "tools.example.com",
                OriginError::NotAnOrigin("tools.example.com".into()),
            ),
            ("null", OriginError::NotAnOrigin("null".into())),
            (
                "wss://a.example",
                OriginError::Scheme("wss://a.example".into()),
            ),
            (
                "https://a.example/",
                OriginError::NotBare("https://a.example/".into()),
            ),
            (
                "https://a.example/app",
                OriginError::NotBare("https://a.example/app".into()),
            ),
            (
                "https://a.example?x",
                OriginError::NotBare("https://a.example?x".into()),
            ),
            (
                "https://u@a.example",
                OriginError::NotBare("https://u@a.example".into()),
            ),
            (
                "https://*.example.com",
                OriginError::Host("https://*.example.com".into()),
            ),
            ("https://", OriginError::Host("https://".into())),
            (
                "https://a..example",
                OriginError::Host("https://a..example".into()),
            ),
            (
                "https://bücher.example",
                OriginError::Host("https://bücher.example".into()),
            ),
            ("https://[::1", OriginError::Host("https://[::1".into())),
            (
                "https://a.example:0",
                OriginError::Port("https://a.example:0".into()),
            ),
            (
                "https://a.example:65536",
                OriginError::Port("https://a.example:65536".into()),
            ),
            (
                "https://a.example:",
                OriginError::Port("https://a.example:".into()),
            ),
            (
                "https://a.example:+1",
                OriginError::Port("https://a.example:+1".into()),
            ),
        ] {
            assert_eq!(Origin::parse(text), Err(expected), "{text}");
        }
    }
}
