//! Access policies: who may pass a route, optionally per method and path.
//!
//! A policy is configuration (`policies: {NAME: AccessPolicy}`) that routes reference by name,
//! and a pure decision function over a verified [`Identity`], the request method, the path the
//! request is decided on ([`crate::routing::path::without_parameters`] of its normal form) and the
//! request headers. This module must not do I/O
//! and must not know how an identity was established: login, sessions and tokens live elsewhere.
//!
//! The rules, in the order [`AccessPolicy::decide`] applies them:
//!
//! - The first entry of `rules` whose `methods` (if any) and `paths` (if any) match decides:
//!   `deny: true` denies everyone, `public: true` lets everyone through without login, and a
//!   non-empty `allow` lets through the identities it lists.
//! - When no rule matches, the policy's own `allow` list decides. An empty list allows no one:
//!   the default is deny.
//! - An anonymous request that a login could let through gets [`Decision::LoginRequired`]; one
//!   that no login could help is denied.
//! - With `cors_preflight: true`, a CORS preflight (`OPTIONS` with both `Origin` and
//!   `Access-Control-Request-Method`) that would otherwise need a login is let through, since
//!   browsers send preflights without credentials. Deny rules still deny it.
//!
//! Subjects: an `email` counts only when the identity provider marked it verified, and compares
//! ASCII-case-insensitively. `email_domain` compares the part after the email's last `@` with the
//! domain, exactly (no subdomains, no suffix match), also only for a verified email.
//! `hosted_domain` compares Google's `hd` claim exactly, ASCII-case-insensitively. `group` and
//! `claim` values compare exactly and case-sensitively. Case-insensitive comparisons use
//! `eq_ignore_ascii_case`, so a decision allocates nothing and needs no lowercased copies.
//!
//! Methods compare exactly (they are case-sensitive in HTTP); `HEAD` is not implied by `GET`.
//! A route without a policy and without `public: true` asks the anonymous to sign in and then
//! denies everyone ([`RouteAccess`]).
//!
//! A policy also says in which request headers the upstreams behind it get the verified
//! identity (`identity_headers`; each unset one keeps its default, `X-Forwarded-User`,
//! `-Email`, `-Groups`): see [`crate::forward::header`] for the names that cannot carry one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method, header};
use serde::Deserialize;

use crate::config::problem::{Problem, is_dns_name, is_name};
use crate::forward::header::{IdentityHeaderNames, check_identity_header};
use crate::routing::path::prefix_matches;
use crate::routing::table::PathType;

/// Who may pass, and optionally per method and path. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Any one subject matching allows, for requests no rule decides.
    #[serde(default)]
    pub allow: Vec<Subject>,
    /// The first rule whose methods and paths match decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Let CORS preflights through where the request would otherwise need a login.
    #[serde(default)]
    pub cors_preflight: bool,
    /// The headers the upstreams behind this policy get the verified identity in.
    #[serde(default)]
    pub identity_headers: Option<IdentityHeaders>,
}

/// The request headers that carry the verified identity to the upstream, for upstreams that
/// expect other names than `X-Forwarded-User`, `X-Forwarded-Email` and `X-Forwarded-Groups`
/// (Grafana's auth proxy reads `X-WEBAUTH-USER`). Each one left out keeps its default. The same
/// fields as the custom resources' `identityHeaders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    /// The subject (the ID token's `sub`).
    #[serde(default)]
    pub user: Option<String>,
    /// The verified email.
    #[serde(default)]
    pub email: Option<String>,
    /// The groups, comma-separated.
    #[serde(default)]
    pub groups: Option<String>,
}

/// One way an identity can match. Written in YAML as a map with exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SubjectFields")]
pub enum Subject {
    /// A verified email address, ASCII-case-insensitive.
    Email(String),
    /// The domain of a verified email address (after the last `@`), exact and
    /// ASCII-case-insensitive.
    EmailDomain(String),
    /// Google's `hd` claim, exact and ASCII-case-insensitive.
    HostedDomain(String),
    /// A group name, case-sensitive.
    Group(String),
    /// A claim with one of these values, case-sensitive.
    Claim(ClaimMatch),
}

/// The YAML shape of a [`Subject`]: serde_yaml_ng reads enums only from `!tags`, so the
/// one-key map form is checked here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectFields {
    email: Option<String>,
    email_domain: Option<String>,
    hosted_domain: Option<String>,
    group: Option<String>,
    claim: Option<ClaimMatch>,
}

impl TryFrom<SubjectFields> for Subject {
    type Error = &'static str;

