//! A Proxy's life: its children, its status, repairs, a second pass, deletion, a bad spec, and
//! two operator replicas.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{Cluster, condition, eventually, message};

/// `((group, version, kind, plural), name, namespaced)`.
type Expected = (
    (&'static str, &'static str, &'static str, &'static str),
    String,
    bool,
);

/// `(kind, name, namespaced)` of every child a plain Proxy `gate` gets without cert-manager
/// or the Prometheus operator.
fn expected(cluster: &Cluster) -> Vec<Expected> {
    let ns = &cluster.namespace;
    let core = |kind, plural| ("", "v1", kind, plural);
    let rbac = |kind, plural| ("rbac.authorization.k8s.io", "v1", kind, plural);
    vec![
        (
            core("ServiceAccount", "serviceaccounts"),
            "gate".into(),
            true,
        ),
        (core("ConfigMap", "configmaps"), "gate-config".into(), true),
        (core("Secret", "secrets"), "gate-keys".into(), true),
        (core("Service", "services"), "gate".into(), true),
        (core("Service", "services"), "gate-metrics".into(), true),
        (
            ("apps", "v1", "Deployment", "deployments"),
            "gate".into(),
            true,
        ),
        (
            (
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            "gate".into(),
            true,
        ),
        (rbac("Role", "roles"), "gate-lease".into(), true),
        (
            rbac("RoleBinding", "rolebindings"),
            "gate-lease".into(),
            true,
        ),
        (
            rbac("ClusterRole", "clusterroles"),
            format!("sekisho-proxy:{ns}:gate"),
            false,
        ),
        (
            rbac("ClusterRoleBinding", "clusterrolebindings"),
            format!("sekisho-proxy:{ns}:gate"),
            false,
        ),
        (
            ("networking.k8s.io", "v1", "IngressClass", "ingressclasses"),
            format!("{ns}-gate"),
            false,
        ),
        (
            (
                "sekisho.dev",
                "v1alpha1",
                "IngressClassParameters",
                "ingressclassparameters",
            ),
            format!("{ns}-gate"),
            false,
        ),
    ]
}

/// Every expected child's version, once all exist: its resourceVersion or, for the kinds whose
/// status the kube-controller-manager writes, its generation and the time of the operator's
/// last change to it.
async fn children(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, String>> {
    eventually("every child of the Proxy", || async {
        let mut versions = BTreeMap::new();
        for (gvkp, name, namespaced) in expected(cluster) {
            match cluster.dynamic(gvkp, namespaced).get_opt(&name).await? {
                Some(object) => {
                    let version = match gvkp.2 {
                        "Deployment" | "PodDisruptionBudget" => format!(
                            "generation {:?}, applied {:?}",
                            object.metadata.generation,
                            object
                                .managed_fields()
                                .iter()
                                .find(|m| m.manager.as_deref() == Some("sekisho-operator"))
                                .and_then(|m| m.time.clone())
                        ),
                        _ => object.resource_version().unwrap_or_default(),
                    };
                    versions.insert(format!("{} {name}", gvkp.2), version);
                }
                None => return Ok(None),
            }
        }
        Ok(Some(versions))
    })
    .await
}

#[tokio::test]
async fn a_proxy_gets_its_children_and_is_ready_once_its_pods_are() -> anyhow::Result<()> {
    let cluster = Cluster::new("op-life").await?;
    let operator = cluster.operator("only").await?;
    cluster.create_proxy("gate", json!({})).await?;
    children(&cluster).await?;

    let proxies = cluster.proxies();
    let proxy = eventually("a status that says no pod is ready", || async {
        let proxy = proxies.get("gate").await?;
        Ok(
            (condition(&proxy, "Ready") == Some(("False".into(), "NoPodAvailable".into())))
                .then_some(proxy),
        )
    })
    .await?;
    let status = proxy.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, proxy.metadata.generation);
    assert_eq!(
        condition(&proxy, "Progressing").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&proxy, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == proxy.metadata.generation)
    );
    let events = Api::<Event>::namespaced(cluster.admin.clone(), &cluster.namespace);
    eventually("the KeysGenerated Event on the Proxy", || async {
        let list = events
            .list(
                &ListParams::default().fields("involvedObject.kind=Proxy,involvedObject.name=gate"),
            )
            .await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("KeysGenerated"))
            .then_some(()))
    })
    .await?;

    // The kube-controller-manager made a ReplicaSet and pods; once they are ready, so is the gate.
    eventually("the gate's pods, marked ready", || async {
        Ok((cluster.kubelet_marks_pods_ready().await? > 0).then_some(()))
    })
    .await?;
    eventually("Ready and rolled out", || async {
        cluster.kubelet_marks_pods_ready().await?;
        let proxy = proxies.get("gate").await?;
        Ok(
            (condition(&proxy, "Ready").map(|c| c.0).as_deref() == Some("True")
                && condition(&proxy, "Progressing") == Some(("False".into(), "RolledOut".into())))
            .then_some(()),
        )
    })
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn a_second_pass_changes_nothing_and_repairs_what_was_deleted_or_edited() -> anyhow::Result<()>
{
    let cluster = Cluster::new("op-repair").await?;
    let operator = cluster.operator("only").await?;
    cluster.create_proxy("gate", json!({})).await?;
    let first = children(&cluster).await?;

    // Another pass (an annotation on the Proxy wakes the controller) writes nothing.
    let passes = operator.metric("sekisho_operator_reconciles_total").await?;
    cluster
        .proxies()
        .patch(
            "gate",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await?;
    eventually("another reconcile pass", || async {
        Ok(
            (operator.metric("sekisho_operator_reconciles_total").await? > passes + 1.0)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        children(&cluster).await?,
        first,
        "a second pass changed a child"
    );

    // A deleted child comes back; a hand edit of a field the operator owns is put back, and a
    // field someone else added stays.
    let services = Api::<Service>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let uid = services.get("gate-metrics").await?.uid();
    services
        .delete("gate-metrics", &DeleteParams::default())
        .await?;
    eventually("the metrics Service, made again", || async {
        Ok(services
            .get_opt("gate-metrics")
            .await?
            .filter(|s| s.uid() != uid))
    })
    .await?;
    let deployments = Api::<Deployment>::namespaced(cluster.admin.clone(), &cluster.namespace);
    deployments
        .patch(
            "gate",
            &PatchParams::apply("someone-by-hand").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "gate", "annotations": {"team": "infra"}},
                "spec": {"replicas": 7},
            })),
        )
        .await?;
    eventually("the replicas put back, the annotation kept", || async {
        let deployment = deployments.get("gate").await?;
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
        let kept = deployment.annotations().get("team").map(String::as_str) == Some("infra");
        anyhow::ensure!(kept, "the operator removed a field it does not own");
        Ok((replicas == Some(2)).then_some(()))
    })
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn deleting_a_proxy_removes_every_child_even_cluster_scoped_ones() -> anyhow::Result<()> {
    let cluster = Cluster::new("op-delete").await?;
    let operator = cluster.operator("only").await?;
    cluster
        .create_proxy(
            "gate",
            json!({"networkPolicy": {"upstreamNamespaces": [cluster.namespace.clone()]}}),
        )
        .await?;
    children(&cluster).await?;
    let policies = cluster.dynamic(
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
        true,
    );
    let policy = format!("sekisho-upstreams.{}.gate", cluster.namespace);
    eventually("the NetworkPolicy", || async {
        Ok(policies.get_opt(&policy).await?)
    })
    .await?;

    cluster
        .proxies()
        .delete("gate", &DeleteParams::default())
        .await?;
    eventually("the Proxy and everything it had, gone", || async {
        if cluster.proxies().get_opt("gate").await?.is_some()
            || policies.get_opt(&policy).await?.is_some()
        {
            return Ok(None);
        }
        for (gvkp, name, namespaced) in expected(&cluster) {
            if cluster
                .dynamic(gvkp, namespaced)
                .get_opt(&name)
                .await?
                .is_some()
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn a_spec_that_cannot_be_built_is_degraded_and_missing_pieces_are_named() -> anyhow::Result<()>
{
    let cluster = Cluster::new("op-invalid").await?;
    let operator = cluster.operator("only").await?;
    let provider = json!({"name": "google", "kind": "google", "clientId": "c", "clientSecretRef": {"name": "google-oidc"}});
    cluster
        .create_proxy(
            "twins",
            json!({"identityProviders": [provider.clone(), provider]}),
        )
        .await?;
    let proxies = cluster.proxies();
    let proxy = eventually("Degraded: InvalidSpec", || async {
        let proxy = proxies.get("twins").await?;
        Ok(
            (condition(&proxy, "Degraded") == Some(("True".into(), "InvalidSpec".into())))
                .then_some(proxy),
        )
    })
    .await?;
    let degraded = message(&proxy, "Degraded");
    assert!(
        degraded.contains("two identity providers are named `google`"),
        "{degraded}"
    );
    let deployments = Api::<Deployment>::namespaced(cluster.admin.clone(), &cluster.namespace);
    assert!(
        deployments.get_opt("twins").await?.is_none(),
        "nothing is deployed for a bad spec"
    );

    // A client secret that does not exist and a certificate without cert-manager are named.
    let missing = json!({"name": "unique", "issuer": "https://id.example.org", "clientId": "c", "clientSecretRef": {"name": "not-there"}});
    cluster
        .create_proxy(
            "lacking",
            json!({
                "identityProviders": [missing],
                "certificate": {"issuerRef": {"name": "letsencrypt"}},
            }),
        )
        .await?;
    let cert_manager = cluster
        .dynamic(
            (
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
            ),
            false,
        )
        .get_opt("certificates.cert-manager.io")
        .await?
        .is_some();
    let proxy = eventually("Degraded with the missing secret named", || async {
        let proxy = proxies.get("lacking").await?;
        Ok(
            (condition(&proxy, "Degraded").map(|c| c.0).as_deref() == Some("True"))
                .then_some(proxy),
        )
    })
    .await?;
    let degraded = message(&proxy, "Degraded");
    assert!(
        degraded.contains("provider unique (Secret not-there, key client-secret)"),
        "{degraded}"
    );
    assert_eq!(
        degraded.contains("cert-manager's CRDs are not installed"),
        !cert_manager,
        "{degraded}"
    );
    operator.stop().await
}

#[tokio::test]
async fn a_second_replica_waits_while_the_first_leads_and_takes_over_when_it_stops()
-> anyhow::Result<()> {
    let cluster = Cluster::new("op-leader").await?;
    let first = cluster.operator("first").await?;
    eventually("the first replica leading", || async {
        Ok((first.metric("sekisho_operator_leader").await? == 1.0).then_some(()))
    })
    .await?;
    let second = cluster.operator("second").await?;
    cluster.create_proxy("gate", json!({})).await?;
    children(&cluster).await?;
    // The second has had time to try the Lease (it renews every 5 s): it did not take it.
    tokio::time::sleep(sekisho_lease::RENEW + std::time::Duration::from_secs(1)).await;
    assert_eq!(second.metric("sekisho_operator_leader").await?, 0.0);
    assert_eq!(
        second.metric("sekisho_operator_reconciles_total").await?,
        0.0,
        "the follower reconciled"
    );

    first.stop().await?;
    eventually("the second replica leading", || async {
        Ok((second.metric("sekisho_operator_leader").await? == 1.0).then_some(()))
    })
    .await?;
    // And it reconciles: a deleted child comes back.
    let services = Api::<Service>::namespaced(cluster.admin.clone(), &cluster.namespace);
    services.delete("gate", &DeleteParams::default()).await?;
    eventually("the Service, made again by the new leader", || async {
        Ok(services.get_opt("gate").await?)
    })
    .await?;
    second.stop().await
}

#[tokio::test]
async fn unreadable_keys_are_reported_counted_and_never_overwritten() -> anyhow::Result<()> {
    let cluster = Cluster::new("op-badkeys").await?;
    let operator = cluster.operator("only").await?;
    cluster.create_proxy("gate", json!({})).await?;
    children(&cluster).await?;
    let secrets = Api::<Secret>::namespaced(cluster.admin.clone(), &cluster.namespace);
    secrets
        .patch(
            "gate-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"session-keys": "not a key file"}})),
        )
        .await?;
    let proxies = cluster.proxies();
    eventually("Degraded: KeysUnreadable", || async {
        let proxy = proxies.get("gate").await?;
        Ok(
            (condition(&proxy, "Degraded") == Some(("True".into(), "KeysUnreadable".into())))
                .then_some(()),
        )
    })
    .await?;
    let failures = r#"sekisho_operator_reconcile_failures_total{reason="KeysUnreadable"}"#;
    eventually("the failure counted", || async {
        Ok((operator.metric(failures).await? >= 1.0).then_some(()))
    })
    .await?;
    let secret = secrets.get("gate-keys").await?;
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.get("session-keys").map(|v| v.0.as_slice()),
        Some(b"not a key file".as_slice()),
        "the operator overwrote keys it could not read"
    );
    operator.stop().await
}

#[tokio::test]
async fn a_new_version_rolls_the_pods_and_the_status_says_which_runs() -> anyhow::Result<()> {
    let cluster = Cluster::new("op-version").await?;
    let operator = cluster.operator("only").await?;
    cluster.create_proxy("gate", json!({"replicas": 1})).await?;
    let proxies = cluster.proxies();
    let rolled_out =
        |version: &'static str| {
            let proxies = proxies.clone();
            let cluster = &cluster;
            async move {
                eventually(&format!("version {version} rolled out"), || async {
                    cluster.kubelet_marks_pods_ready().await?;
                    let proxy = proxies.get("gate").await?;
                    let status = proxy.status.clone().unwrap_or_default();
                    Ok((condition(&proxy, "Progressing")
                        == Some(("False".into(), "RolledOut".into()))
                        && status.version.as_deref() == Some(version)
                        && status.observed_generation == proxy.metadata.generation)
                        .then_some(()))
                })
                .await
            }
        };
    rolled_out("0.1.0").await?;
    proxies
        .patch(
            "gate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "0.2.0"}})),
        )
        .await?;
    rolled_out("0.2.0").await?;
    let deployment = Api::<Deployment>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .get("gate")
        .await?;
    let image = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(
        image.as_deref(),
        Some("ghcr.io/sekisho/sekisho-proxy:0.2.0")
    );
    let sets = cluster
        .dynamic(("apps", "v1", "ReplicaSet", "replicasets"), true)
        .list(&Default::default())
        .await?;
    assert_eq!(sets.items.len(), 2, "one ReplicaSet per version");
    operator.stop().await
}
