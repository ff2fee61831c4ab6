//! Request path normalisation for policy matching.
//!
//! Policy decides on one canonical form of the path, so that two spellings of the same resource
//! get the same decision, and a spelling that the proxy and an upstream could read as different
//! resources is refused instead of guessed. This module is pure string logic: it must not do I/O
//! and must not depend on the rest of the proxy.
//!
//! [`normalize_path`] takes the request-target path (without the query) and applies, in order:
//!
//! 1. It must start with `/` ([`PathError::NotAbsolute`]); `*` is not a path here.
//! 2. Raw control characters (including NUL) and raw `\` are refused
//!    ([`PathError::BadCharacter`]).
//! 3. Percent-escapes need two hex digits ([`PathError::BadEscape`] for `%G1` or a trailing `%`).
//!    An escape of `/`, `\`, `%` (double encoding such as `%2541`) or of any control character
//!    (including `%00`) is refused ([`PathError::AmbiguousEncoding`]): the upstream may decode it
//!    once more, split on it or truncate at it. Every other escape is decoded, reserved
//!    characters included (`%3F` becomes `?`), so the result never contains `%`, `\` or a control
//!    character. The decoded bytes must be UTF-8 ([`PathError::NotUtf8`]).
//! 4. Dot segments (`.`, `..`, also when encoded as `%2e`) are removed as in RFC 3986 §5.2.4.
//!    A `..` that would climb above the root is refused ([`PathError::AboveRoot`]), not clamped.
//!    A `..` that would remove an empty segment (`/a//../b`) is refused
//!    ([`PathError::AmbiguousDotSegment`]): RFC 3986 gives `/a/b`, while a server that merges
//!    slashes first gives `/b`.
//! 5. Runs of `/` collapse to one; a trailing slash is kept (`/a/` stays `/a/`, and a final `.`
//!    or `..` segment leaves one: `/a/b/..` is `/a/`).
//!
//! Anything else is an ordinary character: `;` has no meaning (`..;` is not a dot segment), and
//! case is preserved. Already-normal paths, the common case, are returned borrowed without
//! allocating. The result is idempotent: normalising it again returns it unchanged.

use std::borrow::Cow;

/// Why a request path was refused. Each message can be shown on a 400 page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path contains a control character or a backslash")]
    BadCharacter,
    #[error("the request path has a malformed percent-escape")]
    BadEscape,
    #[error(
        "the request path percent-encodes '/', '\\', '%' or a control character, which servers read differently"
    )]
    AmbiguousEncoding,
    #[error("the request path does not decode to UTF-8")]
    NotUtf8,
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
    #[error("the request path has '..' after an empty segment, which servers resolve differently")]
    AmbiguousDotSegment,
}

/// Normalises a request path for policy matching (see the module documentation for the rules).
///
/// Returns the input borrowed when it is already normal, and an owned string otherwise.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut has_escape = false;
    for &b in raw.as_bytes() {
        if is_forbidden_raw(b) {
            return Err(PathError::BadCharacter);
        }
        has_escape |= b == b'%';
    }
    if !has_escape && !needs_segment_work(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = if has_escape {
        Cow::Owned(decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    let resolved = resolve_segments(&decoded)?;
    if resolved == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

/// Whether `path` matches `prefix` with Kubernetes Ingress `Prefix` semantics: element-wise, so
/// `/foo` matches `/foo`, `/foo/` and `/foo/bar` but not `/foobar`; `/` matches every path; a
/// trailing slash on the prefix is ignored. Both are expected to be normalised. Routing and
/// policies share this one rule.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fn is_forbidden_raw(b: u8) -> bool {
    b.is_ascii_control() || b == b'\\'
}

/// Whether any segment is empty (other than a final one, the trailing slash), `.` or `..`.
fn needs_segment_work(path: &str) -> bool {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return true;
        }
    }
    false
}

