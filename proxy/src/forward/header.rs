//! Headers on their way through the proxy: what describes one connection (hop-by-hop), where a
//! request came from (forwarding headers), upgrades, and claims that only a gateway may make.
//!
//! **Claims.**
//! An upstream behind Sekisho trusts what the proxy tells it: who the user is, where the
//! request came from, which URL and method were asked for. A client that sends one of those
//! headers itself is claiming what only the gate may say, so every such header is removed before
//! the proxy sets its own. That covers the proxy's own identity headers, the identity headers of
//! other gateways (so that moving an application from another gate behind Sekisho cannot be
//! spoofed), the client-certificate headers of TLS terminators, and headers that make an
//! application server act on another URL or method than the one decided on.
//!
//! Names compare with `_` read as `-`: CGI-style servers (PHP, Python WSGI, Ruby Rack) turn both
//! `X-Forwarded-User` and `X_Forwarded_User` into `HTTP_X_FORWARDED_USER`.
//!
//! **Identity headers.** The verified identity goes to the upstream in `X-Forwarded-User`,
//! `X-Forwarded-Email` and `X-Forwarded-Groups`, or in the names a policy gives
//! ([`IdentityHeaderNames`]; Grafana's auth proxy reads `X-WEBAUTH-USER`). A route whose names
//! are not built-in claims strips them too ([`route_claims`]), in every spelling; the default
//! names are stripped on every route. Names that carry the request itself (framing, hop-by-hop,
//! credentials, forwarding headers, `X-Sekisho-*`) cannot carry an identity
//! ([`check_identity_header`]).
//!
//! This module is pure header logic: it must not depend on the rest of the proxy.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Headers the proxy sets itself on every request: only their `_` spellings are claims here
/// (the proxy replaces the `-` ones where it sets them).
const SET_BY_PROXY: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
];

/// Removes every header a client may not send (see the module documentation), and those in
/// `extra` (lowercase names), also in their `_` spellings. Allocates only when it removes.
pub(crate) fn strip_gateway_claims(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let is_claim = |name: &HeaderName| is_gateway_claim(name.as_str(), extra);
    if !headers.keys().any(is_claim) {
        return;
    }
    let claims: Vec<HeaderName> = headers.keys().filter(|n| is_claim(n)).cloned().collect();
    for name in claims {
        headers.remove(name);
    }
}

fn is_gateway_claim(name: &str, extra: &[HeaderName]) -> bool {
    // Every claim starts with one of these letters, `_` spellings included: the names a
    // browser sends mostly do not, and cost one comparison.
    if matches!(
        name.as_bytes().first(),
        Some(b'x' | b'r' | b'c' | b't' | b's')
    ) {
        if name.as_bytes().contains(&b'_') {
            let dashed = name.replace('_', "-");
            return is_claim_name(&dashed)
                || SET_BY_PROXY.contains(&dashed.as_str())
                || is_extra(name, extra);
        }
        if is_claim_name(name) {
            return true;
        }
    }
    is_extra(name, extra)
}

/// Whether a lowercase name is one of `extra` (lowercase, with `-`), reading `_` as `-`.
/// Compares in place: a route with extra claims pays no allocation per header.
fn is_extra(name: &str, extra: &[HeaderName]) -> bool {
    extra.iter().any(|e| {
        e.as_str().len() == name.len()
            && e.as_str()
                .bytes()
                .zip(name.bytes())
                .all(|(want, got)| want == got || (want == b'-' && got == b'_'))
    })
}

/// The headers a route's upstream gets the verified identity in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityHeaderNames {
    /// The subject (the ID token's `sub`).
    pub user: HeaderName,
    /// The verified email.
    pub email: HeaderName,
    /// The groups, comma-separated.
    pub groups: HeaderName,
}

impl Default for IdentityHeaderNames {
    /// `X-Forwarded-User`, `X-Forwarded-Email`, `X-Forwarded-Groups`.
    fn default() -> Self {
        Self {
            user: HeaderName::from_static("x-forwarded-user"),
            email: HeaderName::from_static("x-forwarded-email"),
            groups: HeaderName::from_static("x-forwarded-groups"),
        }
    }
}

impl IdentityHeaderNames {
    /// The given names, each unset or unusable one the default's (validation has refused
    /// unusable names before they get here: see [`check_identity_header`]).
    pub(crate) fn with(user: Option<&str>, email: Option<&str>, groups: Option<&str>) -> Self {
        let default = Self::default();
        let name = |given: Option<&str>, default: HeaderName| {
            given
                .filter(|name| check_identity_header(name).is_ok())
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .unwrap_or(default)
        };
        Self {
            user: name(user, default.user),
            email: name(email, default.email),
            groups: name(groups, default.groups),
        }
    }
}

