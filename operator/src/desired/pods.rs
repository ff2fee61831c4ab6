//! The proxy's Deployment: pods that run `sekisho-proxy --kubernetes`, hardened, spread over
//! nodes, rolled one at a time without dropping capacity, and rolled again whenever what they
//! read at start changes (the config, the keys, a client secret).

use sekisho_api::Proxy;
use serde_json::{Value, json};

use super::config::{
    ADMIN_PORT, CONFIG_DIR, FILE_NAME, HTTP_PORT, HTTPS_PORT, KEYS_DIR, METRICS_PORT,
    PROVIDERS_DIR, shutdown_grace_seconds,
};
use super::object::{DEFAULT_IMAGE, INPUTS_ANNOTATION, Names, World, selector};

/// The pods' user and group (the images' non-root user).
const USER: i64 = 65532;

pub(super) fn deployment(proxy: &Proxy, names: &Names, world: &World) -> Value {
    let spec = &proxy.spec;
    let image = format!(
        "{}:{}",
        spec.image.as_deref().unwrap_or(DEFAULT_IMAGE),
        spec.version.as_deref().unwrap_or(&world.default_version)
    );
    let mut args = vec![
        format!("--config={CONFIG_DIR}/{FILE_NAME}"),
        "--kubernetes".to_owned(),
        format!("--ingress-controller={}", names.controller()),
        format!("--publish-service={}/{}", names.namespace, names.name),
    ];
    if spec.certificate.is_some() && world.cert_manager {
        args.push(format!(
            "--default-certificate={}/{}",
            names.namespace,
            names.tls_secret()
        ));
    }
    // Secrets readable by the pod's group (fsGroup) and no one else.
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": names.suffixed("config")}}),
        json!({"name": "keys", "secret": {"secretName": names.suffixed("keys"), "defaultMode": 0o440}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}),
    ];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "keys", "mountPath": KEYS_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    for provider in &spec.identity_providers {
        let volume = format!("provider-{}", provider.name);
        volumes.push(json!({
            "name": volume,
            "secret": {
                "secretName": provider.client_secret_ref.name,
                "items": [{"key": provider.client_secret_ref.key, "path": provider.client_secret_ref.key}],
                "defaultMode": 0o440,
            },
        }));
        mounts.push(json!({
            "name": volume,
            "mountPath": format!("{PROVIDERS_DIR}/{}", provider.name),
            "readOnly": true,
        }));
    }
    let resources = match &spec.resources {
        Some(resources) => serde_json::to_value(resources).unwrap_or_default(),
        None => json!({
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }),
    };
    let grace = shutdown_grace_seconds(proxy);
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": "admin"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        })
    };
    let container = json!({
        "name": "proxy",
        "image": image,
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            // Where the other replicas relay tunnel streams for the agents this one holds.
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            // The development CA (only used when no certificate is configured) on the
            // writable emptyDir: the root file system is read-only.
            {"name": "SEKISHO_DEV_CA_DIR", "value": "/tmp/dev-ca"},
        ],
        "ports": [
            {"name": "https", "containerPort": HTTPS_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": probe("/readyz", 2, 60),
        "readinessProbe": probe("/readyz", 5, 2),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": true,
            "runAsUser": USER,
            "runAsGroup": USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    json!({
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(names)},
            // One new pod at a time, and never fewer ready pods than asked for.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": selector(names),
                    "annotations": {INPUTS_ANNOTATION: inputs_digest(proxy, names, world)},
                },
                "spec": {
                    "serviceAccountName": names.name,
                    "automountServiceAccountToken": true,
                    "enableServiceLinks": false,
                    // The proxy's 5 s of serving while not ready (the endpoints being
                    // removed), its drain, and 5 s for the kubelet to send SIGTERM.
                    "terminationGracePeriodSeconds": grace + 10,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": USER,
                        "runAsGroup": USER,
                        "fsGroup": USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector(names)},
                        },
                    }]}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// A digest of everything the pods read at start: the config file, the keys and the client
/// secrets. The pod template carries it, so a change of any rolls the pods.
pub(crate) fn inputs_digest(proxy: &Proxy, names: &Names, world: &World) -> String {
    let mut input = super::config::file(proxy, names);
    input.push_str(&world.keys.session_keys());
    input.push_str(&world.keys.signing_keys());
    input.push_str(&world.client_secrets_digest);
    super::object::short_digest(input.as_bytes())
}
