//! The children of a few Proxies: golden files of the whole output (`operator/tests/golden/`,
//! rewritten with `SEKISHO_UPDATE_GOLDEN=1 cargo test -p sekisho-operator --lib`), and the
//! properties that must hold whatever the spec.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use sekisho_api::Proxy;
use serde_json::{Value, json};

use super::*;
use crate::keys::{KeyPair, Phase, Ring};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn proxy(spec: Value) -> Proxy {
    let mut proxy: Proxy = serde_json::from_value(json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "Proxy",
        "metadata": {"name": "gate", "namespace": "sekisho-system", "uid": "0000-1111", "generation": 1},
        "spec": spec,
    }))
    .expect("a Proxy");
    proxy.metadata.namespace = Some("sekisho-system".into());
    proxy
}

fn minimal() -> Proxy {
    proxy(json!({
        "domain": "example.org",
        "identityProviders": [{"name": "google", "kind": "google", "clientId": "c", "clientSecretRef": {"name": "google-oidc"}}],
    }))
}

/// The example in deploy/examples/crds, which the docs show.
fn example() -> Proxy {
    let text = include_str!("../../../deploy/examples/crds/proxy-gate.yaml");
    let mut value: Value = serde_yaml_ng::from_str(text).expect("YAML");
    value["metadata"]["namespace"] = json!("sekisho-system");
    value["metadata"]["uid"] = json!("0000-1111");
    value["metadata"]["generation"] = json!(3);
    serde_json::from_value(value).expect("a Proxy")
}

fn world(cert_manager: bool, service_monitors: bool) -> World {
    World {
        cert_manager,
        service_monitors,
        keys: Ring {
            current: KeyPair {
                session: "1:session-key-one".into(),
                signing:
                    "-----BEGIN PRIVATE KEY-----\nsigning-key-one\n-----END PRIVATE KEY-----\n"
                        .into(),
            },
            other: None,
            phase: Phase::Stable,
            rotation: None,
            since: Timestamp::UNIX_EPOCH,
        },
        client_secrets_digest: "digest-of-client-secrets".into(),
        default_version: "0.1.0".into(),
    }
}

fn find<'a>(children: &'a [Child], kind: Kind, name: &str) -> &'a Value {
    &children
        .iter()
        .find(|c| c.kind == kind && c.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}"))
        .object
}

fn golden(name: &str, children: &[Child]) {
    let text: String = children
        .iter()
        .map(|c| {
            format!(
                "---\n{}",
                serde_yaml_ng::to_string(&c.object).expect("YAML")
            )
        })
        .collect();
    let path = format!("{GOLDEN}/{name}.yaml");
    if std::env::var_os("SEKISHO_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(GOLDEN).expect("golden directory");
        std::fs::write(&path, &text).expect("golden file written");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == text,
        "{path} differs from what the operator makes; if the change is meant, run \
         SEKISHO_UPDATE_GOLDEN=1 cargo test -p sekisho-operator --lib and review the diff"
    );
}

#[test]
fn a_minimal_proxy_has_the_children_of_its_golden_file() {
    golden(
        "minimal",
        &children(&minimal(), &world(false, false)).expect("children"),
    );
}

#[test]
fn the_example_proxy_has_the_children_of_its_golden_file() {
    golden(
        "example",
        &children(&example(), &world(true, true)).expect("children"),
    );
}

#[test]
fn every_child_is_labelled_as_the_gates_and_scoped_by_its_kind() {
    let children = children(&example(), &world(true, true)).expect("children");
    let names = Names::of(&example()).expect("names");
    let kinds: BTreeSet<Kind> = children.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        Kind::ALL.into_iter().collect(),
        "every kind is made for the example"
    );
    for child in &children {
        for (key, value) in labels(&names) {
            assert_eq!(
                child.object["metadata"]["labels"][&key],
                json!(value),
                "{child:?}"
            );
        }
        match child.kind.scope() {
            Scope::Owned => assert_eq!(child.namespace.as_deref(), Some("sekisho-system")),
            Scope::Cluster => assert_eq!(child.namespace, None),
            Scope::Elsewhere => assert!(matches!(
                child.namespace.as_deref(),
                Some("grafana" | "wiki")
            )),
        }
        assert_eq!(child.object["metadata"]["name"], json!(child.name));
    }
}

#[test]
fn the_pods_are_hardened_and_drain_within_their_grace_period() {
    let mut proxy = minimal();
    proxy.spec.shutdown_grace = Some("45s".parse().expect("a duration"));
    let children = children(&proxy, &world(false, false)).expect("children");
    let pod = &find(&children, Kind::Deployment, "gate")["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], json!(55));
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["readOnlyRootFilesystem"], json!(true));
    assert_eq!(container["allowPrivilegeEscalation"], json!(false));
    assert_eq!(container["runAsNonRoot"], json!(true));
    assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], json!(true));
    let config = find(&children, Kind::ConfigMap, "gate-config")["data"]["config.yaml"]
        .as_str()
        .expect("text");
    assert!(config.contains("shutdown_grace: 45s"), "{config}");
    let strategy = &find(&children, Kind::Deployment, "gate")["spec"]["strategy"];
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], json!(0));
}