    fn try_from(fields: SubjectFields) -> Result<Self, Self::Error> {
        let mut found = [
            fields.email.map(Subject::Email),
            fields.email_domain.map(Subject::EmailDomain),
            fields.hosted_domain.map(Subject::HostedDomain),
            fields.group.map(Subject::Group),
            fields.claim.map(Subject::Claim),
        ]
        .into_iter()
        .flatten();
        match (found.next(), found.next()) {
            (Some(subject), None) => Ok(subject),
            _ => Err(
                "each allow entry needs exactly one of `email`, `email_domain`, `hosted_domain`, `group` or `claim`",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatch {
    pub name: String,
    /// Any one of these values matches.
    pub values: Vec<String>,
}

/// A method and path filter with its verdict: exactly one of `public`, `deny` or `allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Empty: any path.
    #[serde(default)]
    pub paths: Vec<PolicyPath>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub deny: bool,
    #[serde(default)]
    pub allow: Vec<Subject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPath {
    /// A normalised path, matched against the normalised request path.
    pub path: String,
    /// Kubernetes Ingress `pathType`: `Prefix` (element-wise, the default) or `Exact`.
    #[serde(rename = "type", default)]
    pub path_type: PathType,
}

/// A verified identity, as established at login.
///
/// `claims` holds extra ID-token claims flattened to strings once at login (see
/// [`claim_values`]) rather than as JSON values: a policy only compares strings, and flattening
/// once keeps the per-request check a plain lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    /// Google's `hd` claim.
    pub hosted_domain: Option<String>,
    pub groups: Vec<String>,
    pub claims: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// The email, if the identity provider verified it.
    pub fn verified_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|_| self.email_verified)
    }
}

/// The strings a policy can match in a JSON claim: a string as itself, a boolean or number as its
/// JSON text, an array as its elements of those kinds; `null`, objects and nested arrays give
/// nothing.
pub(crate) fn claim_values(value: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
    match value {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// Which part of the configuration made a decision, for the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef {
    /// `rules[i]` of the policy.
    Rule(usize),
    /// The policy's `allow` list.
    Allow,
    /// `cors_preflight: true`.
    CorsPreflight,
    /// Nothing allowed the request.
    DefaultDeny,
    /// The route is `public: true`.
    PublicRoute,
    /// The route has neither a policy nor `public: true`.
    NoPolicy,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(i) => write!(f, "rules[{i}]"),
            Self::Allow => f.write_str("allow"),
            Self::CorsPreflight => f.write_str("cors_preflight"),
            Self::DefaultDeny => f.write_str("default_deny"),
            Self::PublicRoute => f.write_str("public_route"),
            Self::NoPolicy => f.write_str("no_policy"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: RuleRef,
    },
    Deny {
        rule: RuleRef,
        reason: &'static str,
    },
    /// The request is anonymous and a login could let it through.
    LoginRequired {
        rule: RuleRef,
    },
}

impl Decision {
    pub fn rule(&self) -> RuleRef {
        match *self {
            Self::Allow { rule } | Self::Deny { rule, .. } | Self::LoginRequired { rule } => rule,
        }
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

const NO_SUBJECT_IN_ALLOW: &str = "no subject in the policy's allow list matches";
const NO_SUBJECT_IN_RULE: &str = "no subject in the rule's allow list matches";
const POLICY_ALLOWS_NO_ONE: &str = "the policy allows no one here";
const RULE_ALLOWS_NO_ONE: &str = "the rule allows no one";
const DENY_RULE: &str = "a deny rule matches";
const ROUTE_WITHOUT_POLICY: &str = "the route has no policy";

impl AccessPolicy {
    /// Decides one request. `normalized_path` must be the form requests are decided on:
    /// [`crate::routing::path::without_parameters`] of [`crate::routing::path::normalize_path`].
    pub fn decide(
        &self,
        identity: Option<&Identity>,
        method: &Method,
        normalized_path: &str,
        request_headers: &HeaderMap,
    ) -> Decision {
        let decision = self.decide_by_rules(identity, method, normalized_path);
        if matches!(decision, Decision::LoginRequired { .. })
            && self.cors_preflight
            && is_cors_preflight(method, request_headers)
        {
            return Decision::Allow {
                rule: RuleRef::CorsPreflight,
            };
        }
        decision
    }

    fn decide_by_rules(
        &self,
        identity: Option<&Identity>,
        method: &Method,
        path: &str,
    ) -> Decision {
        if let Some((i, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.applies(method, path))
        {
            let rule_ref = RuleRef::Rule(i);
            // Deny first, so that an unvalidated rule with several verdicts fails closed.
            if rule.deny {
                return Decision::Deny {
                    rule: rule_ref,
                    reason: DENY_RULE,
                };
            }
            if rule.public {
                return Decision::Allow { rule: rule_ref };
            }
            return decide_by_subjects(
                &rule.allow,
                identity,
                rule_ref,
                rule_ref,
                RULE_ALLOWS_NO_ONE,
                NO_SUBJECT_IN_RULE,
            );
        }
        decide_by_subjects(
            &self.allow,
            identity,
            RuleRef::Allow,
            RuleRef::DefaultDeny,
            POLICY_ALLOWS_NO_ONE,
            NO_SUBJECT_IN_ALLOW,
        )
    }

    /// Every problem of this policy; `field` names it (`policies.staff`).
    pub fn validate(&self, field: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        check_subjects(&self.allow, &format!("{field}.allow"), &mut problems);
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("{field}.rules[{i}]"), &mut problems);
        }
        if let Some(headers) = &self.identity_headers {
            headers.validate(&format!("{field}.identity_headers"), &mut problems);
        }
        problems
    }

    /// The headers the upstreams behind this policy get the identity in.
    pub(crate) fn identity_header_names(&self) -> IdentityHeaderNames {
        match &self.identity_headers {
            Some(headers) => IdentityHeaderNames::with(
                headers.user.as_deref(),
                headers.email.as_deref(),
                headers.groups.as_deref(),
            ),
            None => IdentityHeaderNames::default(),
        }
    }
}

impl IdentityHeaders {
    /// Each name must be able to carry an identity, and the three (defaults included) must
    /// differ: two values in one header would read as one.
    fn validate(&self, field: &str, problems: &mut Vec<Problem>) {
        let mut usable = true;
        for (key, name) in self.fields() {
            if let Some(name) = name
                && let Err(message) = check_identity_header(name)
            {
                problems.push(Problem::new(format!("{field}.{key}"), message));
                usable = false;
            }
        }
        if !usable {
            return;
        }
        let defaults = IdentityHeaderNames::default();
        let resolved = [
            (
                "user",
                self.user.as_deref().unwrap_or(defaults.user.as_str()),
            ),
            (
                "email",
                self.email.as_deref().unwrap_or(defaults.email.as_str()),
            ),
            (
                "groups",
                self.groups.as_deref().unwrap_or(defaults.groups.as_str()),
            ),
        ];
        for (i, (key, name)) in resolved.iter().enumerate() {
            if let Some((other, _)) = resolved[..i]
                .iter()
                .find(|(_, earlier)| earlier.eq_ignore_ascii_case(name))
            {
                problems.push(Problem::new(
                    format!("{field}.{key}"),
                    format!("`{name}` already carries the {other}: give each its own header"),
                ));
            }
        }
    }

    fn fields(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("user", self.user.as_deref()),
            ("email", self.email.as_deref()),
            ("groups", self.groups.as_deref()),
        ]
    }
}

/// Checks a `policies:` map: names and every policy.
pub(crate) fn validate_policies(policies: &BTreeMap<String, AccessPolicy>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (name, policy) in policies {
        let field = format!("policies.{name}");
        if !is_name(name) {
            problems.push(Problem::new(
                field.clone(),
                "names use lowercase letters, digits, '-', '_' and '.'",
            ));
        }
        problems.extend(policy.validate(&field));
    }
    problems
}

fn decide_by_subjects(
    subjects: &[Subject],
    identity: Option<&Identity>,
    allowed_by: RuleRef,
    denied_by: RuleRef,
    empty_reason: &'static str,
    mismatch_reason: &'static str,
) -> Decision {
    if subjects.is_empty() {
        return Decision::Deny {
            rule: denied_by,
            reason: empty_reason,
        };
    }
    match identity {
        None => Decision::LoginRequired { rule: allowed_by },
        Some(identity) if subjects.iter().any(|s| s.matches(identity)) => {
            Decision::Allow { rule: allowed_by }
        }
        Some(_) => Decision::Deny {
            rule: denied_by,
            reason: mismatch_reason,
        },
    }
}

fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Subject {
    pub fn matches(&self, identity: &Identity) -> bool {
        match self {
            Self::Email(email) => identity
                .verified_email()
                .is_some_and(|e| e.eq_ignore_ascii_case(email)),
            Self::EmailDomain(domain) => identity
                .verified_email()
                .and_then(|e| e.rsplit_once('@'))
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
            Self::HostedDomain(domain) => identity
                .hosted_domain
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(domain)),
            Self::Group(group) => identity.groups.iter().any(|g| g == group),
            Self::Claim(claim) => identity
                .claims
                .get(claim.name.as_str())
                .is_some_and(|values| values.iter().any(|v| claim.values.contains(v))),
        }
    }
}

impl Rule {
    fn applies(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method.as_str()))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    fn validate(&self, field: &str, problems: &mut Vec<Problem>) {
        let mut problem =
            |field: String, message: String| problems.push(Problem::new(field, message));
        if self.methods.is_empty() && self.paths.is_empty() {
            problem(
                field.to_owned(),
                "needs `methods` or `paths`; subjects for every request belong in the policy's `allow`"
                    .into(),
            );
        }
        let verdicts = [self.public, self.deny, !self.allow.is_empty()];
        if verdicts.iter().filter(|&&v| v).count() != 1 {
            problem(
                field.to_owned(),
                "needs exactly one of `public: true`, `deny: true` or a non-empty `allow`".into(),
            );
        }
        for (j, method) in self.methods.iter().enumerate() {
            if let Err(message) = check_method(method) {
                problem(format!("{field}.methods[{j}]"), message);
            }
        }
        for (j, path) in self.paths.iter().enumerate() {
            if let Err(message) = check_policy_path(&path.path) {
                problem(format!("{field}.paths[{j}].path"), message);
            }
        }
        check_subjects(&self.allow, &format!("{field}.allow"), problems);
    }
}

