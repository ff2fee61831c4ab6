//! Every object the chart and the kustomize directories produce, applied to a real API server
//! by server-side apply with dry-run: the schemas (Sekisho's CRDs included) and the API
//! server's own validation accept each one.

use anyhow::ensure;
use serde_json::Value;

use crate::support::*;

/// Applies `objects` (from `what`) with dry-run and fails naming every object refused.
async fn assert_accepted(what: &str, objects: &[Value]) -> anyhow::Result<()> {
    ensure!(!objects.is_empty(), "{what} produced no objects");
    let client = cluster().await?;
    let refused = refused(&client, objects).await;
    ensure!(
        refused.is_empty(),
        "the API server refused {} of the {} objects of {what}:\n{}",
        refused.len(),
        objects.len(),
        refused.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn the_chart_with_its_default_values_applies_cleanly() -> anyhow::Result<()> {
    let objects = helm_template(&[])?;
    ensure!(
        !objects.iter().any(|o| o["kind"] == "Proxy"),
        "the default values create no Proxy"
    );
    assert_accepted("helm template (default values)", &objects).await
}

#[tokio::test]
async fn the_chart_with_each_of_its_test_values_files_applies_cleanly() -> anyhow::Result<()> {
    for values in ci_values()? {
        let objects = helm_template(&[&values])?;
        assert_accepted(&format!("helm template -f {}", values.display()), &objects).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_chart_creates_the_first_proxy_it_is_asked_for_and_the_api_server_accepts_it()
-> anyhow::Result<()> {
    let values = repo().join("deploy/helm/sekisho/ci/first-proxy-values.yaml");
    let objects = helm_template(&[&values])?;
    let proxy = find(&objects, "Proxy", "gate")?;
    assert_eq!(proxy["metadata"]["namespace"], NAMESPACE);
    assert_eq!(proxy["spec"]["domain"], "example.org");
    assert_accepted("the chart's Proxy", std::slice::from_ref(proxy)).await
}

#[tokio::test]
async fn the_kustomize_base_applies_cleanly() -> anyhow::Result<()> {
    let objects = kustomize_build("deploy/operator")?;
    assert_accepted("kustomize build deploy/operator", &objects).await
}

#[tokio::test]
async fn the_first_proxy_overlay_applies_cleanly() -> anyhow::Result<()> {
    let objects = kustomize_build("deploy/examples/kustomize/first-proxy")?;
    find(&objects, "Proxy", "gate")?;
    assert_accepted(
        "kustomize build deploy/examples/kustomize/first-proxy",
        &objects,
    )
    .await
}

#[tokio::test]
async fn objects_the_api_server_refuses_are_reported_by_kind_and_name() -> anyhow::Result<()> {
    let mut objects = kustomize_build("deploy/examples/kustomize/first-proxy")?;
    for object in &mut objects {
        match object["kind"].as_str() {
            // Below the minimum of the Proxy's schema.
            Some("Proxy") => object["spec"]["replicas"] = Value::from(0),
            // A field a Deployment does not have.
            Some("Deployment") => object["spec"]["replica"] = Value::from(2),
            _ => {}
        }
    }
    let client = cluster().await?;
    let refused = refused(&client, &objects).await;
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let [deployment, proxy] = [
        "Deployment/sekisho-system/sekisho-operator: ",
        "Proxy/sekisho-system/gate: ",
    ]
    .map(|prefix| refused.iter().find(|r| r.starts_with(prefix)));
    assert!(
        deployment.is_some_and(|r| r.contains(".spec.replica: field not declared in schema")),
        "{refused:#?}"
    );
    assert!(
        proxy.is_some_and(
            |r| r.contains("spec.replicas") && r.contains("greater than or equal to 1")
        ),
        "{refused:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn cert_managers_and_the_prometheus_operators_crds_are_served() -> anyhow::Result<()> {
    let crds = cert_manager_and_prometheus_crds()?;
    let names: Vec<_> = crds
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    for wanted in [
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "clusterissuers.cert-manager.io",
        "servicemonitors.monitoring.coreos.com",
    ] {
        ensure!(
            names.iter().any(|n| n == wanted),
            "no {wanted} in {names:?}"
        );
    }
    let client = cluster().await?;
    let certificate = serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "auth", "namespace": NAMESPACE},
        "spec": {
            "secretName": "auth-tls",
            "dnsNames": ["auth.example.org"],
            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
        },
    });
    let monitor = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "gate", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "sekisho-proxy"}},
            "endpoints": [{"port": "metrics"}],
        },
    });
    let refused = refused(&client, &[certificate, monitor]).await;
    ensure!(refused.is_empty(), "{refused:#?}");
    Ok(())
}
