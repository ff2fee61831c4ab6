//! Cross-site WebSocket hijacking. A page on any site may open a WebSocket to any URL, and the
//! browser sends the target host's cookies with the handshake; `SameSite=Lax` does not stop a
//! page on a sibling host of the same site (`evil.example.com` to `app.example.com`). Browsers
//! always send `Origin` with a WebSocket handshake, so an upgrade request whose `Origin` is
//! neither the route's own origin (the scheme, host and port the client used) nor one listed in
//! the route's `websocket_origins` is refused with 403 before it reaches the upstream.
//!
//! A handshake without `Origin` passes: it does not come from a page (CLIs and other programs
//! send none), and without a page there is no other site whose visitor's cookies could be
//! borrowed.

use std::fmt;
use std::net::Ipv6Addr;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};

use crate::auth::access::{html, json_error};
use crate::forward::body::ResponseBody;
use crate::frontdoor::connection::ConnState;
use crate::request::RequestCtx;
use crate::respond::page;
use crate::routing::snapshot::{Route, Snapshot};

/// A web origin (RFC 6454 §4): scheme, host and port, as a browser's `Origin` header writes it
/// (`https://tools.example.com`, `http://127.0.0.1:8080`). Hosts are kept lowercase, the
/// default port of the scheme explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: Box<str>,
    port: u16,
}

/// Why a text is not a bare origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
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
    pub fn parse(text: &str) -> Result<Self, OriginError> {
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

/// What the `Origin` of an upgrade request says about it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// No `Origin`: not from a page.
    NoOrigin,
    /// The route's own origin, or one it lists.
    Allowed,
    /// Anything else, with what was sent, for the log.
    Refused(String),
}

/// Judges the `Origin` headers of an upgrade request against the request's own origin and the
/// route's list. More than one `Origin`, or one that is no origin (`null` from sandboxed
/// frames and `data:` pages), is refused.
fn verdict(headers: &HeaderMap, own: Option<&Origin>, allowed: &[Origin]) -> Verdict {
    let mut sent = headers.get_all(header::ORIGIN).iter();
    let Some(value) = sent.next() else {
        return Verdict::NoOrigin;
    };
    let shown = || String::from_utf8_lossy(value.as_bytes()).into_owned();
    if sent.next().is_some() {
        return Verdict::Refused(format!("{} (and another Origin header)", shown()));
    }
    let Some(origin) = value.to_str().ok().and_then(|v| Origin::parse(v).ok()) else {
        return Verdict::Refused(shown());
    };
    if own == Some(&origin) || allowed.contains(&origin) {
        Verdict::Allowed
    } else {
        Verdict::Refused(shown())
    }
}

/// The origin the client reached this request at: `https` on the TLS listener (or on the plain
/// one from a trusted proxy that says `X-Forwarded-Proto: https`), the request's host, and the
/// port of its `Host`.
fn own_origin(
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Option<Origin> {
    let https = conn.tls
        || (snapshot.is_trusted_proxy(conn.peer.ip())
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https")));
    let scheme = if https { "https" } else { "http" };
    Origin::parse(&format!("{scheme}://{}{}", ctx.host, ctx.port_suffix())).ok()
}

/// The 403 for an upgrade request on `route` that a page on another origin sent; `None` lets
/// the request go on (as every request that is not an upgrade).
pub(crate) fn check<B>(
    snapshot: &Snapshot,
    conn: &ConnState,
    ctx: &RequestCtx,
    route: &Route,
    req: &Request<B>,
) -> Option<Response<ResponseBody>> {
    if !crate::request::is_upgrade_request(req) {
        return None;
    }
    let headers = req.headers();
    let own = own_origin(snapshot, conn, ctx, headers);
    let Verdict::Refused(origin) = verdict(headers, own.as_ref(), &route.websocket_origins) else {
        return None;
    };
    let reason = "a page on another origin may not open a WebSocket here";
    tracing::info!(
        target: "sekisho::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        host = %ctx.host,
        route = %route.name.0,
        method = %req.method(),
        path = req.uri().path(),
        user = "-",
        allowed = false,
        rule = "websocket_origins",
        reason,
        origin = %origin,
        "access decision"
    );
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    Some(if wants_html {
        html(
            StatusCode::FORBIDDEN,
            page::cross_origin(
                &origin,
                &route.name.0,
                ctx.request_id.to_str().unwrap_or("-"),
            ),
        )
    } else {
        json_error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            &format!("{reason}: {origin}"),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap()
    }

    fn headers(origins: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in origins {
            map.append(header::ORIGIN, HeaderValue::from_str(value).unwrap());
        }
        map
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

    #[test]
    fn the_own_origin_and_listed_ones_pass_and_every_other_origin_is_refused() {
        let own = origin("https://app.example.com:8443");
        let listed = [origin("https://tools.example.com")];
        let judge = |sent: &[&str]| verdict(&headers(sent), Some(&own), &listed);
        assert_eq!(judge(&[]), Verdict::NoOrigin);
        assert_eq!(judge(&["https://app.example.com:8443"]), Verdict::Allowed);
        assert_eq!(judge(&["https://APP.example.com:8443"]), Verdict::Allowed);
        assert_eq!(judge(&["https://tools.example.com"]), Verdict::Allowed);
        assert_eq!(judge(&["https://tools.example.com:443"]), Verdict::Allowed);
        for refused in [
            "https://evil.example",
            "https://app.example.com",
            "http://app.example.com:8443",
            "https://tools.example.com:8443",
            "null",
            "https://app.example.com:8443/",
        ] {
            assert_eq!(
                judge(&[refused]),
                Verdict::Refused(refused.to_owned()),
                "{refused}"
            );
        }
        assert!(matches!(
            judge(&["https://app.example.com:8443", "https://evil.example"]),
            Verdict::Refused(_)
        ));
        // Without an own origin (a host no origin can name), only the list counts.
        assert_eq!(
            verdict(&headers(&["https://tools.example.com"]), None, &listed),
            Verdict::Allowed
        );
    }
}