impl PolicyPath {
    fn matches(&self, path: &str) -> bool {
        match self.path_type {
            PathType::Exact => path == self.path,
            PathType::Prefix => prefix_matches(&self.path, path),
        }
    }
}

/// How a route is guarded: `public: true`, a named policy, or (with neither) no one passes.
#[derive(Debug, Clone)]
pub(crate) enum RouteAccess {
    Public,
    Policy(Arc<AccessPolicy>),
    DenyAll,
}

impl RouteAccess {
    /// Decides one request on a route; the same contract as [`AccessPolicy::decide`].
    pub(crate) fn decide(
        &self,
        identity: Option<&Identity>,
        method: &Method,
        normalized_path: &str,
        request_headers: &HeaderMap,
    ) -> Decision {
        match self {
            Self::Public => Decision::Allow {
                rule: RuleRef::PublicRoute,
            },
            Self::Policy(policy) => {
                policy.decide(identity, method, normalized_path, request_headers)
            }
            // Sign-in first, so that nothing about the route differs for the anonymous from a
            // route with a policy; then no one passes.
            Self::DenyAll if identity.is_none() => Decision::LoginRequired {
                rule: RuleRef::NoPolicy,
            },
            Self::DenyAll => Decision::Deny {
                rule: RuleRef::NoPolicy,
                reason: ROUTE_WITHOUT_POLICY,
            },
        }
    }
}

