//! `normalize_path` and `normalize_host` on arbitrary text, with the properties any sound
//! normaliser has (they hold for the current rules and for stricter ones):
//!
//! - a normal path starts with `/`; has no `.` or `..` segment, also none that percent-decodes
//!   to one (`%2e`); no `//`, `\`, control byte, malformed escape, nor an escape of `/`, `\` or
//!   `%` (`%2F`, `%5C`, `%25`, any case); and normalising it again gives it back unchanged;
//! - a normal host is non-empty lowercase DNS/IP-literal text, has no port (a `:` only inside
//!   `[...]`), no trailing dot, and normalising it again gives it back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_proxy::fuzzing::normalize_path;
use sekisho_proxy::fuzzing::normalize_host;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    check_path(raw);
    check_host(raw);
});

fn check_path(raw: &str) {
    let Ok(normal) = normalize_path(raw) else {
        return;
    };
    let normal: &str = &normal;
    assert!(
        normal.starts_with('/'),
        "{raw:?} -> {normal:?}: not absolute"
    );
    assert!(!normal.contains("//"), "{raw:?} -> {normal:?}: has //");
    assert!(
        !normal.bytes().any(|b| b.is_ascii_control() || b == b'\\'),
        "{raw:?} -> {normal:?}: control byte or backslash"
    );
    let upper = normal.to_ascii_uppercase();
    for escape in ["%2F", "%5C", "%25"] {
        assert!(
            !upper.contains(escape),
            "{raw:?} -> {normal:?}: keeps {escape}"
        );
    }
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        assert!(
            hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
            "{raw:?} -> {normal:?}: malformed escape at {i}"
        );
    }
    for segment in normal.split('/') {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        assert!(
            decoded != "." && decoded != "..",
            "{raw:?} -> {normal:?}: dot segment {segment:?}"
        );
    }
    assert_eq!(
        normalize_path(normal).as_deref(),
        Ok(normal),
        "{raw:?} -> {normal:?}: not idempotent"
    );
}

fn check_host(raw: &str) {
    let Some(host) = normalize_host(raw) else {
        return;
    };
    let host: &str = &host;
    assert!(!host.is_empty(), "{raw:?}: empty host");
    assert!(
        host.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._[]:".contains(&b)),
        "{raw:?} -> {host:?}: not lowercase DNS/IP-literal text"
    );
    assert!(!host.ends_with('.'), "{raw:?} -> {host:?}: trailing dot");
    if !host.starts_with('[') {
        assert!(!host.contains(':'), "{raw:?} -> {host:?}: keeps a port");
    }
    assert_eq!(
        normalize_host(host).as_deref(),
        Some(host),
        "{raw:?} -> {host:?}: not idempotent"
    );
}
