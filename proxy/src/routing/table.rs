//! Host and path routing with Kubernetes Ingress v1 semantics.
//!
//! Hosts match exactly (case-insensitive, port ignored) or through a `*.` wildcard that covers
//! exactly one label; an exact host wins over a wildcard. Within a host, the longest matching
//! path wins, `Exact` beats `Prefix` of the same length, and `Prefix` matches element-wise
//! (`/foo` matches `/foo` and `/foo/bar`, never `/foobar`). A host may have a default for paths
//! nothing matches. Unknown hosts match nothing: there is no global fallback to someone else's
//! site. The table is immutable; a new one is built for every configuration change.

use std::collections::HashMap;

use serde::Deserialize;

/// Kubernetes Ingress `pathType`: `Prefix` (element-wise) or `Exact`. `ImplementationSpecific`
/// has no meaning of its own here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum PathType {
    #[default]
    Prefix,
    Exact,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteTable<T> {
    exact: HashMap<Box<str>, HostRoutes<T>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, HostRoutes<T>>,
    /// The routes of the host `*`: for hosts nothing else names.
    any: Option<HostRoutes<T>>,
}

#[derive(Debug, Clone)]
struct HostRoutes<T> {
    /// Longest first; `Exact` before `Prefix` at equal length.
    paths: Vec<PathRule<T>>,
    default: Option<T>,
}

#[derive(Debug, Clone)]
struct PathRule<T> {
    /// For `Prefix`, stored without a trailing slash (`/` becomes the empty string).
    path: Box<str>,
    kind: PathType,
    target: T,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<T> RouteTable<T> {
    /// Adds a host. Hosts must be unique; a later entry for the same host replaces the earlier.
    pub(crate) fn insert_host(
        &mut self,
        host: &str,
        paths: impl IntoIterator<Item = (String, PathType, T)>,
        default: Option<T>,
    ) {
        let mut rules: Vec<PathRule<T>> = paths
            .into_iter()
            .map(|(path, kind, target)| {
                let path = match kind {
                    PathType::Prefix => path.trim_end_matches('/').into(),
                    PathType::Exact => path.into(),
                };
                PathRule { path, kind, target }
            })
            .collect();
        rules.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| exact_first(a.kind).cmp(&exact_first(b.kind)))
        });
        let routes = HostRoutes {
            paths: rules,
            default,
        };
        let host = host.to_ascii_lowercase();
        if host == "*" {
            self.any = Some(routes);
            return;
        }
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.into(), routes),
            None => self.exact.insert(host.into(), routes),
        };
    }

    /// Whether any rule covers this host (exactly, by wildcard, or through `*`).
    pub(crate) fn knows_host(&self, host: &str) -> bool {
        self.host_routes(host).is_some()
    }

    /// Whether an exact or wildcard entry names this host: `*` names no host. What may be
    /// redirected to after a login is decided on this, so that a catch-all route never makes
    /// every host a known one.
    pub(crate) fn names_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, suffix)| self.wildcard.contains_key(suffix))
    }

    /// Finds the target for a normalised host (lowercase, no port) and an absolute path.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&T> {
        let routes = self.host_routes(host)?;
        routes
            .paths
            .iter()
            .find(|rule| rule.matches(path))
            .map(|rule| &rule.target)
            .or(routes.default.as_ref())
    }

    fn host_routes(&self, host: &str) -> Option<&HostRoutes<T>> {
        if let Some(routes) = self.exact.get(host) {
            return Some(routes);
        }
        host.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .or(self.any.as_ref())
    }
}

fn exact_first(kind: PathType) -> u8 {
    match kind {
        PathType::Exact => 0,
        PathType::Prefix => 1,
    }
}

impl<T> PathRule<T> {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathType::Exact => path == &*self.path,
            PathType::Prefix => crate::routing::path::prefix_matches(&self.path, path),
        }
    }
}

