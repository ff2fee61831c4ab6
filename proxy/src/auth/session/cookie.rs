//! The session cookie on the wire: `Set-Cookie` values, finding it in a request, and removing
//! it before the request goes upstream.
//!
//! The cookie is `__Host-sekisho`: the `__Host-` prefix makes browsers accept it only with
//! `Secure`, `Path=/` and no `Domain`, so it is host-only and a sibling subdomain cannot plant
//! one. A browser therefore holds at most one per host. Two of them in one request come only
//! from a hand-made request and are ambiguous: [`session_cookie`] rejects them rather than
//! guessing (and [`strip_session_cookies`] removes them all).

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue};

use super::envelope::SealedSession;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "__Host-sekisho";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("the request carries more than one session cookie")]
    Duplicate,
    #[error("the session cookie is not text")]
    NotText,
}

/// The `Set-Cookie` value that installs `sealed` for `max_age` (normally the time left until
/// the session's `expires_at`). Host-only: never a `Domain` attribute.
pub fn set_cookie(sealed: &SealedSession, max_age: Duration) -> HeaderValue {
    let text = format!(
        "{COOKIE_NAME}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        sealed.value(),
        max_age.as_secs()
    );
    // Cannot fail: `SealedSession` values are made only by `SessionKeys::seal`, so they are
    // base64url (`A-Z a-z 0-9 - _`), and the rest is fixed ASCII and digits.
    HeaderValue::try_from(text).expect("a cookie of visible ASCII")
}

/// The `Set-Cookie` value that removes the session cookie (logout).
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-sekisho=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The `name=value` pairs of one `Cookie` header value, names and values trimmed.
fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    crumbs(header).filter_map(|crumb| {
        let eq = memchr::memchr(b'=', crumb)?;
        Some((trim(&crumb[..eq]), trim(&crumb[eq + 1..])))
    })
}

/// The `;`-separated parts of a `Cookie` header value. A session cookie alone is ≈ 200 bytes,
/// so the separators are found with `memchr` rather than byte by byte.
fn crumbs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let bytes = rest?;
        match memchr::memchr(b';', bytes) {
            Some(at) => {
                rest = Some(&bytes[at + 1..]);
                Some(&bytes[..at])
            }
            None => {
                rest = None;
                Some(bytes)
            }
        }
    })
}

/// Whether `header` is one cookie, the session cookie: the usual `Cookie` header of a request
/// to an app host, which then goes away whole.
fn only_ours(header: &[u8]) -> bool {
    memchr::memchr(b';', header).is_none()
        && memchr::memchr(b'=', header)
            .is_some_and(|eq| trim(&header[..eq]) == COOKIE_NAME.as_bytes())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The session cookie's value from a request's `Cookie` headers (HTTP/2 may split them into
/// several), or `None`. More than one is [`CookieError::Duplicate`] (see the module docs).
pub fn session_cookie(headers: &HeaderMap) -> Result<Option<&str>, CookieError> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        for (name, value) in pairs(header.as_bytes()) {
            if name == COOKIE_NAME.as_bytes() {
                if found.is_some() {
                    return Err(CookieError::Duplicate);
                }
                found = Some(value);
            }
        }
    }
    found
        .map(|value| std::str::from_utf8(value).map_err(|_| CookieError::NotText))
        .transpose()
}

/// Removes every session cookie from the `Cookie` headers, keeping the other cookies (in order)
/// and dropping a header that becomes empty. The proxy's own cookies never reach upstreams.
pub fn strip_session_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if let (Some(value), None) = (values.next(), values.next())
        && only_ours(value.as_bytes())
    {
        headers.remove(COOKIE);
        return;
    }
    let ours = |header: &HeaderValue| {
        pairs(header.as_bytes()).any(|(name, _)| name == COOKIE_NAME.as_bytes())
    };
    if !headers.get_all(COOKIE).iter().any(ours) {
        return;
    }
    let old: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for header in old {
        if !ours(&header) {
            headers.append(COOKIE, header);
            continue;
        }
        let mut kept = Vec::with_capacity(header.len());
        for crumb in crumbs(header.as_bytes()) {
            let name = memchr::memchr(b'=', crumb).map_or(trim(crumb), |eq| trim(&crumb[..eq]));
            if name == COOKIE_NAME.as_bytes() || trim(crumb).is_empty() {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(trim(crumb));
        }
        // Bytes of a valid header value minus some parts, joined by "; ", are valid again; if
        // that ever failed, the header is dropped, which still keeps our cookie from upstreams.
        if !kept.is_empty()
            && let Ok(value) = HeaderValue::from_bytes(&kept)
        {
            headers.append(COOKIE, value);
        }
    }
}