/// What a client may not send on a route, besides the built-in claims: the configured `extra`
/// (`identity.strip_headers`) and the route's identity header names that are not claims
/// already. Built once per route.
pub(crate) fn route_claims(
    extra: &[HeaderName],
    identity: &IdentityHeaderNames,
) -> Box<[HeaderName]> {
    let mut claims = extra.to_vec();
    for name in [&identity.user, &identity.email, &identity.groups] {
        if !is_claim_name(name.as_str()) && !claims.contains(name) {
            claims.push(name.clone());
        }
    }
    claims.into_boxed_slice()
}

/// The longest identity header name accepted (as the custom resources' schema says).
const IDENTITY_HEADER_MAX: usize = 128;

/// Names that describe the request or its connection, or that the proxy sets itself: an
/// identity in one of them would change what the request is, or be overwritten.
const RESERVED: &[&str] = &[
    // Credentials and cookies.
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    // The target and the framing.
    "host",
    "content-length",
    "content-type",
    // Hop by hop.
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    // Set by the proxy on every request.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
];

/// Whether `name` may carry an identity: letters, digits and `-` (no `_`, which CGI-style
/// servers read as `-`), starting and ending with a letter or digit, at most 128 bytes, and
/// not a name the request itself needs (see [`RESERVED`]) or the proxy's own `X-Sekisho-*`.
pub(crate) fn check_identity_header(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let well_formed = !name.is_empty()
        && name.len() <= IDENTITY_HEADER_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !well_formed {
        return Err(format!(
            "`{name}` is not a header name for an identity: letters, digits and '-' (not first \
             or last), at most {IDENTITY_HEADER_MAX} characters"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || lower.starts_with("x-sekisho-") {
        return Err(format!(
            "`{name}` is reserved: hop-by-hop, framing, credential, forwarding and X-Sekisho-* \
             headers cannot carry an identity"
        ));
    }
    Ok(())
}

/// Whether a lowercase name with `-` is one only a gateway may send: looked up by its first
/// letters, so that a name costs a few comparisons rather than one per entry.
fn is_claim_name(name: &str) -> bool {
    match name.as_bytes() {
        [b'x', b'-', rest @ ..] => is_x_claim(rest),
        // Authelia and others.
        [b'r', b'e', b'm', b'o', b't', b'e', b'-', rest @ ..] => {
            matches!(rest, b"user" | b"email" | b"groups" | b"group" | b"name")
        }
        // Cloudflare Access, Tailscale, TLS terminators' client certificates.
        [b'c', ..] => name.starts_with("cf-access-"),
        [b't', ..] => name.starts_with("tailscale-user-"),
        [b's', ..] => name.starts_with("ssl-client-"),
        _ => false,
    }
}

/// The `X-…` claims, by what follows `x-`.
fn is_x_claim(rest: &[u8]) -> bool {
    let starts = |prefix: &[u8]| rest.starts_with(prefix);
    match rest.first() {
        // Sekisho's own identity headers, oauth2-proxy's, URL and method overrides,
        // Envoy's client certificate.
        Some(b'f') => {
            matches!(
                rest,
                b"forwarded-user"
                    | b"forwarded-email"
                    | b"forwarded-groups"
                    | b"forwarded-preferred-username"
                    | b"forwarded-username"
                    | b"forwarded-access-token"
                    | b"forwarded-uri"
                    | b"forwarded-method"
            ) || starts(b"forwarded-client-cert")
        }
        Some(b'r') => matches!(
            rest,
            b"remote-user"
                | b"remote-email"
                | b"remote-group"
                | b"remote-groups"
                | b"remote-name"
                | b"rewrite-url"
        ),
        // Kong, Traefik plugins, oauth2-proxy's auth_request headers, authentik, AWS ALB,
        // IIS's client certificate.
        Some(b'a') => {
            matches!(
                rest,
                b"auth-user"
                    | b"auth-email"
                    | b"auth-groups"
                    | b"authenticated-user"
                    | b"authenticated-userid"
                    | b"authenticated-email"
                    | b"authenticated-groups"
                    | b"arr-clientcert"
            ) || starts(b"auth-request-")
                || starts(b"authentik-")
                || starts(b"amzn-oidc-")
        }
        // Grafana's auth proxy.
        Some(b'w') => matches!(
            rest,
            b"webauth-user" | b"webauth-email" | b"webauth-name" | b"webauth-groups"
        ),
        // nginx `auth_request` examples.
        Some(b'u') => matches!(rest, b"user" | b"username" | b"user-email"),
        Some(b'e') => rest == b"email",
        Some(b'o') => matches!(rest, b"original-url" | b"original-uri" | b"original-method"),
        Some(b'h') => matches!(rest, b"http-method-override" | b"http-method"),
        // Azure App Service.
        Some(b'm') => rest == b"method-override" || starts(b"ms-client-principal"),
        Some(b's') => starts(b"sekisho-") || starts(b"ssl-client-"),
        Some(b'p') => starts(b"pomerium-"),
        Some(b'g') => starts(b"goog-authenticated-user-"),
        Some(b'c') => starts(b"client-cert"),
        Some(b'v') => starts(b"vouch-"),
        _ => false,
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Named only for an `h2c` upgrade (RFC 7540 §3.2.1), which never passes.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1): the
/// fixed list and whatever `Connection` names. `Upgrade` survives on upgrade exchanges, and
/// `TE: trailers` (which gRPC needs) survives on requests.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names says which of these are present; only those are looked up.
    let present = headers
        .keys()
        .fold(0, |present, name| present | hop_by_hop_bit(name));
    if present == 0 && !upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Every `Connection` header's tokens. `keep-alive` names a header the fixed list
        // removes anyway, and `close` names none: neither needs a lookup.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(',').map(str::trim))
            .filter(|token| {
                !(token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("te")
                    || (upgrade && token.eq_ignore_ascii_case("upgrade")))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        let bit = 1 << index;
        if present & bit == 0 {
            continue;
        }
        let keep = match bit {
            TE_BIT => headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers")),
            UPGRADE_BIT => upgrade,
            _ => false,
        };
        if !keep {
            headers.remove(*name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The headers that are always connection-level. A message's set of them is a bit mask:
/// bit `i` stands for `HOP_BY_HOP[i]`.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &header::CONNECTION,
    &header::TE,
    &header::UPGRADE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
];
const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 1;
const UPGRADE_BIT: u16 = 1 << 2;

fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    HOP_BY_HOP
        .iter()
        .position(|hop| name == *hop)
        .map_or(0, |index| 1 << index)
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `X-Real-IP`. From a trusted proxy, the chain is
/// extended and its proto and host kept; from anyone else, whatever the client claimed is
/// replaced (and `Forwarded` dropped).
pub(crate) fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_header: &HeaderValue,
    trusted: bool,
    tls: bool,
    raw_host: Option<&HeaderValue>,
) {
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if trusted {
        let chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let value = if chain.is_empty() {
            peer_header.clone()
        } else {
            HeaderValue::from_str(&format!("{chain}, {peer}")).unwrap_or(peer_header.clone())
        };
        headers.insert(X_FORWARDED_FOR.clone(), value);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = raw_host
        {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP.clone(), peer_header.clone());
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer_header.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
        match raw_host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.insert(X_REAL_IP.clone(), peer_header.clone());
        headers.remove(&FORWARDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn strip(names: &[&str], extra: &[&str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for name in names {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let extra: Vec<HeaderName> = extra
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect();
        strip_gateway_claims(&mut headers, &extra);
        // Removal reorders a HeaderMap: compare as sets.
        let mut kept: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
        kept.sort();
        kept
    }

    #[test]
    fn identity_headers_are_removed_in_every_spelling() {
        let kept = strip(
            &[
                "X-Forwarded-User",
                "x_forwarded_user",
                "X_Forwarded_Email",
                "x-forwarded_groups",
                "x-sekisho-assertion",
                "X_Sekisho_Assertion",
                "accept",
            ],
            &[],
        );
        assert_eq!(kept, ["accept"]);
    }

    #[test]
    fn other_gateways_identity_and_certificate_headers_are_removed() {
        let kept = strip(
            &[
                "remote-user",
                "Remote_User",
                "x-remote-user",
                "x-auth-request-user",
                "x-auth-request-email",
                "x_auth_request_groups",
                "x-forwarded-preferred-username",
                "x-webauth-user",
                "x-goog-authenticated-user-email",
                "x-amzn-oidc-identity",
                "x-ms-client-principal-name",
                "cf-access-authenticated-user-email",
                "tailscale-user-login",
                "x-authentik-username",
                "x-ssl-client-verify",
                "ssl-client-cert",
                "x-forwarded-client-cert",
                "user-agent",
                "x-requested-with",
            ],
            &[],
        );
        assert_eq!(kept, ["user-agent", "x-requested-with"]);
    }

    #[test]
    fn headers_that_change_the_url_or_method_are_removed() {
        let kept = strip(
            &[
                "x-original-url",
                "X-Rewrite-URL",
                "x_original_url",
                "x-http-method-override",
                "x_http_method_override",
                "x-http-method",
                "x-method-override",
                "x-forwarded-uri",
                "content-type",
            ],
            &[],
        );
        assert_eq!(kept, ["content-type"]);
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_removed_and_dashes_kept_for_the_proxy() {
        let kept = strip(
            &[
                "x_forwarded_for",
                "x_real_ip",
                "x_forwarded_proto",
                "x_request_id",
                "x-forwarded-for",
                "x-request-id",
            ],
            &[],
        );
        assert_eq!(kept, ["x-forwarded-for", "x-request-id"]);
    }

    #[test]
    fn configured_extra_headers_are_removed_in_both_spellings() {
        let kept = strip(&["x-tenant", "x_tenant", "x-other"], &["x-tenant"]);
        assert_eq!(kept, ["x-other"]);
        let kept = strip(
            &["Remote-Person", "remote_person", "remote-persona", "remote"],
            &["remote-person"],
        );
        assert_eq!(kept, ["remote", "remote-persona"]);
    }

    #[test]
    fn a_routes_own_identity_headers_are_claims_on_it_in_every_spelling() {
        let names = IdentityHeaderNames::with(Some("X-Grafana-User"), Some("Person-Mail"), None);
        let claims = route_claims(&[HeaderName::from_static("x-tenant")], &names);
        let claims: Vec<_> = claims.iter().map(HeaderName::as_str).collect();
        // The default groups header is a built-in claim, stripped everywhere already.
        assert_eq!(claims, ["x-tenant", "x-grafana-user", "person-mail"]);
        let kept = strip(
            &[
                "X-GRAFANA-USER",
                "x_grafana_user",
                "PERSON_MAIL",
                "x-forwarded-user",
                "x_forwarded_groups",
                "accept",
            ],
            &claims,
        );
        assert_eq!(kept, ["accept"]);
    }

    #[test]
    fn identity_header_names_fall_back_to_the_defaults_one_by_one() {
        let names = IdentityHeaderNames::with(Some("X-WEBAUTH-USER"), None, Some("Cookie"));
        assert_eq!(names.user, "x-webauth-user");
        assert_eq!(names.email, "x-forwarded-email");
        assert_eq!(names.groups, "x-forwarded-groups");
    }

    #[test]
    fn identity_headers_cannot_be_reserved_or_oddly_spelled() {
        for good in ["X-WEBAUTH-USER", "Remote-User", "x-user2", "A"] {
            assert_eq!(check_identity_header(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "X_WEBAUTH_USER",
            "-x-user",
            "x-user-",
            "x user",
            "x:user",
            "X-Üser",
            &"x".repeat(129),
        ] {
            let message = check_identity_header(bad).unwrap_err();
            assert!(message.contains("is not a header name"), "{bad}: {message}");
        }
        for reserved in [
            "Cookie",
            "AUTHORIZATION",
            "Host",
            "Connection",
            "Transfer-Encoding",
            "Upgrade",
            "Forwarded",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Forwarded-Port",
            "X-Real-IP",
            "X-Request-Id",
            "X-Sekisho-Assertion",
            "x-sekisho-anything",
        ] {
            let message = check_identity_header(reserved).unwrap_err();
            assert!(message.contains("is reserved"), "{reserved}: {message}");
        }
    }

    #[test]
    fn ordinary_headers_are_left_alone() {
        let names = [
            "host",
            "accept",
            "accept-encoding",
            "cookie",
            "cache-control",
            "sec-fetch-mode",
            "x-csrf-token",
            "traceparent",
            "content-length",
            "x-forwarded-prefix",
        ];
        let mut sorted = names;
        sorted.sort();
        assert_eq!(strip(&names, &[]), sorted);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn headers_named_in_any_connection_header_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("connection", "x-second-hop, close"),
            ("x-second-hop", "1"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn te_trailers_and_upgrades_survive() {
        let mut map = headers(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["te"], "trailers");
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
    }

    #[test]
    fn untrusted_clients_cannot_forge_forwarding_headers() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let host = HeaderValue::from_static("app.test");
        set_forwarding_headers(
            &mut map,
            peer,
            &HeaderValue::from_static("192.0.2.7"),
            false,
            true,
            Some(&host),
        );
        assert_eq!(map["x-forwarded-for"], "192.0.2.7");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "app.test");
        assert_eq!(map["x-real-ip"], "192.0.2.7");
        assert!(!map.contains_key("forwarded"));
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        set_forwarding_headers(
            &mut map,
            peer,
            &HeaderValue::from_static("10.0.0.9"),
            true,
            false,
            None,
        );
        assert_eq!(
            map["x-forwarded-for"],
            "198.51.100.1, 198.51.100.2, 10.0.0.9"
        );
        assert_eq!(map["x-forwarded-proto"], "https");
    }
}