fn check_subjects(subjects: &[Subject], field: &str, problems: &mut Vec<Problem>) {
    for (i, subject) in subjects.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let (key, result) = match subject {
            Subject::Email(email) => ("email", check_email(email)),
            Subject::EmailDomain(domain) => ("email_domain", check_domain(domain)),
            Subject::HostedDomain(domain) => ("hosted_domain", check_domain(domain)),
            Subject::Group(group) if group.is_empty() => {
                ("group", Err("the group name is empty".to_owned()))
            }
            Subject::Group(_) => ("group", Ok(())),
            Subject::Claim(claim) => {
                if claim.name.is_empty() {
                    problems.push(Problem::new(
                        format!("{field}.claim.name"),
                        "the claim name is empty",
                    ));
                }
                let result = if claim.values.is_empty() {
                    Err("needs at least one value".to_owned())
                } else {
                    Ok(())
                };
                ("claim.values", result)
            }
        };
        if let Err(message) = result {
            problems.push(Problem::new(format!("{field}.{key}"), message));
        }
    }
}

fn check_email(email: &str) -> Result<(), String> {
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && is_dns_name(domain) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`{email}` is not an email address (one '@' between a name and a domain)"
        )),
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    if is_dns_name(domain) {
        Ok(())
    } else {
        Err(format!(
            "`{domain}` is not a domain name (write it without '@', wildcards or a leading dot)"
        ))
    }
}

fn check_method(method: &str) -> Result<(), String> {
    if Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
        return Err(format!("`{method}` is not an HTTP method"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "methods are case-sensitive: write `{}`",
            method.to_ascii_uppercase()
        ));
    }
    Ok(())
}

