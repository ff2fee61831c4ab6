//! Access policies: `AccessPolicy` (namespaced) and `ClusterAccessPolicy` (cluster-scoped),
//! one spec, the same model as the file configuration's `policies:` (`proxy/src/policy.rs`
//! decides with it; `docs/identity.md` explains it).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{
    DOMAIN, EMAIL, HEADER_NAME, METHOD, RESERVED_HEADER_MESSAGE, RESERVED_HEADER_RULE,
};
use crate::status::ObservedStatus;

/// What a route names instead of a policy when it is meant for everyone, without login: an
/// Ingress's `sekisho.dev/access-policy` annotation, or an IngressClassParameters'
/// `defaultPolicy`. Never a policy's name; Tunnels cannot be public.
pub const PUBLIC_POLICY: &str = "public";

/// Who may pass, and optionally per method and path.
///
/// The first rule whose `methods` and `paths` match a request decides it; when none matches,
/// `allow` decides. An empty `allow` allows no one: the default is deny. An anonymous request
/// that a login could let through is sent to log in; one that no login could help is denied.
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    plural = "accesspolicies",
    namespaced,
    status = "ObservedStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "Who may pass the routes of this namespace that name this policy: Ingresses (annotation `sekisho.dev/access-policy`) and Tunnels (`spec.policy`). A route whose policy is missing or broken denies everyone.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// Who may pass where no rule decides: any one matching subject lets the request through.
    /// Empty (the default), no one passes there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allow: Vec<Subject>,
    /// Checked in order: the first rule whose methods and paths both match the request
    /// decides it, and `allow` is not consulted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<Rule>,
    /// Let CORS preflights through without login where the request would otherwise need one:
    /// `OPTIONS` with both `Origin` and `Access-Control-Request-Method`, which browsers send
    /// without credentials. Deny rules still deny them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cors_preflight: bool,
    /// The request headers in which upstreams behind this policy get the verified identity.
    /// Each one left out keeps its default: `X-Forwarded-User`, `X-Forwarded-Email`,
    /// `X-Forwarded-Groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_headers: Option<IdentityHeaders>,
}

/// A ClusterAccessPolicy's spec, the same as an AccessPolicy's: who may pass, and optionally
/// per method and path.
///
/// The first rule whose `methods` and `paths` match a request decides it; when none matches,
/// `allow` decides. An empty `allow` allows no one: the default is deny.
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "ClusterAccessPolicy",
    plural = "clusteraccesspolicies",
    status = "ObservedStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "Who may pass, for routes in any namespace: an Ingress or Tunnel names it like an AccessPolicy, which is looked for first in the route's own namespace. An IngressClassParameters' `defaultPolicy` names one.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct ClusterAccessPolicySpec(pub AccessPolicySpec);

/// One way an identity can match: exactly one of `email`, `emailDomain`, `hostedDomain`,
/// `group` or `claim`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.email), has(self.emailDomain), has(self.hostedDomain), has(self.group), has(self.claim)].exists_one(k, k)",
    "message": "needs exactly one of email, emailDomain, hostedDomain, group or claim",
}]))]
pub struct Subject {
    /// An email address the identity provider marked verified; compared ASCII
    /// case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320), pattern(EMAIL))]
    pub email: Option<String>,
    /// The domain of a verified email address (what follows its last `@`): exactly this
    /// domain, not its subdomains; ASCII case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(DOMAIN))]
    pub email_domain: Option<String>,
    /// Google's hosted domain (the `hd` claim), exactly; ASCII case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(DOMAIN))]
    pub hosted_domain: Option<String>,
    /// A group the identity provider says the person is in; case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub group: Option<String>,
    /// An ID-token claim with one of the listed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimMatch>,
}

/// An ID-token claim and the values that match it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMatch {
    /// The claim's name in the ID token.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Any one of these values matches, case-sensitively. A string claim is compared as it
    /// is, a number or boolean as its JSON text, an array by its elements.
    #[schemars(length(min = 1, max = 64), inner(length(max = 256)))]
    pub values: Vec<String>,
}

/// A method and path filter with its verdict: exactly one of `public: true`, `deny: true` or
/// a non-empty `allow`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.public) && self.public, has(self.deny) && self.deny, has(self.allow) && size(self.allow) > 0].exists_one(v, v)",
        "message": "needs exactly one verdict: public: true, deny: true or a non-empty allow",
    },
    {
        "rule": "(has(self.methods) && size(self.methods) > 0) || (has(self.paths) && size(self.paths) > 0)",
        "message": "needs methods or paths; subjects for every request belong in the policy's allow",
    },
]))]
pub struct Rule {
    /// The methods the rule applies to, case-sensitive (`HEAD` is not implied by `GET`).
    /// Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 32), pattern(METHOD)))]
    pub methods: Vec<String>,
    /// The paths the rule applies to, matched against the request's normalised path. Empty:
    /// any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub paths: Vec<PolicyPath>,
    /// Everyone passes, without login.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// No one passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny: bool,
    /// Only these subjects pass; any one matching is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allow: Vec<Subject>,
}

/// A path and how it matches, as in an Ingress.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPath {
    /// A path in normal form (no `.` or `..` segments, no `//`, no `;` parameters, no
    /// percent-encoded `/`), starting with `/`, without query or fragment.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self.startsWith('/')", "message": "must start with '/'" },
        {
            "rule": "!self.contains('?') && !self.contains('#')",
            "message": "a path cannot hold a query or a fragment",
        },
    ]))]
    pub path: String,
    /// `Prefix` (the default) matches the path and everything under it, element by element:
    /// `/admin` matches `/admin` and `/admin/x`, not `/administration`. `Exact` matches the
    /// path alone.
    #[serde(rename = "type", default)]
    pub path_type: PathType,
}

/// How a [`PolicyPath`] matches, as an Ingress's `pathType`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathType {
    /// The path and every path under it, element by element.
    #[default]
    Prefix,
    /// The path alone.
    Exact,
}

/// The request headers that carry the verified identity to an upstream, for upstreams that
/// expect other names than Sekisho's (Grafana's auth proxy reads `X-WEBAUTH-USER`). The proxy
/// removes whatever a client sent under these names before it sets them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.user) && has(self.email) && self.user.lowerAscii() == self.email.lowerAscii()) && !(has(self.user) && has(self.groups) && self.user.lowerAscii() == self.groups.lowerAscii()) && !(has(self.email) && has(self.groups) && self.email.lowerAscii() == self.groups.lowerAscii())",
    "message": "user, email and groups need different header names",
}]))]
pub struct IdentityHeaders {
    /// The header with the person's subject (the ID token's `sub`). Default
    /// `X-Forwarded-User`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(HEADER_NAME))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": RESERVED_HEADER_RULE, "message": RESERVED_HEADER_MESSAGE },
    ]))]
    pub user: Option<String>,
    /// The header with the verified email address. Default `X-Forwarded-Email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(HEADER_NAME))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": RESERVED_HEADER_RULE, "message": RESERVED_HEADER_MESSAGE },
    ]))]
    pub email: Option<String>,
    /// The header with the person's groups, comma-separated. Default `X-Forwarded-Groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(HEADER_NAME))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": RESERVED_HEADER_RULE, "message": RESERVED_HEADER_MESSAGE },
    ]))]
    pub groups: Option<String>,
}
