//! What the agent may dial: exact `host:port` targets, one list for `CONNECT` streams and one for
//! HTTP requests. Matching is textual after normalisation (lowercase names, canonical IP
//! literals); nothing is resolved, so `localhost:22` and `127.0.0.1:22` are different targets.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::uri::Authority;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not host:port")]
    NotHostPort(String),
    #[error("`{0}` has no port")]
    NoPort(String),
    #[error("`{0}` has port 0")]
    PortZero(String),
}

/// A `host:port` the agent can dial. IPv6 literals are written in brackets (`[::1]:22`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// A lowercase DNS name or a canonical IP literal (without brackets).
    host: String,
    port: u16,
}

impl Target {
    /// A target from a host as it appears in a URI (IPv6 in brackets or not) and a port.
    pub fn new(host: &str, port: u16) -> Self {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => bare.to_ascii_lowercase(),
        };
        Self { host, port }
    }

    /// The target named by a request's authority, if it has a port.
    pub fn from_authority(authority: &Authority) -> Option<Self> {
        authority
            .port_u16()
            .map(|port| Self::new(authority.host(), port))
    }

    /// The host, without brackets: what the resolver and the socket API take.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_host_port = || TargetError::NotHostPort(text.to_owned());
        // `Authority` accepts `user@host`; a target never has user information.
        if text.contains('@') || text.is_empty() {
            return Err(not_host_port());
        }
        let authority = Authority::from_str(text).map_err(|_| not_host_port())?;
        if authority.host().is_empty() {
            return Err(not_host_port());
        }
        match authority.port_u16() {
            None => Err(TargetError::NoPort(text.to_owned())),
            Some(0) => Err(TargetError::PortZero(text.to_owned())),
            Some(port) => Ok(Self::new(authority.host(), port)),
        }
    }
}

/// The targets the agent may dial, by kind of stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    tcp: HashSet<Target>,
    http: HashSet<Target>,
}

impl AllowList {
    pub fn new(
        tcp: impl IntoIterator<Item = Target>,
        http: impl IntoIterator<Item = Target>,
    ) -> Self {
        Self {
            tcp: tcp.into_iter().collect(),
            http: http.into_iter().collect(),
        }
    }

    /// Whether a `CONNECT` stream may reach `target`.
    pub fn allows_tcp(&self, target: &Target) -> bool {
        self.tcp.contains(target)
    }

    /// Whether an HTTP request may be forwarded to `target`.
    pub fn allows_http(&self, target: &Target) -> bool {
        self.http.contains(target)
    }

    pub fn extend_tcp(&mut self, targets: impl IntoIterator<Item = Target>) {
        self.tcp.extend(targets);
    }

    pub fn extend_http(&mut self, targets: impl IntoIterator<Item = Target>) {
        self.http.extend(targets);
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.http.is_empty()
    }

    /// The TCP targets, sorted (for logs).
    pub fn tcp(&self) -> Vec<String> {
        sorted(&self.tcp)
    }

    /// The HTTP targets, sorted (for logs).
    pub fn http(&self) -> Vec<String> {
        sorted(&self.http)
    }
}

fn sorted(targets: &HashSet<Target>) -> Vec<String> {
    let mut list: Vec<String> = targets.iter().map(Target::to_string).collect();
    list.sort();
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target {
        text.parse().unwrap()
    }

    #[test]
    fn targets_are_normalised_before_they_are_compared() {
        assert_eq!(target("LocalHost:22"), target("localhost:22"));
        assert_eq!(target("[0:0::1]:22"), target("[::1]:22"));
        assert_eq!(target("[::1]:22").to_string(), "[::1]:22");
        assert_eq!(target("[::1]:22").host(), "::1");
        assert_eq!(target("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn a_target_needs_a_host_and_a_nonzero_port_and_nothing_else() {
        for bad in [
            "",
            "host",
            ":22",
            "host:",
            "host:0",
            "host:99999",
            "user@host:22",
            "host:22/path",
            "http://host:22",
            "a b:22",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "host".parse::<Target>(),
            Err(TargetError::NoPort("host".into()))
        );
    }

    #[test]
    fn the_allow_list_matches_exact_targets_of_the_right_kind_only() {
        let allow = AllowList::new([target("127.0.0.1:22")], [target("localhost:8080")]);
        assert!(allow.allows_tcp(&target("127.0.0.1:22")));
        assert!(!allow.allows_tcp(&target("127.0.0.1:23")));
        assert!(!allow.allows_tcp(&target("localhost:22")));
        assert!(!allow.allows_tcp(&target("localhost:8080")));
        assert!(allow.allows_http(&target("LOCALHOST:8080")));
        assert!(!allow.allows_http(&target("127.0.0.1:22")));
    }

    #[test]
    fn a_request_authority_without_a_port_names_no_target() {
        let authority = Authority::from_static("example.com");
        assert_eq!(Target::from_authority(&authority), None);
        let authority = Authority::from_static("[::1]:22");
        assert_eq!(Target::from_authority(&authority), Some(target("[::1]:22")));
    }
}
