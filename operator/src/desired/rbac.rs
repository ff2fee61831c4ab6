//! The proxy's ServiceAccount permissions: the ClusterRole of
//! `deploy/kubernetes/proxy-clusterrole.yaml` (the one file that says what the proxy needs),
//! bound cluster-wide, and its Lease Role, bound in the Proxy's namespace.

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::object::{Child, Kind, Names, child};

const PROXY_RBAC: &str = include_str!("../../../deploy/kubernetes/proxy-clusterrole.yaml");

/// The rules of the file's ClusterRole and of its Role.
static RULES: LazyLock<(Value, Value)> = LazyLock::new(|| {
    let mut cluster = Value::Null;
    let mut lease = Value::Null;
    for document in serde_yaml_ng::Deserializer::from_str(PROXY_RBAC) {
        let object: Value = serde::Deserialize::deserialize(document)
            .expect("deploy/kubernetes/proxy-clusterrole.yaml is YAML (a unit test reads it)");
        match object["kind"].as_str() {
            Some("ClusterRole") => cluster = object["rules"].clone(),
            Some("Role") => lease = object["rules"].clone(),
            _ => {}
        }
    }
    (cluster, lease)
});

pub(super) fn children(names: &Names) -> Vec<Child> {
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": names.name,
        "namespace": names.namespace,
    }]);
    let lease = names.suffixed("lease");
    vec![
        child(
            names,
            Kind::ClusterRole,
            names.cluster_role(),
            json!({"rules": RULES.0}),
        ),
        child(
            names,
            Kind::ClusterRoleBinding,
            names.cluster_role(),
            json!({
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": names.cluster_role(),
                },
                "subjects": subject,
            }),
        ),
        child(names, Kind::Role, lease.clone(), json!({"rules": RULES.1})),
        child(
            names,
            Kind::RoleBinding,
            lease.clone(),
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": lease},
                "subjects": subject,
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_come_from_the_proxys_rbac_file() {
        let (cluster, lease) = &*RULES;
        assert!(cluster.as_array().is_some_and(|r| r.len() > 3), "{cluster}");
        assert_eq!(lease[0]["resources"], json!(["leases"]));
    }
}
