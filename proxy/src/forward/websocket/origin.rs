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

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};

use crate::config::origin::Origin;
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::page;
use crate::respond::{html, json_error};
use crate::routing::snapshot::{Route, Snapshot};
use crate::state::client::ConnState;

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
    if !crate::forward::header::is_upgrade_request(req) {
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
