//! One canonical form of a request path, decided once per request.
//!
//! Every request's path is normalised before routing; routing, every access decision, the
//! logs and the upstream then use that one form, so what was authorised is what the upstream
//! serves. A spelling that the proxy and an upstream could read as different resources is
//! refused, not guessed. This module is pure string logic: it must not do I/O and must not
//! depend on the rest of the proxy. The rules are documented for users in `docs/paths.md`.
//!
//! [`normalize_path`] takes the request-target path (without the query):
//!
//! 1. It must start with `/` ([`PathError::NotAbsolute`]); `*` is not a path here.
//! 2. Raw control characters (including NUL) and raw `\` are refused
//!    ([`PathError::BadCharacter`]).
//! 3. Percent-escapes need two hex digits ([`PathError::BadEscape`]). An escaped `/` is refused
//!    ([`PathError::EncodedSlash`]; a route may opt out, see [`decode_slashes`]); an escaped
//!    `\`, `%` (double encoding such as `%252e`) or control character is refused
//!    ([`PathError::AmbiguousEncoding`]). Escapes of unreserved characters (`A-Z a-z 0-9 - . _
//!    ~`) are decoded; every other escape is kept, with uppercase hex (`%3f` becomes `%3F`), so
//!    an escaped `?`, `;` or `#` keeps its meaning. Raw characters that a path may not hold
//!    (`"`, `[`, `]`, `^`, `{`, `|`, `}` and non-ASCII) are escaped. Each segment must decode
//!    to UTF-8 ([`PathError::NotUtf8`]).
//! 4. A segment that is `.` or `..` only once decoded (`%2e`, `.%2E`) is refused
//!    ([`PathError::EncodedDotSegment`]), and so is a segment whose name before its first `;`
//!    is empty, `.` or `..` (`..;x`, `.;x`, `;x`: [`PathError::DotSegmentWithParameters`]),
//!    which Java servers read as a dot segment.
//! 5. Dot segments are removed as in RFC 3986 §5.2.4. A `..` that would climb above the root
//!    is refused ([`PathError::AboveRoot`]), not clamped; a `..` that would remove an empty
//!    segment (`/a//../b`) is refused ([`PathError::AmbiguousDotSegment`]): RFC 3986 gives
//!    `/a/b`, while a server that merges slashes first gives `/b`.
//! 6. Runs of `/` collapse to one; a trailing slash is kept (`/a/` stays `/a/`, and a final `.`
//!    or `..` segment leaves one: `/a/b/..` is `/a/`).
//!
//! Case is preserved. Already-normal paths, the common case, are returned borrowed without
//! allocating. The result is idempotent: normalising it again returns it unchanged.
//!
//! Routing and policy decide on [`without_parameters`] of the normal path: path parameters
//! (`;…` in a segment, which Java servers strip before they route) never change which route or
//! rule applies, so `/admin;v=1/x` is decided as `/admin/x` and forwarded as it came.

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
    #[error("the request path percent-encodes '/', which servers read differently")]
    EncodedSlash,
    #[error(
        "the request path percent-encodes '\\', '%' or a control character, which servers read differently"
    )]
    AmbiguousEncoding,
    #[error("the request path percent-encodes a '.' or '..' segment")]
    EncodedDotSegment,
    #[error("the request path has a segment that Java servers read as '.' or '..' (like '..;x')")]
    DotSegmentWithParameters,
    #[error("the request path does not decode to UTF-8")]
    NotUtf8,
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
    #[error("the request path has '..' after an empty segment, which servers resolve differently")]
    AmbiguousDotSegment,
}

/// Normalises a request path (see the module documentation for the rules).
///
/// Returns the input borrowed when it is already normal, and an owned string otherwise.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    normalize(raw, Slashes::Refuse)
}

/// [`normalize_path`] for a route that lets encoded slashes through: `%2F` is kept as an escape
/// (uppercase) instead of refused. Such a route decides on [`decode_slashes`] of the result.
pub(crate) fn normalize_path_keeping_encoded_slashes(raw: &str) -> Result<Cow<'_, str>, PathError> {
    normalize(raw, Slashes::Keep)
}

