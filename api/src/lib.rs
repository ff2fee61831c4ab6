//! `sekisho-api`: Sekisho's Kubernetes custom resources (group `sekisho.dev`, version
//! `v1alpha1`) as Rust types, the CustomResourceDefinitions generated from them ([`crd`]) and
//! the status-condition logic their readers share ([`condition`]). The proxy reads these
//! objects and reports on them; the operator deploys gates from [`Proxy`] objects; both depend
//! on this crate.
//!
//! Types and pure functions only: no API client, no I/O. It must not depend on the proxy, the
//! agent, the CLI or the operator (they depend on it), and nothing of how a request is served
//! belongs here. Field documentation is part of the API: it becomes the CRD's descriptions,
//! which `kubectl explain` shows.
//!
//! | kind | scope | what it says |
//! |---|---|---|
//! | [`AccessPolicy`], [`ClusterAccessPolicy`] | namespace, cluster | who may pass, per method and path ([`AccessPolicySpec`]) |
//! | [`Agent`] | namespace | an agent's public keys and the targets it may be asked to dial |
//! | [`Tunnel`] | namespace | a host that `sekisho tunnel` reaches: target, agent, policy |
//! | [`IngressClassParameters`] | cluster | an IngressClass's defaults: its default access policy |
//! | [`SharedHost`] | cluster | namespaces allowed on a host besides the one that claimed it first |
//! | [`Proxy`] | namespace | a gate the operator deploys: replicas, domain, providers, certificate, keys |
//! | [`GitHubWebhook`] | namespace | GitHub repositories whose webhooks the operator points at a route |
//! | [`Revocation`] | namespace | sessions that end on every replica before they expire (sign-outs, logouts) |
//!
//! The schemas refuse what they can say (required fields, patterns, CEL rules); what they
//! cannot (a policy that does not exist, a path that is not in normal form, two Tunnels
//! for one host) is for the reader to report in the object's status and Events, with the
//! rest of what it serves unchanged.

mod agent;
pub mod condition;
pub mod crd;
mod github;
mod host;
mod ingress_class;
mod policy;
mod proxy;
mod revocation;
mod schema;
mod status;
mod tunnel;

