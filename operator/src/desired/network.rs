//! The Services in front of the pods and the NetworkPolicies behind them.

use sekisho_api::{IpFamilyPolicy, Proxy, ServiceType};
use serde_json::json;

use super::config::METRICS_PORT;
use super::object::{Child, Kind, Names, child, child_in, selector};

/// The public Service (NAME) and the metrics Service (NAME-metrics). The admin port (health)
/// is in neither: only the kubelet reaches it, at the pod's address.
pub(super) fn services(proxy: &Proxy, names: &Names) -> Vec<Child> {
    let service = &proxy.spec.service;
    let (type_, external) = match service.type_ {
        ServiceType::LoadBalancer => ("LoadBalancer", true),
        ServiceType::NodePort => ("NodePort", true),
        ServiceType::ClusterIp => ("ClusterIP", false),
    };
    let family = match service.ip_family_policy {
        IpFamilyPolicy::PreferDualStack => "PreferDualStack",
        IpFamilyPolicy::SingleStack => "SingleStack",
        IpFamilyPolicy::RequireDualStack => "RequireDualStack",
    };
    let mut spec = json!({
        "type": type_,
        "ipFamilyPolicy": family,
        "selector": selector(names),
        "ports": [
            {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        ],
    });
    if external {
        // Keeps the client's address (the access log's, and what policies see).
        spec["externalTrafficPolicy"] = json!("Local");
    }
    if let (Some(class), ServiceType::LoadBalancer) = (&service.load_balancer_class, service.type_)
    {
        spec["loadBalancerClass"] = json!(class);
    }
    let mut public = child(
        names,
        Kind::Service,
        names.name.clone(),
        json!({"spec": spec}),
    );
    if !service.annotations.is_empty() {
        public.object["metadata"]["annotations"] = json!(service.annotations);
    }
    let mut metrics = child(
        names,
        Kind::Service,
        names.suffixed("metrics"),
        json!({
            "spec": {
                "type": "ClusterIP",
                "selector": selector(names),
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
            },
        }),
    );
    for (key, value) in metrics_service_labels(names) {
        metrics.object["metadata"]["labels"][key] = json!(value);
    }
    vec![public, metrics]
}

/// The labels that tell the metrics Service from the public one (for the ServiceMonitor).
pub(super) fn metrics_service_labels(names: &Names) -> std::collections::BTreeMap<String, String> {
    let mut labels = selector(names);
    labels.insert("sekisho.dev/metrics".into(), "true".into());
    labels
}

/// In each upstream namespace, a NetworkPolicy that admits, to every pod, only the proxy pods
/// and pods of the same namespace.
pub(super) fn policies(proxy: &Proxy, names: &Names) -> Vec<Child> {
    let Some(policy) = &proxy.spec.network_policy else {
        return Vec::new();
    };
    let mut namespaces = policy.upstream_namespaces.clone();
    namespaces.sort();
    namespaces.dedup();
    namespaces
        .into_iter()
        .map(|namespace| {
            child_in(names, Kind::NetworkPolicy, Some(namespace), names.network_policy(), json!({
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {"from": [{
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": names.namespace}},
                            "podSelector": {"matchLabels": selector(names)},
                        }]},
                        {"from": [{"podSelector": {}}]},
                    ],
                },
            }))
        })
        .collect()
}