fn check_policy_path(path: &str) -> Result<(), String> {
    crate::routing::path::config_path(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const EXAMPLE: &str = "
policies:
  staff:
    allow:
      - email: alice@uniqe.example
      - email_domain: uniqe.example
      - hosted_domain: uniqe.example
      - group: admins
      - claim: {name: department, values: [eng, ops]}
    rules:
      - paths: [{path: /public, type: Prefix}]
        public: true
      - methods: [POST, DELETE]
        paths: [{path: /admin, type: Prefix}]
        allow: [{group: admins}]
      - paths: [{path: /internal, type: Exact}]
        deny: true
    cors_preflight: true
";

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        policies: BTreeMap<String, AccessPolicy>,
    }

    fn parse(text: &str) -> Result<BTreeMap<String, AccessPolicy>, String> {
        serde_yaml_ng::from_str::<Doc>(text)
            .map(|doc| doc.policies)
            .map_err(|e| e.to_string())
    }

    fn policy(yaml: &str) -> AccessPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn person(email: &str) -> Identity {
        Identity {
            subject: format!("sub-{email}"),
            email: Some(email.to_owned()),
            email_verified: true,
            ..Identity::default()
        }
    }

    fn unverified(email: &str) -> Identity {
        Identity {
            email_verified: false,
            ..person(email)
        }
    }

    fn with_groups(mut identity: Identity, groups: &[&str]) -> Identity {
        identity.groups = groups.iter().map(|g| g.to_string()).collect();
        identity
    }

    fn with_claim(mut identity: Identity, name: &str, values: &[&str]) -> Identity {
        let values = values.iter().map(|v| v.to_string()).collect();
        identity.claims.insert(name.to_owned(), values);
        identity
    }

    fn with_hd(mut identity: Identity, hd: &str) -> Identity {
        identity.hosted_domain = Some(hd.to_owned());
        identity
    }

    fn method(name: &str) -> Method {
        name.parse().unwrap()
    }

    fn preflight_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        headers
    }

    fn allow(rule: RuleRef) -> Decision {
        Decision::Allow { rule }
    }

    fn login(rule: RuleRef) -> Decision {
        Decision::LoginRequired { rule }
    }

    fn deny(rule: RuleRef, reason: &'static str) -> Decision {
        Decision::Deny { rule, reason }
    }

    fn subject(yaml: &str) -> Subject {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn subjects_match_the_identities_they_name_and_no_others() {
        let alice = person("alice@uniqe.example");
        let department = "claim: {name: department, values: [eng, ops]}";
        #[rustfmt::skip]
        let cases = [
            // Email: verified only, ASCII-case-insensitive.
            ("email: alice@uniqe.example", alice.clone(), true),
            ("email: ALICE@Uniqe.Example", alice.clone(), true),
            ("email: alice@uniqe.example", person("Alice@UNIQE.example"), true),
            ("email: alice@uniqe.example", unverified("alice@uniqe.example"), false),
            ("email: alice@uniqe.example", Identity::default(), false),
            ("email: alice@uniqe.example", person("bob@uniqe.example"), false),
            ("email: alice@uniqe.example", person("alice@uniqe.example.evil"), false),
            // Email domain: the part after the last '@', exactly.
            ("email_domain: uniqe.example", alice.clone(), true),
            ("email_domain: UNIQE.example", person("x@uniqe.EXAMPLE"), true),
            ("email_domain: uniqe.example", unverified("alice@uniqe.example"), false),
            ("email_domain: uniqe.example", person("m@evil-uniqe.example"), false),
            ("email_domain: uniqe.example", person("m@uniqe.example.evil"), false),
            ("email_domain: uniqe.example", person("m@sub.uniqe.example"), false),
            ("email_domain: uniqe.example", person("m@xuniqe.example"), false),
            ("email_domain: uniqe.example", person("uniqe.example@evil.example"), false),
            ("email_domain: uniqe.example", person("a@uniqe.example@evil.example"), false),
            ("email_domain: uniqe.example", person("uniqe.example"), false),
            ("email_domain: uniqe.example", person("\"a@evil.example\"@uniqe.example"), true),
            ("email_domain: example", alice.clone(), false),
            // Hosted domain: Google's `hd`, exactly, independent of the email.
            ("hosted_domain: uniqe.example", with_hd(Identity::default(), "uniqe.example"), true),
            ("hosted_domain: uniqe.example", with_hd(Identity::default(), "Uniqe.Example"), true),
            ("hosted_domain: uniqe.example", alice.clone(), false),
            ("hosted_domain: uniqe.example", with_hd(Identity::default(), "evil-uniqe.example"), false),
            ("hosted_domain: uniqe.example", with_hd(Identity::default(), "sub.uniqe.example"), false),
            // Groups: exact and case-sensitive.
            ("group: admins", with_groups(alice.clone(), &["staff", "admins"]), true),
            ("group: admins", with_groups(alice.clone(), &["Admins"]), false),
            ("group: admins", with_groups(alice.clone(), &["admin", "admins-x"]), false),
            ("group: admins", alice.clone(), false),
            // Claims: any listed value, exact and case-sensitive.
            (department, with_claim(Identity::default(), "department", &["ops"]), true),
            (department, with_claim(Identity::default(), "department", &["sales", "eng"]), true),
            (department, with_claim(Identity::default(), "department", &["Eng"]), false),
            (department, with_claim(Identity::default(), "Department", &["eng"]), false),
            (department, with_claim(Identity::default(), "team", &["eng"]), false),
            (department, with_claim(Identity::default(), "department", &[]), false),
        ];
        for (yaml, identity, expected) in cases {
            assert_eq!(
                subject(yaml).matches(&identity),
                expected,
                "{yaml} vs {identity:?}"
            );
        }
    }

    #[test]
    fn rules_decide_in_order_and_the_allow_list_decides_the_rest() {
        let policy = policy(
            "
allow: [{email_domain: uniqe.example}]
rules:
  - paths: [{path: /public, type: Prefix}]
    public: true
  - methods: [POST, DELETE]
    paths: [{path: /admin, type: Prefix}]
    allow: [{group: admins}]
  - paths: [{path: /internal, type: Exact}]
    deny: true
  - methods: [PUT]
    allow: [{email: carol@partner.example}]
  - paths: [{path: /a, type: Prefix}]
    deny: true
  - paths: [{path: /a/b, type: Prefix}]
    public: true
",
        );
        let staff = person("bob@uniqe.example");
        let admin = with_groups(person("root@uniqe.example"), &["admins"]);
        let partner_admin = with_groups(person("pat@partner.example"), &["admins"]);
        let carol = person("carol@partner.example");
        let mallory = person("mallory@evil.example");
        use RuleRef::{Allow, DefaultDeny, Rule};
        #[rustfmt::skip]
        let cases = [
            (None, "GET", "/public", allow(Rule(0))),
            (None, "GET", "/public/x/y", allow(Rule(0))),
            (None, "POST", "/public/", allow(Rule(0))),
            (Some(&mallory), "GET", "/public", allow(Rule(0))),
            (None, "GET", "/publicity", login(Allow)),
            (None, "POST", "/admin", login(Rule(1))),
            (Some(&staff), "POST", "/admin/users", deny(Rule(1), NO_SUBJECT_IN_RULE)),
            (Some(&admin), "POST", "/admin", allow(Rule(1))),
            (Some(&admin), "DELETE", "/admin/x", allow(Rule(1))),
            (Some(&partner_admin), "POST", "/admin", allow(Rule(1))),
            (Some(&partner_admin), "GET", "/admin", deny(DefaultDeny, NO_SUBJECT_IN_ALLOW)),
            (Some(&staff), "GET", "/admin", allow(Allow)),
            (Some(&staff), "PATCH", "/admin", allow(Allow)),
            (Some(&staff), "POST", "/administration", allow(Allow)),
            (Some(&staff), "post", "/admin", allow(Allow)),
            (Some(&staff), "GET", "/internal", deny(Rule(2), DENY_RULE)),
            (Some(&admin), "DELETE", "/internal", deny(Rule(2), DENY_RULE)),
            (None, "GET", "/internal", deny(Rule(2), DENY_RULE)),
            (Some(&staff), "GET", "/internal/x", allow(Allow)),
            (Some(&staff), "GET", "/internal/", allow(Allow)),
            (Some(&carol), "PUT", "/anything", allow(Rule(3))),
            (Some(&staff), "PUT", "/anything", deny(Rule(3), NO_SUBJECT_IN_RULE)),
            (None, "PUT", "/x", login(Rule(3))),
            (Some(&carol), "GET", "/anything", deny(DefaultDeny, NO_SUBJECT_IN_ALLOW)),
            (Some(&staff), "GET", "/a/b", deny(Rule(4), DENY_RULE)),
            (None, "GET", "/a/b/c", deny(Rule(4), DENY_RULE)),
            (Some(&staff), "GET", "/", allow(Allow)),
            (Some(&mallory), "GET", "/", deny(DefaultDeny, NO_SUBJECT_IN_ALLOW)),
            (None, "GET", "/", login(Allow)),
        ];
        let headers = HeaderMap::new();
        for (identity, m, path, expected) in cases {
            let got = policy.decide(identity, &method(m), path, &headers);
            assert_eq!(got, expected, "{m} {path} as {identity:?}");
        }
    }

    #[test]
    fn a_policy_that_allows_no_one_denies_everyone_and_asks_no_one_to_log_in() {
        let admin = with_groups(person("root@uniqe.example"), &["admins"]);
        let policies = [
            AccessPolicy::default(),
            policy("cors_preflight: true"),
            policy("rules: [{paths: [{path: /x}], allow: [{group: admins}]}]"),
        ];
        let headers = preflight_headers();
        for policy in &policies {
            for identity in [None, Some(&admin)] {
                for m in ["GET", "OPTIONS"] {
                    let got = policy.decide(identity, &method(m), "/", &headers);
                    let expected = deny(RuleRef::DefaultDeny, POLICY_ALLOWS_NO_ONE);
                    assert_eq!(got, expected, "{policy:?} {m} as {identity:?}");
                }
            }
        }
    }

    #[test]
    fn a_rule_without_a_verdict_fails_closed() {
        // Validation rejects these; decide must still not let anyone through.
        let admin = with_groups(person("root@uniqe.example"), &["admins"]);
        let no_verdict = AccessPolicy {
            allow: vec![Subject::Group("admins".into())],
            rules: vec![Rule {
                methods: vec!["GET".into()],
                ..Rule::default()
            }],
            cors_preflight: false,
            identity_headers: None,
        };
        let both = AccessPolicy {
            rules: vec![Rule {
                methods: vec!["GET".into()],
                public: true,
                deny: true,
                ..Rule::default()
            }],
            ..no_verdict.clone()
        };
        let headers = HeaderMap::new();
        for identity in [None, Some(&admin)] {
            assert_eq!(
                no_verdict.decide(identity, &Method::GET, "/", &headers),
                deny(RuleRef::Rule(0), RULE_ALLOWS_NO_ONE)
            );
            assert_eq!(
                both.decide(identity, &Method::GET, "/", &headers),
                deny(RuleRef::Rule(0), DENY_RULE)
            );
        }
    }

    #[test]
    fn cors_preflights_pass_without_login_only_when_enabled_and_well_formed() {
        let with_cors = policy(
            "
allow: [{email_domain: uniqe.example}]
cors_preflight: true
rules:
  - paths: [{path: /internal}]
    deny: true
  - paths: [{path: /admin}]
    allow: [{group: admins}]
",
        );
        let without_cors = AccessPolicy {
            cors_preflight: false,
            ..with_cors.clone()
        };
        let both = preflight_headers();
        let mut origin_only = both.clone();
        origin_only.remove(header::ACCESS_CONTROL_REQUEST_METHOD);
        let mut request_method_only = both.clone();
        request_method_only.remove(header::ORIGIN);
        let none = HeaderMap::new();
        let mallory = person("mallory@evil.example");
        let staff = person("bob@uniqe.example");
        use RuleRef::{Allow, CorsPreflight, DefaultDeny, Rule};
        #[rustfmt::skip]
        let cases = [
            (&with_cors, None, "OPTIONS", "/x", &both, allow(CorsPreflight)),
            (&with_cors, None, "OPTIONS", "/admin/x", &both, allow(CorsPreflight)),
            (&with_cors, None, "OPTIONS", "/x", &origin_only, login(Allow)),
            (&with_cors, None, "OPTIONS", "/x", &request_method_only, login(Allow)),
            (&with_cors, None, "OPTIONS", "/x", &none, login(Allow)),
            (&with_cors, None, "GET", "/x", &both, login(Allow)),
            (&with_cors, None, "POST", "/x", &both, login(Allow)),
            (&with_cors, None, "OPTIONS", "/internal", &both, deny(Rule(0), DENY_RULE)),
            (&with_cors, Some(&mallory), "OPTIONS", "/x", &both, deny(DefaultDeny, NO_SUBJECT_IN_ALLOW)),
            (&with_cors, Some(&staff), "OPTIONS", "/x", &both, allow(Allow)),
            (&without_cors, None, "OPTIONS", "/x", &both, login(Allow)),
        ];
        for (policy, identity, m, path, headers, expected) in cases {
            let got = policy.decide(identity, &method(m), path, headers);
            assert_eq!(
                got, expected,
                "{m} {path} cors={} as {identity:?} with {headers:?}",
                policy.cors_preflight
            );
        }
    }

    #[test]
    fn route_access_is_public_a_policy_or_no_one() {
        let admin = with_groups(person("root@uniqe.example"), &["admins"]);
        let staff = Arc::new(policy("allow: [{group: admins}]"));
        let headers = preflight_headers();
        #[rustfmt::skip]
        let cases = [
            (RouteAccess::Public, None, allow(RuleRef::PublicRoute)),
            (RouteAccess::Public, Some(&admin), allow(RuleRef::PublicRoute)),
            (RouteAccess::DenyAll, None, Decision::LoginRequired { rule: RuleRef::NoPolicy }),
            (RouteAccess::DenyAll, Some(&admin), deny(RuleRef::NoPolicy, ROUTE_WITHOUT_POLICY)),
            (RouteAccess::Policy(staff.clone()), None, login(RuleRef::Allow)),
            (RouteAccess::Policy(staff), Some(&admin), allow(RuleRef::Allow)),
        ];
        for (access, identity, expected) in cases {
            for m in [Method::GET, Method::OPTIONS] {
                let got = access.decide(identity, &m, "/", &headers);
                assert_eq!(got, expected, "{access:?} {m} as {identity:?}");
            }
        }
    }

    #[test]
    fn decisions_name_the_rule_for_the_log() {
        let cases = [
            (RuleRef::Rule(1), "rules[1]"),
            (RuleRef::Allow, "allow"),
            (RuleRef::CorsPreflight, "cors_preflight"),
            (RuleRef::DefaultDeny, "default_deny"),
            (RuleRef::PublicRoute, "public_route"),
            (RuleRef::NoPolicy, "no_policy"),
        ];
        for (rule, text) in cases {
            assert_eq!(rule.to_string(), text);
        }
        let decision = deny(RuleRef::Rule(2), DENY_RULE);
        assert_eq!(decision.rule(), RuleRef::Rule(2));
        assert!(!decision.is_allowed());
        assert!(allow(RuleRef::Allow).is_allowed());
        assert!(!login(RuleRef::Allow).is_allowed());
    }

    #[test]
    fn the_documented_example_parses_and_validates() {
        let policies = parse(EXAMPLE).unwrap();
        let problems = validate_policies(&policies);
        assert!(problems.is_empty(), "{problems:?}");
        let staff = &policies["staff"];
        assert_eq!(
            staff.allow,
            [
                Subject::Email("alice@uniqe.example".into()),
                Subject::EmailDomain("uniqe.example".into()),
                Subject::HostedDomain("uniqe.example".into()),
                Subject::Group("admins".into()),
                Subject::Claim(ClaimMatch {
                    name: "department".into(),
                    values: vec!["eng".into(), "ops".into()],
                }),
            ]
        );
        assert_eq!(staff.rules.len(), 3);
        assert_eq!(staff.rules[1].methods, ["POST", "DELETE"]);
        assert_eq!(
            staff.rules[2].paths,
            [PolicyPath {
                path: "/internal".into(),
                path_type: PathType::Exact
            }]
        );
        assert!(staff.rules[0].public && staff.rules[2].deny && staff.cors_preflight);
        let defaulted = policy("rules: [{paths: [{path: /p}], public: true}]");
        assert_eq!(defaulted.rules[0].paths[0].path_type, PathType::Prefix);
        assert!(!defaulted.cors_preflight && defaulted.allow.is_empty());
    }

    #[test]
    fn unknown_fields_and_malformed_subjects_are_parse_errors() {
        let cases = [
            (
                "cors_preflight: true",
                "cors_prefligt: true",
                "unknown field `cors_prefligt`",
            ),
            (
                "deny: true",
                "deny: true\n        why: x",
                "unknown field `why`",
            ),
            (
                "type: Exact}]",
                "type: Exact, kind: x}]",
                "unknown field `kind`",
            ),
            ("type: Exact}]", "type: exact}]", "unknown variant `exact`"),
            (
                "- group: admins",
                "- groop: admins",
                "unknown field `groop`",
            ),
            (
                "- group: admins",
                "- {group: admins, email: a@b.c}",
                "exactly one of",
            ),
            ("- group: admins", "- {}", "exactly one of"),
            ("- group: admins", "- admins", "invalid type"),
            (
                "values: [eng, ops]}",
                "values: [eng, ops], regex: x}",
                "unknown field `regex`",
            ),
            (
                "allow: [{group: admins}]",
                "allow: {group: admins}",
                "invalid type",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(EXAMPLE.contains(from), "{from}");
            let text = EXAMPLE.replacen(from, to, 1);
            let message = parse(&text).unwrap_err();
            assert!(message.contains(expected), "{to}: {message}");
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let policies = parse(
            "
policies:
  Bad Name:
    allow:
      - email: alice
      - email: a@b@uniqe.example
      - email: '@uniqe.example'
      - email_domain: '@uniqe.example'
      - email_domain: '*.uniqe.example'
      - hosted_domain: .uniqe.example
      - group: ''
      - claim: {name: '', values: []}
  ok:
    rules:
      - public: true
      - paths: [{path: /a}]
      - paths: [{path: /b}]
        public: true
        deny: true
      - methods: [GET, post, 'BAD METHOD', '']
        paths:
          - {path: relative}
          - {path: /a/../b}
          - {path: '/a//b'}
          - {path: '/a;b'}
          - {path: /a%2fb}
          - {path: /a?x=1}
          - {path: /fine/}
        allow: [{email: nobody}]
",
        )
        .unwrap();
        let problems = validate_policies(&policies);
        let got: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.message.as_str()))
            .collect();
        #[rustfmt::skip]
        let expected = [
            ("policies.Bad Name", "names use lowercase letters, digits, '-', '_' and '.'"),
            ("policies.Bad Name.allow[0].email", "`alice` is not an email address (one '@' between a name and a domain)"),
            ("policies.Bad Name.allow[1].email", "`a@b@uniqe.example` is not an email address (one '@' between a name and a domain)"),
            ("policies.Bad Name.allow[2].email", "`@uniqe.example` is not an email address (one '@' between a name and a domain)"),
            ("policies.Bad Name.allow[3].email_domain", "`@uniqe.example` is not a domain name (write it without '@', wildcards or a leading dot)"),
            ("policies.Bad Name.allow[4].email_domain", "`*.uniqe.example` is not a domain name (write it without '@', wildcards or a leading dot)"),
            ("policies.Bad Name.allow[5].hosted_domain", "`.uniqe.example` is not a domain name (write it without '@', wildcards or a leading dot)"),
            ("policies.Bad Name.allow[6].group", "the group name is empty"),
            ("policies.Bad Name.allow[7].claim.name", "the claim name is empty"),
            ("policies.Bad Name.allow[7].claim.values", "needs at least one value"),
            ("policies.ok.rules[0]", "needs `methods` or `paths`; subjects for every request belong in the policy's `allow`"),
            ("policies.ok.rules[1]", "needs exactly one of `public: true`, `deny: true` or a non-empty `allow`"),
            ("policies.ok.rules[2]", "needs exactly one of `public: true`, `deny: true` or a non-empty `allow`"),
            ("policies.ok.rules[3].methods[1]", "methods are case-sensitive: write `POST`"),
            ("policies.ok.rules[3].methods[2]", "`BAD METHOD` is not an HTTP method"),
            ("policies.ok.rules[3].methods[3]", "`` is not an HTTP method"),
            ("policies.ok.rules[3].paths[0].path", "`relative` must start with '/'"),
            ("policies.ok.rules[3].paths[1].path", "`/a/../b` is not normalised; write `/b`"),
            ("policies.ok.rules[3].paths[2].path", "`/a//b` is not normalised; write `/a/b`"),
            ("policies.ok.rules[3].paths[3].path", "`/a;b`: path parameters (';') do not take part in matching; leave them out"),
            ("policies.ok.rules[3].paths[4].path", "`/a%2fb`: the request path percent-encodes '/', which servers read differently"),
            ("policies.ok.rules[3].paths[5].path", "`/a?x=1`: a path cannot hold a query or a fragment"),
            ("policies.ok.rules[3].allow[0].email", "`nobody` is not an email address (one '@' between a name and a domain)"),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn identity_header_names_are_checked_field_by_field() {
        let policies = parse(
            "
policies:
  grafana:
    allow: [{group: staff}]
    identity_headers: {user: X-WEBAUTH-USER, email: X-WEBAUTH-EMAIL, groups: X-WEBAUTH-GROUPS}
  partly:
    identity_headers: {user: Remote-Person}
  odd:
    identity_headers: {user: X_WEBAUTH_USER, email: Cookie, groups: X-Sekisho-Groups}
  forwarding:
    identity_headers: {user: x-forwarded-for, email: Host, groups: Transfer-Encoding}
  twice:
    identity_headers: {user: X-Person, email: x-person}
  default_twice:
    identity_headers: {groups: X-Forwarded-User}
",
        )
        .unwrap();
        let problems = validate_policies(&policies);
        let got: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.message.as_str()))
            .collect();
        let reserved = "is reserved: hop-by-hop, framing, credential, forwarding and X-Sekisho-* headers cannot carry an identity";
        #[rustfmt::skip]
        let expected = [
            ("policies.default_twice.identity_headers.groups", "`X-Forwarded-User` already carries the user: give each its own header".to_owned()),
            ("policies.forwarding.identity_headers.user", format!("`x-forwarded-for` {reserved}")),
            ("policies.forwarding.identity_headers.email", format!("`Host` {reserved}")),
            ("policies.forwarding.identity_headers.groups", format!("`Transfer-Encoding` {reserved}")),
            ("policies.odd.identity_headers.user", "`X_WEBAUTH_USER` is not a header name for an identity: letters, digits and '-' (not first or last), at most 128 characters".to_owned()),
            ("policies.odd.identity_headers.email", format!("`Cookie` {reserved}")),
            ("policies.odd.identity_headers.groups", format!("`X-Sekisho-Groups` {reserved}")),
            ("policies.twice.identity_headers.email", "`x-person` already carries the user: give each its own header".to_owned()),
        ];
        let expected: Vec<(&str, &str)> = expected.iter().map(|(f, m)| (*f, m.as_str())).collect();
        assert_eq!(got, expected);

        let names = policies["grafana"].identity_header_names();
        assert_eq!(
            [
                names.user.as_str(),
                names.email.as_str(),
                names.groups.as_str()
            ],
            ["x-webauth-user", "x-webauth-email", "x-webauth-groups"]
        );
        let names = policies["partly"].identity_header_names();
        assert_eq!(
            [
                names.user.as_str(),
                names.email.as_str(),
                names.groups.as_str()
            ],
            ["remote-person", "x-forwarded-email", "x-forwarded-groups"]
        );
        assert!(parse("policies: {p: {identity_headers: {name: X-Name}}}").is_err());
    }

    #[test]
    fn claims_flatten_to_the_strings_a_policy_compares() {
        use serde_json::json;
        let cases = [
            (json!("eng"), vec!["eng"]),
            (json!(["eng", "ops"]), vec!["eng", "ops"]),
            (json!(true), vec!["true"]),
            (json!(42), vec!["42"]),
            (json!(["a", 1, null, {"x": 1}, ["nested"]]), vec!["a", "1"]),
            (json!(null), vec![]),
            (json!({"x": "y"}), vec![]),
        ];
        for (value, expected) in cases {
            assert_eq!(claim_values(&value), expected, "{value}");
        }
    }
}
