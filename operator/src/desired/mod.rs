//! What a `Proxy` should have: every child object, as the JSON that server-side apply sends.
//! A pure function of the Proxy and of what exists ([`World`]), with unit tests and golden
//! files (`operator/tests/golden/`).
//!
//! | child | name | scope |
//! |---|---|---|
//! | Deployment | NAME | owned |
//! | Service (public) | NAME | owned |
//! | Service (metrics) | NAME-metrics | owned |
//! | ServiceAccount | NAME | owned |
//! | ConfigMap | NAME-config | owned |
//! | Secret | NAME-keys | owned (its data is generated, see [`crate::keys`]) |
//! | Role, RoleBinding (the status Lease) | NAME-lease | owned |
//! | PodDisruptionBudget | NAME | owned |
//! | Certificate (cert-manager) | NAME-tls | owned, when cert-manager is installed |
//! | ServiceMonitor | NAME | owned, when the Prometheus operator is installed |
//! | ClusterRole, ClusterRoleBinding | sekisho-proxy:NS:NAME | cluster |
//! | IngressClass, IngressClassParameters | `spec.ingressClass.name` | cluster |
//! | NetworkPolicy | sekisho-upstreams.NS.NAME | each upstream namespace |
//!
//! Owned children carry an owner reference, so the garbage collector removes them with the
//! Proxy; the others carry the labels of [`labels`] and are removed by the finalizer.

mod config;
mod network;
mod object;
mod pods;
mod rbac;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sekisho_api::Proxy;
use serde_json::{Value, json};

pub(crate) use object::{
    Child, INPUTS_ANNOTATION, Kind, MANAGER, NAMESPACE_LABEL, Names, Scope, SpecError, World,
    auth_host, child, children_selector, labels, selector, short_digest,
};
pub(crate) use pods::inputs_digest;

/// Every child of `proxy`, in the order they are applied.
pub(crate) fn children(proxy: &Proxy, world: &World) -> Result<Vec<Child>, SpecError> {
    let names = Names::of(proxy)?;
    let spec = &proxy.spec;
    let mut seen = std::collections::BTreeSet::new();
    for provider in &spec.identity_providers {
        if !seen.insert(provider.name.as_str()) {
            return Err(SpecError::DuplicateProvider(provider.name.clone()));
        }
    }
    let auth_host = auth_host(proxy);
    if auth_host.len() > 253 || auth_host.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(SpecError::AuthHost(auth_host));
    }
    let config = config::file(proxy, &names);
    let mut children = vec![
        child(
            &names,
            Kind::ServiceAccount,
            names.name.clone(),
            json!({
                "automountServiceAccountToken": true,
            }),
        ),
        child(
            &names,
            Kind::ConfigMap,
            names.suffixed("config"),
            json!({
                "data": {config::FILE_NAME: config},
            }),
        ),
        child(
            &names,
            Kind::Secret,
            names.suffixed("keys"),
            keys_secret(world),
        ),
    ];
    children.extend(rbac::children(&names));
    children.extend(network::services(proxy, &names));
    children.push(child(
        &names,
        Kind::Deployment,
        names.name.clone(),
        pods::deployment(proxy, &names, world),
    ));
    children.push(child(
        &names,
        Kind::PodDisruptionBudget,
        names.name.clone(),
        json!({
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector(&names)},
            },
        }),
    ));
    children.extend(class(proxy, &names));
    children.extend(network::policies(proxy, &names));
    if let (Some(certificate), true) = (&spec.certificate, world.cert_manager) {
        let mut dns_names = vec![auth_host];
        dns_names.extend(certificate.dns_names.iter().cloned());
        dns_names.dedup();
        let kind = match certificate.issuer_ref.kind {
            sekisho_api::IssuerKind::ClusterIssuer => "ClusterIssuer",
            sekisho_api::IssuerKind::Issuer => "Issuer",
        };
        children.push(child(
            &names,
            Kind::Certificate,
            names.tls_secret(),
            json!({
                "spec": {
                    "secretName": names.tls_secret(),
                    "dnsNames": dns_names,
                    "issuerRef": {
                        "group": "cert-manager.io",
                        "kind": kind,
                        "name": certificate.issuer_ref.name,
                    },
                    "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                    "secretTemplate": {"labels": labels(&names)},
                },
            }),
        ));
    }
    if spec.monitoring.service_monitor && world.service_monitors {
        let mut monitor = child(
            &names,
            Kind::ServiceMonitor,
            names.name.clone(),
            json!({
                "spec": {
                    "selector": {"matchLabels": network::metrics_service_labels(&names)},
                    "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
                },
            }),
        );
        for (key, value) in &spec.monitoring.labels {
            monitor.object["metadata"]["labels"][key] = json!(value);
        }
        children.push(monitor);
    }
    Ok(children)
}

fn keys_secret(world: &World) -> Value {
    let annotations: BTreeMap<&str, String> = world.keys.annotations().into_iter().collect();
    json!({
        "metadata": {"annotations": annotations},
        "type": "Opaque",
        // `data`, not `stringData`: the API server turns `stringData` into `data`, so an apply
        // of `stringData` would never match what it reads back.
        "data": {
            crate::keys::SESSION_KEYS: STANDARD.encode(world.keys.session_keys()),
            crate::keys::SIGNING_KEYS: STANDARD.encode(world.keys.signing_keys()),
        },
    })
}

fn class(proxy: &Proxy, names: &Names) -> Vec<Child> {
    let class = &proxy.spec.ingress_class;
    let mut ingress_class = child(
        names,
        Kind::IngressClass,
        class.name.clone(),
        json!({
            "spec": {
                "controller": names.controller(),
                "parameters": {
                    "apiGroup": "sekisho.dev",
                    "kind": "IngressClassParameters",
                    "name": class.name,
                    "scope": "Cluster",
                },
            },
        }),
    );
    ingress_class.object["metadata"]["annotations"] = json!({
        "ingressclass.kubernetes.io/is-default-class": class.default.to_string(),
    });
    let mut parameters = json!({"spec": {}});
    if let Some(policy) = &class.default_policy {
        parameters["spec"]["defaultPolicy"] = json!(policy);
    }
    vec![
        child(
            names,
            Kind::IngressClassParameters,
            class.name.clone(),
            parameters,
        ),
        ingress_class,
    ]
}

#[cfg(test)]
mod tests;
