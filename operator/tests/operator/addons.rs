//! With cert-manager's and the Prometheus operator's CRDs installed (from
//! `testing/deploy-tools/build.sh`), a Proxy gets its Certificate and ServiceMonitor. On a
//! control plane of its own: the other tests see a cluster without them.

use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use crate::harness::{Cluster, condition, eventually};

fn third_party_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let dir = match std::env::var_os("SEKISHO_DEPLOY_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.cache/deploy-tools"
        )),
    };
    let mut crds = Vec::new();
    for file in ["cert-manager.yaml", "servicemonitors.yaml"] {
        let path = dir.join("crds").join(file);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: run testing/deploy-tools/build.sh (scripts/test.sh does)",
                path.display()
            )
        })?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            if value["kind"] == "CustomResourceDefinition" {
                crds.push(serde_json::from_value(value)?);
            }
        }
    }
    Ok(crds)
}

#[tokio::test]
async fn with_cert_manager_and_the_prometheus_operator_a_proxy_gets_a_certificate_and_a_monitor()
-> anyhow::Result<()> {
    let cluster = Cluster::alone("op-addons").await?;
    cluster
        .env
        .install_crds(&third_party_crds()?, "operator-tests")
        .await?;
    let operator = cluster.operator("only").await?;
    cluster
        .create_proxy("gate", json!({
            "certificate": {"issuerRef": {"name": "letsencrypt"}, "dnsNames": ["*.example.org"]},
            "monitoring": {"labels": {"release": "prometheus"}},
        }))
        .await?;
    let certificates = cluster.dynamic(
        ("cert-manager.io", "v1", "Certificate", "certificates"),
        true,
    );
    let certificate = eventually("the Certificate", || async {
        Ok(certificates.get_opt("gate-tls").await?)
    })
    .await?;
    assert_eq!(
        certificate.data["spec"]["dnsNames"],
        json!(["auth.example.org", "*.example.org"])
    );
    assert_eq!(certificate.data["spec"]["secretName"], json!("gate-tls"));
    let monitors = cluster.dynamic(
        (
            "monitoring.coreos.com",
            "v1",
            "ServiceMonitor",
            "servicemonitors",
        ),
        true,
    );
    let monitor = eventually("the ServiceMonitor", || async {
        Ok(monitors.get_opt("gate").await?)
    })
    .await?;
    assert_eq!(
        monitor
            .metadata
            .labels
            .unwrap_or_default()
            .get("release")
            .map(String::as_str),
        Some("prometheus")
    );
    assert_eq!(
        monitor.data["spec"]["endpoints"][0]["port"],
        json!("metrics")
    );
    let proxy = cluster.proxies().get("gate").await?;
    let degraded = condition(&proxy, "Degraded");
    assert_ne!(degraded.map(|c| c.1).as_deref(), Some("CertManagerMissing"));

    // Monitoring turned off: the ServiceMonitor goes, the rest stays.
    cluster
        .proxies()
        .patch(
            "gate",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"monitoring": {"serviceMonitor": false}}})),
        )
        .await?;
    eventually("the ServiceMonitor removed", || async {
        Ok(monitors.get_opt("gate").await?.is_none().then_some(()))
    })
    .await?;
    assert!(certificates.get_opt("gate-tls").await?.is_some());
    operator.stop().await
}
