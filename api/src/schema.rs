//! Schema pieces several kinds share: the patterns of names, hosts and headers, the CEL rules
//! (`x-kubernetes-validations`) the API server checks where a pattern cannot say enough, and
//! the transforms that put a rule on the items of a list, where no derive attribute reaches.
//!
//! Patterns are RE2 (Go's `regexp`, which the API server uses). Every string and list that a
//! CEL rule reads has a maximum length, so that the API server's cost estimate of the rule
//! stays within its budget.

use schemars::Schema;
use serde_json::json;

/// A Kubernetes object name (an RFC 1123 subdomain): what `policy` and `defaultPolicy` name.
pub(crate) const OBJECT_NAME: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An RFC 1123 label: a namespace's name.
pub(crate) const LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A lowercase DNS name of labels of 1 to 63 characters, as Ingress hosts are written.
pub(crate) const HOST: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// [`HOST`], or `*.` and a [`HOST`]: a wildcard for one label.
pub(crate) const HOST_OR_WILDCARD: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// A DNS name in any case, without a wildcard, `@` or leading dot: email and hosted domains.
pub(crate) const DOMAIN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$";
/// One `@` between a non-empty name and a [`DOMAIN`].
pub(crate) const EMAIL: &str = r"^[^@\s]+@[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$";
/// An HTTP method token in upper case (methods are case-sensitive, and the standard ones are
/// upper case).
pub(crate) const METHOD: &str = r"^[-!#$%&'*+.^_`|~0-9A-Z]+$";
/// A header name of letters, digits and inner `-`: no `_`, which some servers read as `-`.
pub(crate) const HEADER_NAME: &str = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$";
/// `ed25519:` and 32 bytes in unpadded base64url (the last character carries 2 bits, so only
/// 16 characters can end a canonical encoding): what `sekisho-agent init` prints.
pub(crate) const AGENT_PUBLIC_KEY: &str = r"^ed25519:[-_A-Za-z0-9]{42}[AEIMQUYcgkosw048]$";

/// The longest `host:port`: a 253-character name, or an IPv6 address in brackets, and a port.
pub(crate) const HOST_PORT_MAX: u32 = 261;
/// `host:port` with a port from 1 to 65535; the host a name, an IPv4 address or an IPv6
/// address in brackets. `&&` stops at the pattern, so `int` only sees digits.
pub(crate) const HOST_PORT_RULE: &str = r"self.matches(r'^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([-A-Za-z0-9_.]*[A-Za-z0-9_])?):[0-9]{1,5}$') && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535";
pub(crate) const HOST_PORT_MESSAGE: &str =
    "must be host:port (an IPv6 address in brackets) with a port from 1 to 65535";

/// Headers an identity cannot be carried in: the proxy sets or strips them for other reasons
/// (hop-by-hop, framing, credentials, forwarding, its own `X-Sekisho-*`).
pub(crate) const RESERVED_HEADER_RULE: &str = "!(self.lowerAscii() in ['authorization', 'connection', 'content-length', 'content-type', 'cookie', 'forwarded', 'host', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'set-cookie', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-real-ip', 'x-request-id']) && !self.lowerAscii().startsWith('x-sekisho-')";
pub(crate) const RESERVED_HEADER_MESSAGE: &str = "is reserved: hop-by-hop, framing, credential, forwarding and X-Sekisho-* headers cannot carry an identity";

/// A transform for a `Vec<String>` field: each item must be `host:port` ([`HOST_PORT_RULE`]).
pub(crate) fn items_are_host_ports(schema: &mut Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert("maxLength".into(), json!(HOST_PORT_MAX));
        items.insert(
            "x-kubernetes-validations".into(),
            json!([{ "rule": HOST_PORT_RULE, "message": HOST_PORT_MESSAGE }]),
        );
    }
}