/// The form a path with encoded slashes is decided on: each `%2F` of a normal path read as
/// `/`. Refused ([`PathError::EncodedSlash`]) when that makes an empty, `.` or `..` segment or
/// a segment whose name before `;` is one of those, since then the two readings could be
/// different resources.
pub(crate) fn decode_slashes(normal: &str) -> Result<String, PathError> {
    let decoded = normal.replace("%2F", "/");
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let name = segment.split(';').next().unwrap_or("");
        if (name.is_empty() && !(last && segment.is_empty())) || name == "." || name == ".." {
            return Err(PathError::EncodedSlash);
        }
    }
    Ok(decoded)
}

/// The form a normal path is routed and decided on: without its path parameters (each
/// segment's `;` and what follows it). Borrowed when there are none.
pub(crate) fn without_parameters(normal: &str) -> Cow<'_, str> {
    if memchr::memchr(b';', normal.as_bytes()).is_none() {
        return Cow::Borrowed(normal);
    }
    let mut out = String::with_capacity(normal.len());
    for segment in normal[1..].split('/') {
        out.push('/');
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// A path written in the configuration (a route's or a policy rule's), in the canonical form
/// requests are matched in. The message of an error says what to write instead.
pub(crate) fn config_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with '/'"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "`{path}`: a path cannot hold a query or a fragment"
        ));
    }
    if path.contains(';') {
        return Err(format!(
            "`{path}`: path parameters (';') do not take part in matching; leave them out"
        ));
    }
    let normal = normalize_path(path).map_err(|error| format!("`{path}`: {error}"))?;
    if path.contains("//") || path[1..].split('/').any(|s| s == "." || s == "..") {
        return Err(format!("`{path}` is not normalised; write `{normal}`"));
    }
    Ok(normal.into_owned())
}

/// Whether `path` matches `prefix` with Kubernetes Ingress `Prefix` semantics: element-wise, so
/// `/foo` matches `/foo`, `/foo/` and `/foo/bar` but not `/foobar`; `/` matches every path; a
/// trailing slash on the prefix is ignored. Both are expected to be normalised. Routing and
/// policies share this one rule.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slashes {
    Refuse,
    Keep,
}

/// What a raw path byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Kept as it is: unreserved, sub-delims, `:`, `@`, `/`.
    Plain,
    /// A path may not hold it raw: escaped in the normal form.
    Escape,
    /// Control characters and `\`.
    Forbidden,
    Percent,
    Semicolon,
}

fn class(b: u8) -> Class {
    match b {
        b'%' => Class::Percent,
        b';' => Class::Semicolon,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Plain,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
            Class::Plain
        }
        b'/' => Class::Plain,
        b'\\' | 0..=0x1f | 0x7f => Class::Forbidden,
        _ => Class::Escape,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn normalize(raw: &str, slashes: Slashes) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut rewrite = false;
    let mut parameters = false;
    for &b in raw.as_bytes() {
        match class(b) {
            Class::Plain => {}
            Class::Forbidden => return Err(PathError::BadCharacter),
            Class::Percent | Class::Escape => rewrite = true,
            Class::Semicolon => parameters = true,
        }
    }
    if !rewrite && !needs_segment_work(raw, parameters)? {
        return Ok(Cow::Borrowed(raw));
    }
    let resolved = resolve_segments(raw, slashes)?;
    if resolved == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

/// For a path of plain bytes only: whether any segment is empty (other than a final one, the
/// trailing slash), `.` or `..`. Refuses parameter segments with a dot or empty name.
fn needs_segment_work(path: &str, parameters: bool) -> Result<bool, PathError> {
    let mut work = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if parameters {
            check_parameter_name(segment)?;
        }
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            work = true;
        }
    }
    Ok(work)
}

/// A segment with parameters must name something other than `""`, `.` or `..`.
fn check_parameter_name(segment: &str) -> Result<(), PathError> {
    match segment.split_once(';') {
        Some(("" | "." | "..", _)) => Err(PathError::DotSegmentWithParameters),
        _ => Ok(()),
    }
}

