//! Request headers a client may not pass on: claims that only a gateway may make.
//!
//! An upstream behind Sekisho trusts what the proxy tells it: who the user is, where the
//! request came from, which URL and method were asked for. A client that sends one of those
//! headers itself is claiming what only the gate may say, so every such header is removed before
//! the proxy sets its own. That covers the proxy's own identity headers, the identity headers of
//! other gateways (so that moving an application from another gate behind Sekisho cannot be
//! spoofed), the client-certificate headers of TLS terminators, and headers that make an
//! application server act on another URL or method than the one decided on.
//!
//! Names compare with `_` read as `-`: CGI-style servers (PHP, Python WSGI, Ruby Rack) turn both
//! `X-Forwarded-User` and `X_Forwarded_User` into `HTTP_X_FORWARDED_USER`. This module is pure
//! header logic: it must not depend on the rest of the proxy.

use http::header::{HeaderMap, HeaderName};

/// Whole names (lowercase, with `-`) that only a gateway may send.
const EXACT: &[&str] = &[
    // Sekisho's own identity headers.
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    // Other gateways' identity headers (oauth2-proxy, Authelia, Apache, nginx examples,
    // Grafana's auth proxy, Kong, Traefik plugins).
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-group",
    "remote-name",
    "x-remote-user",
    "x-remote-email",
    "x-remote-group",
    "x-remote-groups",
    "x-remote-name",
    "x-forwarded-preferred-username",
    "x-forwarded-username",
    "x-forwarded-access-token",
    "x-auth-user",
    "x-auth-email",
    "x-auth-groups",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-authenticated-email",
    "x-authenticated-groups",
    "x-webauth-user",
    "x-webauth-email",
    "x-webauth-name",
    "x-webauth-groups",
    "x-user",
    "x-username",
    "x-user-email",
    "x-email",
    "x-arr-clientcert",
    // Headers that make an application server act on another URL or method.
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
];

/// Name prefixes (lowercase, with `-`) that only a gateway may send.
const PREFIXES: &[&str] = &[
    "x-sekisho-",
    "x-auth-request-",
    "x-pomerium-",
    "x-goog-authenticated-user-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "cf-access-",
    "tailscale-user-",
    "x-authentik-",
    "x-vouch-",
    "x-ssl-client-",
    "ssl-client-",
    "x-client-cert",
    "x-forwarded-client-cert",
];

/// Headers the proxy sets itself on every request: only their `_` spellings are claims here
/// (the proxy replaces the `-` ones where it sets them).
const SET_BY_PROXY: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "forwarded",
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
    if name.contains('_') {
        let dashed = name.replace('_', "-");
        return is_claim_name(&dashed)
            || SET_BY_PROXY.contains(&dashed.as_str())
            || extra.iter().any(|e| e.as_str() == dashed);
    }
    is_claim_name(name) || extra.iter().any(|e| e.as_str() == name)
}

fn is_claim_name(name: &str) -> bool {
    // Most names a browser sends start with none of these letters: one comparison each.
    if !matches!(
        name.as_bytes().first(),
        Some(b'x' | b'r' | b'c' | b't' | b's')
    ) {
        return false;
    }
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
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
}
