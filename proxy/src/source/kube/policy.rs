//! Sekisho's AccessPolicy and ClusterAccessPolicy objects as the proxy's [`AccessPolicy`]:
//! the same model the file's `policies:` section has, checked by the same validation, with
//! rule paths put in the normal form requests are decided on. Pure.

use sekisho_api::AccessPolicySpec;

use crate::config::problem::Problem;
use crate::policy::{AccessPolicy, ClaimMatch, IdentityHeaders, PolicyPath, Rule, Subject};
use crate::routing::path::config_path;
use crate::routing::table::PathType;

/// The policy an object's spec says, or every problem with it (the schema refuses most of them
/// before they reach the proxy; these are what it cannot say).
pub(crate) fn access_policy(spec: &AccessPolicySpec) -> Result<AccessPolicy, Vec<Problem>> {
    let mut problems = Vec::new();
    let allow = subjects(&spec.allow, "spec.allow", &mut problems);
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = format!("spec.rules[{i}]");
            let paths = rule
                .paths
                .iter()
                .map(|path| PolicyPath {
                    // A path not in normal form stays as written: validation below reports
                    // it, and the policy is not used.
                    path: config_path(&path.path).unwrap_or_else(|_| path.path.clone()),
                    path_type: match path.path_type {
                        sekisho_api::PathType::Prefix => PathType::Prefix,
                        sekisho_api::PathType::Exact => PathType::Exact,
                    },
                })
                .collect();
            Rule {
                methods: rule.methods.clone(),
                paths,
                public: rule.public,
                deny: rule.deny,
                allow: subjects(&rule.allow, &format!("{field}.allow"), &mut problems),
            }
        })
        .collect();
    let policy = AccessPolicy {
        allow,
        rules,
        cors_preflight: spec.cors_preflight,
        identity_headers: spec
            .identity_headers
            .as_ref()
            .map(|headers| IdentityHeaders {
                user: headers.user.clone(),
                email: headers.email.clone(),
                groups: headers.groups.clone(),
            }),
    };
    problems.extend(policy.validate("spec"));
    // The object's fields are camelCase where the file's are snake_case.
    for problem in &mut problems {
        problem.field = problem
            .field
            .replace("identity_headers", "identityHeaders")
            .replace("cors_preflight", "corsPreflight");
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems)
    }
}

fn subjects(
    list: &[sekisho_api::Subject],
    field: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Subject> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let mut found = [
                s.email.clone().map(Subject::Email),
                s.email_domain.clone().map(Subject::EmailDomain),
                s.hosted_domain.clone().map(Subject::HostedDomain),
                s.group.clone().map(Subject::Group),
                s.claim.as_ref().map(|c| {
                    Subject::Claim(ClaimMatch {
                        name: c.name.clone(),
                        values: c.values.clone(),
                    })
                }),
            ]
            .into_iter()
            .flatten();
            match (found.next(), found.next()) {
                (Some(subject), None) => Some(subject),
                _ => {
                    problems.push(Problem::new(
                        format!("{field}[{i}]"),
                        "needs exactly one of email, emailDomain, hostedDomain, group or claim",
                    ));
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> AccessPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_policy_object_decides_as_the_same_policy_in_the_file_does() {
        let object = access_policy(&spec(
            "
allow: [{group: staff}, {emailDomain: uniqe.example}]
corsPreflight: true
rules:
  - {paths: [{path: /public/x/, type: Prefix}], public: true}
  - {methods: [DELETE], deny: true}
  - {paths: [{path: /admin, type: Exact}], allow: [{claim: {name: role, values: [admin]}}]}
",
        ))
        .unwrap();
        let file: AccessPolicy = serde_yaml_ng::from_str(
            "
allow: [{group: staff}, {email_domain: uniqe.example}]
cors_preflight: true
rules:
  - {paths: [{path: /public/x/, type: Prefix}], public: true}
  - {methods: [DELETE], deny: true}
  - {paths: [{path: /admin, type: Exact}], allow: [{claim: {name: role, values: [admin]}}]}
",
        )
        .unwrap();
        assert_eq!(object, file);
    }

    #[test]
    fn what_the_schema_cannot_refuse_is_reported_with_its_field() {
        let problems = access_policy(&spec(
            "
allow: [{group: staff, email: a@b.example}, {}]
rules:
  - {paths: [{path: '/a/%2e%2e/b'}], public: true}
  - {methods: [GET], public: true, deny: true}
",
        ))
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.allow[0]",
                "spec.allow[1]",
                "spec.rules[0].paths[0].path",
                "spec.rules[1]"
            ],
            "{problems:?}"
        );
    }
}