/// Lowercases a request's host and strips its port and a trailing dot. Returns `None` for
/// hosts no route could ever match: empty, with characters outside a DNS name or a bracketed IP
/// literal, or followed by anything but `:` and a port's digits (`a:b:c`, `[::1]x`). The result
/// normalises to itself.
pub fn normalize_host(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        let end = rest.find(']')? + 2;
        raw.split_at(end)
    } else {
        raw.split_at(raw.find(':').unwrap_or(raw.len()))
    };
    if !port.is_empty()
        && !port
            .strip_prefix(':')
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = match host.strip_prefix('[') {
        Some(literal) => literal.strip_suffix(']').is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        }),
        None => host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
    };
    if host.is_empty() || host.ends_with('.') || !valid {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(host.to_ascii_lowercase().into())
    } else {
        Some(host.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathType::{Exact, Prefix};

    fn table() -> RouteTable<&'static str> {
        let mut table = RouteTable::default();
        table.insert_host(
            "app.example.com",
            [
                ("/".to_string(), Prefix, "root"),
                ("/foo".to_string(), Prefix, "foo-prefix"),
                ("/foo".to_string(), Exact, "foo-exact"),
                ("/foo/bar/".to_string(), Prefix, "foobar-prefix"),
                ("/api/v1/health".to_string(), Exact, "health"),
            ],
            None,
        );
        table.insert_host(
            "*.example.com",
            [("/wild".to_string(), Prefix, "wild")],
            Some("wild-default"),
        );
        table.insert_host("only-default.test", [], Some("default"));
        table.insert_host("no-default.test", [("/a".to_string(), Prefix, "a")], None);
        table
    }

    #[test]
    fn routing_table_follows_ingress_semantics() {
        let table = table();
        let cases = [
            // host, path, expected
            ("app.example.com", "/", Some("root")),
            ("app.example.com", "/other", Some("root")),
            ("app.example.com", "/foo", Some("foo-exact")),
            ("app.example.com", "/foo/", Some("foo-prefix")),
            ("app.example.com", "/foo/x", Some("foo-prefix")),
            ("app.example.com", "/foobar", Some("root")),
            ("app.example.com", "/foo/bar", Some("foobar-prefix")),
            ("app.example.com", "/foo/bar/baz", Some("foobar-prefix")),
            ("app.example.com", "/foo/barbaz", Some("foo-prefix")),
            ("app.example.com", "/api/v1/health", Some("health")),
            ("app.example.com", "/api/v1/health/", Some("root")),
            ("x.example.com", "/wild/1", Some("wild")),
            ("x.example.com", "/wilder", Some("wild-default")),
            ("a.b.example.com", "/wild", None),
            ("example.com", "/wild", None),
            ("only-default.test", "/anything", Some("default")),
            ("no-default.test", "/a/b", Some("a")),
            ("no-default.test", "/b", None),
            ("unknown.test", "/", None),
        ];
        for (host, path, expected) in cases {
            assert_eq!(table.find(host, path).copied(), expected, "{host}{path}");
        }
    }

    #[test]
    fn the_any_host_serves_only_hosts_nothing_else_names() {
        let mut table = table();
        assert!(!table.knows_host("unknown.test"));
        table.insert_host(
            "*",
            [("/status".to_string(), Prefix, "any-status")],
            Some("any"),
        );
        for (host, path, expected) in [
            ("unknown.test", "/", Some("any")),
            ("unknown.test", "/status/x", Some("any-status")),
            ("192.0.2.1", "/status", Some("any-status")),
            ("localhost", "/", Some("any")),
            // Hosts with entries keep them, and do not fall through.
            ("no-default.test", "/b", None),
            ("no-default.test", "/status", None),
            ("x.example.com", "/status", Some("wild-default")),
            ("a.b.example.com", "/", Some("any")),
        ] {
            assert_eq!(table.find(host, path).copied(), expected, "{host}{path}");
        }
        assert!(table.knows_host("unknown.test"));
        // But `*` names no host: nothing may be sent there after a login because of it.
        assert!(!table.names_host("unknown.test"));
        assert!(table.names_host("app.example.com") && table.names_host("x.example.com"));
    }

    #[test]
    fn exact_host_wins_over_wildcard() {
        let table = table();
        assert_eq!(
            table.find("app.example.com", "/wild").copied(),
            Some("root")
        );
    }

    #[test]
    fn knows_host_covers_exact_and_wildcard_hosts_only() {
        let table = table();
        assert!(table.knows_host("app.example.com"));
        assert!(table.knows_host("zzz.example.com"));
        assert!(!table.knows_host("example.com"));
        assert!(!table.knows_host("evil.test"));
    }

    #[test]
    fn hosts_are_normalised_before_lookup() {
        let cases = [
            ("App.Example.COM", Some("app.example.com")),
            ("app.example.com:8443", Some("app.example.com")),
            ("app.example.com.", Some("app.example.com")),
            ("[::1]:443", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("", None),
            ("bad host", None),
            ("a/b", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_host(raw).as_deref(), expected, "{raw:?}");
        }
    }

    /// Found by the `path` fuzz target: only the part after the last `:` was dropped, so
    /// `App.COM:84e.COM:8443` became `app.com:84e.com`, which normalised again to `app.com`.
    #[test]
    fn a_host_is_followed_by_nothing_or_a_port_and_normalises_to_itself() {
        let cases = [
            ("App.COM:84e.COM:8443", None),
            ("app.example.com:evil", None),
            ("app.example.com:", Some("app.example.com")),
            ("app.example.com..", None),
            ("app.example.com.:443", Some("app.example.com")),
            ("[::1]x", None),
            ("[::1]:", Some("[::1]")),
            ("[::1]:44x", None),
            ("[::FFFF:10.0.0.1]:443", Some("[::ffff:10.0.0.1]")),
            ("[g::1]", None),
            ("a]b", None),
            ("[]", None),
        ];
        for (raw, expected) in cases {
            let host = normalize_host(raw);
            assert_eq!(host.as_deref(), expected, "{raw:?}");
            if let Some(host) = host {
                assert_eq!(normalize_host(&host).as_deref(), Some(&*host), "{raw:?}");
            }
        }
    }
}