/// One segment in the normal form: unreserved escapes decoded, other escapes uppercase,
/// raw characters a path may not hold escaped. Also whether it had an escape, so that an
/// encoded dot segment can be told from a raw one.
fn canonical_segment(
    segment: &str,
    slashes: Slashes,
    decoded: &mut Vec<u8>,
) -> Result<(String, bool), PathError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut escaped = false;
    decoded.clear();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match class(b) {
            Class::Percent => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|&h| hex(h)),
                    bytes.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                escaped = true;
                decoded.push(value);
                i += 3;
                if is_unreserved(value) {
                    out.push(char::from(value));
                    continue;
                }
                match value {
                    b'/' if slashes == Slashes::Refuse => return Err(PathError::EncodedSlash),
                    b'\\' | b'%' | 0..=0x1f | 0x7f => return Err(PathError::AmbiguousEncoding),
                    _ => push_escape(&mut out, value),
                }
            }
            Class::Escape => {
                decoded.push(b);
                push_escape(&mut out, b);
                i += 1;
            }
            Class::Forbidden => return Err(PathError::BadCharacter),
            Class::Plain | Class::Semicolon => {
                decoded.push(b);
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    if std::str::from_utf8(decoded).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok((out, escaped))
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 0xf)]));
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Each segment in its normal form, then RFC 3986 §5.2.4 and runs of `/` collapsed.
fn resolve_segments(path: &str, slashes: Slashes) -> Result<String, PathError> {
    let mut stack: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    let mut decoded = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(raw_segment) = segments.next() {
        let last = segments.peek().is_none();
        let (segment, escaped) = canonical_segment(raw_segment, slashes, &mut decoded)?;
        check_parameter_name(&segment)?;
        let dot = matches!(segment.as_str(), "." | "..");
        if dot && escaped {
            return Err(PathError::EncodedDotSegment);
        }
        if last {
            trailing_slash = matches!(segment.as_str(), "" | "." | "..");
        }
        match segment.as_str() {
            "." => {}
            ".." => match stack.pop() {
                None => return Err(PathError::AboveRoot),
                Some(popped) if popped.is_empty() => return Err(PathError::AmbiguousDotSegment),
                Some(_) => {}
            },
            _ => stack.push(segment),
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
            ("/a;b=c,d:e@f!$&'()*+", Ok("/a;b=c,d:e@f!$&'()*+")),
            ("/admin;jsessionid=1/x", Ok("/admin;jsessionid=1/x")),
            // Non-ASCII and characters a path may not hold raw are escaped.
            ("/café", Ok("/caf%C3%A9")),
            ("/a\"b{c}|d^e[f]", Ok("/a%22b%7Bc%7D%7Cd%5Ee%5Bf%5D")),
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
            ("/public/../protected/x", Ok("/protected/x")),
            ("/..", Err(AboveRoot)),
            ("/../a", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            // Encoded dot segments are refused, whatever the case or mix.
            ("/a/%2e%2e/b", Err(EncodedDotSegment)),
            ("/a/%2E/b", Err(EncodedDotSegment)),
            ("/a/.%2E/b", Err(EncodedDotSegment)),
            ("/a/%2e./b", Err(EncodedDotSegment)),
            ("/a/%2e%2E", Err(EncodedDotSegment)),
            ("/%2e%2e", Err(EncodedDotSegment)),
            ("/a%2eb", Ok("/a.b")),
            ("/%2e%2e%2e", Ok("/...")),
            // Segments that Java servers read as dot segments.
            ("/a/..;/b", Err(DotSegmentWithParameters)),
            ("/a/..;x/b", Err(DotSegmentWithParameters)),
            ("/a/.;x/b", Err(DotSegmentWithParameters)),
            ("/a/;x/b", Err(DotSegmentWithParameters)),
            ("/a/%2e%2e;x/b", Err(DotSegmentWithParameters)),
            ("/admin/..;/x", Err(DotSegmentWithParameters)),
            ("/a/b;", Ok("/a/b;")),
            // Slashes.
            ("//a///b", Ok("/a/b")),
            ("//", Ok("/")),
            ("/a//", Ok("/a/")),
            ("/a//b/../c", Ok("/a/c")),
            ("/a//../b", Err(AmbiguousDotSegment)),
            ("/a//./../b", Err(AmbiguousDotSegment)),
            ("//..", Err(AmbiguousDotSegment)),
            // Percent-escapes: unreserved decoded, the rest kept in uppercase.
            ("/%41%42", Ok("/AB")),
            ("/%7euser", Ok("/~user")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3fb%23c", Ok("/a%3Fb%23c")),
            ("/admin%3b", Ok("/admin%3B")),
            ("/%C3", Err(NotUtf8)),
            ("/%C0%AF", Err(NotUtf8)),
            ("/%FF", Err(NotUtf8)),
            ("/a%2fb", Err(EncodedSlash)),
            ("/a%2Fb", Err(EncodedSlash)),
            ("/a/..%2fb", Err(EncodedSlash)),
            ("/a%5cb", Err(AmbiguousEncoding)),
            ("/a%5Cb", Err(AmbiguousEncoding)),
            ("/%2541", Err(AmbiguousEncoding)),
            ("/%252e%252e/x", Err(AmbiguousEncoding)),
            ("/a%00", Err(AmbiguousEncoding)),
            ("/a%0d%0aX", Err(AmbiguousEncoding)),
            ("/a%7F", Err(AmbiguousEncoding)),
            ("/%G1", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%%41", Err(BadEscape)),
            // Raw characters.
            ("/a\\b", Err(BadCharacter)),
            ("/a\\..\\b", Err(BadCharacter)),
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
        assert!(cases.len() >= 70);
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
            "/a;v=1/x",
            "/.well-known/x",
            "/a%3F",
        ] {
            let normal = normalize_path(raw).unwrap();
            assert!(
                matches!(normal, Cow::Borrowed(s) if std::ptr::eq(s, raw)),
                "{raw}"
            );
        }
        for raw in ["/a/./b", "//a", "/%41", "/a%3f"] {
            assert!(
                matches!(normalize_path(raw).unwrap(), Cow::Owned(_)),
                "{raw}"
            );
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in [
            "/a/b/../c",
            "//x//y/",
            "/caf%c3%a9/./",
            "/a%3fb",
            "/a/b/..",
            "/é\"{x}",
            "/a;b/c;d=e/",
        ] {
            let once = normalize_path(raw).unwrap().into_owned();
            let twice = normalize_path(&once).unwrap();
            assert!(matches!(twice, Cow::Borrowed(_)), "{raw}");
            assert_eq!(twice, once);
        }
    }

    #[test]
    fn path_parameters_do_not_take_part_in_decisions() {
        let cases = [
            ("/admin", "/admin"),
            ("/admin;v=1/x", "/admin/x"),
            ("/a;x/b;y/", "/a/b/"),
            ("/a/b;", "/a/b"),
            ("/a%3Bb", "/a%3Bb"),
        ];
        for (normal, decided) in cases {
            assert_eq!(without_parameters(normal), decided, "{normal}");
        }
        assert!(matches!(without_parameters("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn encoded_slashes_are_kept_for_routes_that_allow_them_and_decided_decoded() {
        let keep = |raw| normalize_path_keeping_encoded_slashes(raw).map(Cow::into_owned);
        assert_eq!(keep("/repo/a%2fb").as_deref(), Ok("/repo/a%2Fb"));
        assert_eq!(keep("/a/..%2Fb").as_deref(), Ok("/a/..%2Fb"));
        assert_eq!(keep("/a%5Cb"), Err(AmbiguousEncoding));
        assert_eq!(decode_slashes("/repo/a%2Fb").as_deref(), Ok("/repo/a/b"));
        for tricky in [
            "/a/..%2Fb",
            "/a%2F..%2Fb",
            "/a%2F%2Fb",
            "/a%2F.",
            "/a%2F..;x",
            "/a%2F;x/b",
        ] {
            let normal = keep(tricky).unwrap();
            assert_eq!(decode_slashes(&normal), Err(EncodedSlash), "{tricky}");
        }
    }

    #[test]
    fn configured_paths_are_stored_in_the_form_requests_are_matched_in() {
        assert_eq!(config_path("/café").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(config_path("/a%7e").as_deref(), Ok("/a~"));
        assert_eq!(config_path("/api/").as_deref(), Ok("/api/"));
        for (bad, says) in [
            ("api", "must start with '/'"),
            ("/a?b", "cannot hold a query"),
            ("/a;b", "path parameters"),
            ("/a//b", "write `/a/b`"),
            ("/a/../b", "write `/b`"),
            ("/a%2Fb", "percent-encodes '/'"),
        ] {
            let error = config_path(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
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
            "the request path percent-encodes '/', which servers read differently"
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