/// Decodes every percent-escape, refusing malformed and ambiguous ones.
fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&h| hex(h)),
            bytes.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        if matches!(value, b'/' | b'\\' | b'%') || value.is_ascii_control() {
            return Err(PathError::AmbiguousEncoding);
        }
        out.push(value);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path, then runs of `/` collapsed.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => match stack.pop() {
                None => return Err(PathError::AboveRoot),
                Some("") => return Err(PathError::AmbiguousDotSegment),
                Some(_) => {}
            },
            _ => stack.push(segment),
        }
        if last {
            trailing_slash = matches!(segment, "" | "." | "..");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in stack.iter().filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::*;

    #[test]
    fn paths_normalise_to_one_canonical_form_or_are_refused() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // Already normal.
            ("/", Ok("/")),
            ("/a", Ok("/a")),
            ("/a/b/c", Ok("/a/b/c")),
            ("/a/", Ok("/a/")),
            ("/ADMIN", Ok("/ADMIN")),
            ("/a.b/.c/..d/...", Ok("/a.b/.c/..d/...")),
            ("/admin/..;/x", Ok("/admin/..;/x")),
            ("/a;b=c,d:e@f!$&'()*+", Ok("/a;b=c,d:e@f!$&'()*+")),
            ("/café", Ok("/café")),
            // Dot segments.
            ("/a/./b", Ok("/a/b")),
            ("/a/../b", Ok("/b")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/a/b/../../c", Ok("/c")),
            ("/a/./../b/./c/.", Ok("/b/c/")),
            ("/..", Err(AboveRoot)),
            ("/../a", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            // Encoded dot segments.
            ("/a/%2e%2e/b", Ok("/b")),
            ("/a/%2E/b", Ok("/a/b")),
            ("/a/.%2E/b", Ok("/b")),
            ("/a/%2e%2E", Ok("/")),
            ("/%2e%2e", Err(AboveRoot)),
            // Slashes.
            ("//a///b", Ok("/a/b")),
            ("//", Ok("/")),
            ("/a//", Ok("/a/")),
            ("/a//b/../c", Ok("/a/c")),
            ("/a//../b", Err(AmbiguousDotSegment)),
            ("/a//./../b", Err(AmbiguousDotSegment)),
            ("//..", Err(AmbiguousDotSegment)),
            // Percent-decoding.
            ("/%41%42", Ok("/AB")),
            ("/%7euser", Ok("/~user")),
            ("/caf%C3%A9", Ok("/café")),
            ("/caf%c3%a9", Ok("/café")),
            ("/a%20b", Ok("/a b")),
            ("/a%3Fb%23c", Ok("/a?b#c")),
            ("/admin%3b", Ok("/admin;")),
            ("/%C3", Err(NotUtf8)),
            ("/%C0%AF", Err(NotUtf8)),
            ("/%FF", Err(NotUtf8)),
            ("/a%2fb", Err(AmbiguousEncoding)),
            ("/a%2Fb", Err(AmbiguousEncoding)),
            ("/a%5cb", Err(AmbiguousEncoding)),
            ("/a%5Cb", Err(AmbiguousEncoding)),
            ("/%2541", Err(AmbiguousEncoding)),
            ("/a%00", Err(AmbiguousEncoding)),
            ("/a%0d%0aX", Err(AmbiguousEncoding)),
            ("/a%7F", Err(AmbiguousEncoding)),
            ("/%G1", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%%41", Err(BadEscape)),
            // Raw characters.
            ("/a\\b", Err(BadCharacter)),
            ("/a\0", Err(BadCharacter)),
            ("/a\tb", Err(BadCharacter)),
            ("/a\r\nb", Err(BadCharacter)),
            ("/a\u{7f}", Err(BadCharacter)),
            // Not absolute.
            ("", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("%2F", Err(NotAbsolute)),
            ("http://x/a", Err(NotAbsolute)),
        ];
        assert!(cases.len() >= 40);
        for (raw, expected) in cases {
            let got = normalize_path(raw);
            assert_eq!(got.as_deref().map_err(|e| *e), *expected, "{raw:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed_and_changed_paths_are_owned() {
        for raw in [
            "/",
            "/a",
            "/a/b/",
            "/ADMIN",
            "/admin/..;/x",
            "/.well-known/x",
        ] {
            let normal = normalize_path(raw).unwrap();
            assert!(
                matches!(normal, Cow::Borrowed(s) if std::ptr::eq(s, raw)),
                "{raw}"
            );
        }
        for raw in ["/a/./b", "//a", "/%41"] {
            assert!(
                matches!(normalize_path(raw).unwrap(), Cow::Owned(_)),
                "{raw}"
            );
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in [
            "/a/%2e%2e/b",
            "//x//y/",
            "/caf%C3%A9/./",
            "/a%3Fb",
            "/a/b/..",
        ] {
            let once = normalize_path(raw).unwrap().into_owned();
            let twice = normalize_path(&once).unwrap();
            assert!(matches!(twice, Cow::Borrowed(_)), "{raw}");
            assert_eq!(twice, once);
        }
    }

    #[test]
    fn errors_read_as_short_sentences() {
        assert_eq!(
            AboveRoot.to_string(),
            "the request path climbs above the root with '..'"
        );
        assert_eq!(
            normalize_path("/a%2fb").unwrap_err().to_string(),
            "the request path percent-encodes '/', '\\', '%' or a control character, which servers read differently"
        );
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        let cases = [
            ("/foo", "/foo", true),
            ("/foo", "/foo/", true),
            ("/foo", "/foo/bar", true),
            ("/foo", "/foobar", false),
            ("/foo", "/fo", false),
            ("/foo", "/", false),
            ("/foo/", "/foo", true),
            ("/foo/", "/foo/bar", true),
            ("/foo/", "/foobar", false),
            ("/", "/", true),
            ("/", "/anything/at/all", true),
            ("/foo/bar", "/foo/bar/baz", true),
            ("/foo/bar", "/foo/barbaz", false),
            ("/foo/bar", "/foo", false),
            ("/Foo", "/foo", false),
        ];
        for (prefix, path, expected) in cases {
            assert_eq!(prefix_matches(prefix, path), expected, "{prefix} vs {path}");
        }
    }
}