#[test]
fn no_service_exposes_the_admin_port_that_the_probes_use() {
    let children = children(&example(), &world(true, true)).expect("children");
    let pod = &find(&children, Kind::Deployment, "gate")["spec"]["template"]["spec"];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            pod["containers"][0][probe]["httpGet"]["port"],
            json!("admin")
        );
    }
    for service in children.iter().filter(|c| c.kind == Kind::Service) {
        for port in service.object["spec"]["ports"].as_array().expect("ports") {
            assert_ne!(port["targetPort"], json!("admin"), "{}", service.name);
            assert_ne!(
                port["targetPort"],
                json!(config::ADMIN_PORT),
                "{}",
                service.name
            );
        }
    }
    let public = &find(&children, Kind::Service, "gate")["spec"];
    assert_eq!(public["type"], json!("LoadBalancer"));
    assert_eq!(public["ipFamilyPolicy"], json!("PreferDualStack"));
}

#[test]
fn a_new_version_a_new_client_secret_or_new_keys_roll_the_pods() {
    let template = |proxy: &Proxy, world: &World| {
        let children = children(proxy, world).expect("children");
        find(&children, Kind::Deployment, "gate")["spec"]["template"].clone()
    };
    let base = template(&minimal(), &world(false, false));
    assert_eq!(
        base,
        template(&minimal(), &world(false, false)),
        "the same inputs, the same pods"
    );

    let mut newer = minimal();
    newer.spec.version = Some("0.2.0".into());
    let rolled = template(&newer, &world(false, false));
    assert_eq!(
        rolled["spec"]["containers"][0]["image"],
        json!("ghcr.io/sekisho/sekisho-proxy:0.2.0")
    );

    let mut secret_changed = world(false, false);
    secret_changed.client_secrets_digest = "another".into();
    assert_ne!(
        base["metadata"],
        template(&minimal(), &secret_changed)["metadata"]
    );

    let mut rotated = world(false, false);
    rotated.keys.other = Some(KeyPair {
        session: "2:next".into(),
        signing: "-----BEGIN PRIVATE KEY-----\nnext\n-----END PRIVATE KEY-----\n".into(),
    });
    rotated.keys.phase = Phase::Introducing;
    assert_ne!(base["metadata"], template(&minimal(), &rotated)["metadata"]);
}

#[test]
fn the_certificate_and_the_service_monitor_are_made_only_when_their_crds_exist() {
    let proxy = example();
    let kinds = |world: World| -> BTreeSet<Kind> {
        children(&proxy, &world)
            .expect("children")
            .iter()
            .map(|c| c.kind)
            .collect()
    };
    let without = kinds(world(false, false));
    assert!(!without.contains(&Kind::Certificate) && !without.contains(&Kind::ServiceMonitor));
    let with = kinds(world(true, true));
    assert!(with.contains(&Kind::Certificate) && with.contains(&Kind::ServiceMonitor));

    let children = children(&proxy, &world(true, true)).expect("children");
    let certificate = &find(&children, Kind::Certificate, "gate-tls")["spec"];
    assert_eq!(
        certificate["dnsNames"],
        json!(["auth.example.org", "*.example.org"])
    );
    assert_eq!(certificate["issuerRef"]["kind"], json!("ClusterIssuer"));
    let args = &find(&children, Kind::Deployment, "gate")["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .contains(&json!("--default-certificate=sekisho-system/gate-tls"))
    );
}

#[test]
fn the_ingress_class_names_this_gate_as_its_controller() {
    let children = children(&example(), &world(false, false)).expect("children");
    let class = find(&children, Kind::IngressClass, "sekisho");
    assert_eq!(
        class["spec"]["controller"],
        json!("sekisho.dev/proxy/sekisho-system/gate")
    );
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        json!("true")
    );
    let parameters = find(&children, Kind::IngressClassParameters, "sekisho");
    assert_eq!(parameters["spec"]["defaultPolicy"], json!("staff"));
    let args = &find(&children, Kind::Deployment, "gate")["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert!(args.as_array().expect("args").contains(&json!(
        "--ingress-controller=sekisho.dev/proxy/sekisho-system/gate"
    )));
}

#[test]
fn upstream_namespaces_admit_only_the_gates_pods_and_their_own() {
    let children = children(&example(), &world(false, false)).expect("children");
    let policy = &children
        .iter()
        .find(|c| c.kind == Kind::NetworkPolicy && c.namespace.as_deref() == Some("wiki"))
        .expect("a policy in wiki")
        .object["spec"];
    assert_eq!(policy["podSelector"], json!({}));
    assert_eq!(policy["policyTypes"], json!(["Ingress"]));
    let from = &policy["ingress"][0]["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        json!("sekisho-system")
    );
    assert_eq!(
        from["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        json!("gate")
    );
}

#[test]
fn two_providers_of_one_name_are_refused() {
    let mut proxy = minimal();
    let first = proxy.spec.identity_providers[0].clone();
    proxy.spec.identity_providers.push(first);
    assert_eq!(
        children(&proxy, &world(false, false)),
        Err(SpecError::DuplicateProvider("google".into()))
    );
}