pub use agent::{Agent, AgentSpec, AgentStatus};
pub use github::{
    AppSecretRef, GITHUB_API_URL, GitHubApp, GitHubHook, GitHubWebhook, GitHubWebhookSpec,
    GitHubWebhookStatus, WebhookSecretRef,
};
pub use host::{SharedHost, SharedHostSpec};
pub use ingress_class::{IngressClassParameters, IngressClassParametersSpec};
pub use policy::{
    AccessPolicy, AccessPolicySpec, ClaimMatch, ClusterAccessPolicy, ClusterAccessPolicySpec,
    IdentityHeaders, PUBLIC_POLICY, PathType, PolicyPath, Rule, Subject,
};
pub use proxy::{
    CertificateSpec, IdentityProvider, IngressClassSpec, IpFamilyPolicy, IssuerKind, IssuerRef,
    KeysSpec, KeysStatus, MonitoringSpec, NetworkPolicySpec, ProviderKind, Proxy, ProxySpec,
    ProxyStatus, SecretKeyRef, ServiceSpec, ServiceType,
};
pub use revocation::{Revocation, RevocationSpec, RevokedSubject};
pub use status::ObservedStatus;
pub use tunnel::{Tunnel, TunnelSpec};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    use kube::CustomResourceExt;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/crds");

    /// Every example: its file name and its object.
    fn examples() -> Vec<(String, Value)> {
        let mut examples = Vec::new();
        for entry in std::fs::read_dir(EXAMPLES).expect("deploy/examples/crds is readable") {
            let path = entry.expect("a directory entry").path();
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).expect("a readable example");
            let value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            examples.push((name, value));
        }
        examples.sort_by(|a, b| a.0.cmp(&b.0));
        examples
    }

    /// Fails unless everything in `written` is in `read` too: a field the type does not know
    /// would be dropped here, as the API server prunes it.
    fn assert_kept(written: &Value, read: &Value, at: &str) {
        match (written, read) {
            (Value::Object(written), Value::Object(read)) => {
                for (key, value) in written {
                    let child = format!("{at}.{key}");
                    let kept = read
                        .get(key)
                        .unwrap_or_else(|| panic!("{child} was dropped"));
                    assert_kept(value, kept, &child);
                }
            }
            (Value::Array(written), Value::Array(read)) => {
                assert_eq!(written.len(), read.len(), "{at}");
                for (i, (w, r)) in written.iter().zip(read).enumerate() {
                    assert_kept(w, r, &format!("{at}[{i}]"));
                }
            }
            _ => assert_eq!(written, read, "{at}"),
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &Value) {
        let typed: T =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let written = serde_json::to_value(&typed).expect("serialises");
        assert_kept(value, &written, name);
        let again: T = serde_json::from_value(written).expect("reads what it wrote");
        assert_eq!(typed, again, "{name}");
    }

    #[test]
    fn every_example_round_trips_through_its_type_without_losing_a_field() {
        let examples = examples();
        assert!(!examples.is_empty(), "no examples in {EXAMPLES}");
        for (name, value) in &examples {
            match value["kind"].as_str() {
                Some("AccessPolicy") => round_trip::<AccessPolicy>(name, value),
                Some("ClusterAccessPolicy") => round_trip::<ClusterAccessPolicy>(name, value),
                Some("Agent") => round_trip::<Agent>(name, value),
                Some("Tunnel") => round_trip::<Tunnel>(name, value),
                Some("IngressClassParameters") => round_trip::<IngressClassParameters>(name, value),
                Some("SharedHost") => round_trip::<SharedHost>(name, value),
                Some("Proxy") => round_trip::<Proxy>(name, value),
                Some("GitHubWebhook") => round_trip::<GitHubWebhook>(name, value),
                Some("Revocation") => round_trip::<Revocation>(name, value),
                other => panic!("{name}: no type for kind {other:?}"),
            }
        }
    }

    #[test]
    fn every_kind_has_an_example() {
        let shown: BTreeSet<String> = examples()
            .iter()
            .filter_map(|(_, v)| v["kind"].as_str().map(str::to_owned))
            .collect();
        let kinds: BTreeSet<String> = crd::all().into_iter().map(|c| c.spec.names.kind).collect();
        assert_eq!(shown, kinds);
    }

    #[test]
    fn a_cluster_access_policy_is_written_like_an_access_policy() {
        let spec = AccessPolicySpec {
            allow: vec![Subject {
                group: Some("staff".into()),
                ..Subject::default()
            }],
            cors_preflight: true,
            ..AccessPolicySpec::default()
        };
        let namespaced = serde_json::to_value(AccessPolicy::new("p", spec.clone())).expect("json");
        let cluster =
            serde_json::to_value(ClusterAccessPolicy::new("p", ClusterAccessPolicySpec(spec)))
                .expect("json");
        assert_eq!(namespaced["spec"], cluster["spec"]);
        assert_eq!(
            namespaced["spec"],
            serde_json::json!({"allow": [{"group": "staff"}], "corsPreflight": true})
        );
        let schema = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            serde_json::to_value(&crd.spec.versions[0].schema).expect("json")["openAPIV3Schema"]["properties"]["spec"]["properties"].clone()
        };
        assert_eq!(
            schema(AccessPolicy::crd()),
            schema(ClusterAccessPolicy::crd())
        );
    }

    #[test]
    fn unset_fields_are_left_out_and_the_path_type_defaults_to_prefix() {
        let rule: Rule =
            serde_json::from_value(serde_json::json!({"paths": [{"path": "/a"}], "deny": true}))
                .expect("a rule");
        assert_eq!(rule.paths[0].path_type, PathType::Prefix);
        assert!(!rule.public && rule.methods.is_empty() && rule.allow.is_empty());
        assert_eq!(
            serde_json::to_value(&rule).expect("json"),
            serde_json::json!({"paths": [{"path": "/a", "type": "Prefix"}], "deny": true})
        );
        assert_eq!(
            serde_json::to_value(ObservedStatus::default()).expect("json"),
            serde_json::json!({})
        );
    }

    #[test]
    fn the_tunnel_policy_rule_refuses_exactly_the_public_literal() {
        let crd = serde_json::to_value(Tunnel::crd()).expect("json");
        let rule = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["policy"]["x-kubernetes-validations"][0]["rule"];
        assert_eq!(rule, &Value::String(format!("self != '{PUBLIC_POLICY}'")));
    }
}
