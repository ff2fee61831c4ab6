//! The gate the operator makes works: `sekisho-proxy --kubernetes`, started with the
//! ConfigMap, keys and client secret the operator wrote, as the ServiceAccount it made and with
//! only the RBAC it granted, syncs with the API, writes the status of the objects it reads and
//! takes its status Lease. (The files go to a temporary directory instead of the pod's mounts,
//! and the listeners to loopback: nothing else of the generated configuration changes.)

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use sekisho_api::AccessPolicy;
use serde_json::json;

use crate::harness::{Cluster, eventually};

/// The Secret's `key`, as text.
fn text(secret: &Secret, key: &str) -> anyhow::Result<String> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .context(key.to_owned())?;
    Ok(String::from_utf8(value.0.clone())?)
}

/// The operator's files put where the pods would find them, under `dir`, and the config
/// pointed at them.
async fn files(cluster: &Cluster, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let ns = &cluster.namespace;
    let config = Api::<ConfigMap>::namespaced(cluster.admin.clone(), ns)
        .get("gate-config")
        .await?;
    let text_of_config = config
        .data
        .unwrap_or_default()
        .remove("config.yaml")
        .context("config.yaml")?;
    let secrets = Api::<Secret>::namespaced(cluster.admin.clone(), ns);
    let keys = secrets.get("gate-keys").await?;
    let client = secrets.get("google-oidc").await?;
    for (path, contents) in [
        ("keys/session-keys", text(&keys, "session-keys")?),
        ("keys/signing-keys", text(&keys, "signing-keys")?),
        (
            "providers/google/client-secret",
            text(&client, "client-secret")?,
        ),
    ] {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().context("a directory")?)?;
        std::fs::write(path, contents)?;
    }
    let mut rewritten = text_of_config.replace("/etc/sekisho/", &format!("{}/", dir.display()));
    for port in ["8443", "8080", "9901", "9090"] {
        rewritten = rewritten.replace(&format!("'[::]:{port}'"), "127.0.0.1:0");
    }
    anyhow::ensure!(
        !rewritten.contains("[::]"),
        "a listener was not moved: {rewritten}"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, rewritten)?;
    Ok(path)
}

/// The value of `--flag=` in the Deployment's container arguments.
fn flag(deployment: &Deployment, flag: &str) -> anyhow::Result<String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.as_ref())
        .and_then(|args| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
        })
        .map(str::to_owned)
        .context(format!("--{flag}"))
}

async fn ready(admin: std::net::SocketAddr) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer.starts_with("HTTP/1.1 200"))
}

#[tokio::test]
async fn the_gate_it_makes_runs_with_its_files_and_only_the_rbac_it_granted() -> anyhow::Result<()>
{
    let cluster = Cluster::new("op-gate").await?;
    let operator = cluster.operator("only").await?;
    cluster.create_proxy("gate", json!({})).await?;
    let deployments = Api::<Deployment>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let deployment = eventually("the Deployment", || async {
        Ok(deployments.get_opt("gate").await?)
    })
    .await?;
    // The rest of the children (RBAC included) are applied by the end of the same pass.
    eventually("the status of the first pass", || async {
        Ok(cluster
            .proxies()
            .get("gate")
            .await?
            .status
            .filter(|s| s.observed_generation.is_some()))
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let config_path = files(&cluster, dir.path()).await?;
    let config = cluster
        .env
        .service_account_config(&cluster.namespace, "gate")
        .await?;
    let publish = flag(&deployment, "publish-service")?;
    let (namespace, service) = publish.split_once('/').context("NAMESPACE/NAME")?;
    let options = sekisho_proxy::Options {
        config_path: Some(config_path),
        access_log: Some(Box::new(std::io::sink())),
        handle_signals: false,
        dev_ca_dir: Some(dir.path().join("dev-ca")),
        kubernetes: Some(sekisho_proxy::KubernetesOptions {
            config: Some(config),
            controller: flag(&deployment, "ingress-controller")?,
            default_policy: None,
            publish_service: Some(format!("{namespace}/{service}")),
            publish_addresses: Vec::new(),
            lease_namespace: Some(cluster.namespace.clone()),
            default_certificate: None,
            relay_address: None,
        }),
    };
    let running = tokio::task::spawn_blocking(move || sekisho_proxy::start(options))
        .await?
        .map_err(|e| anyhow::anyhow!("{}", sekisho_proxy::error_chain(&e)))?;
    let admin = running.admin_addr;
    eventually("the gate's /readyz: synced with the API", || async {
        Ok(ready(admin).await?.then_some(()))
    })
    .await?;

    // It writes the status of what it reads, and holds its Lease.
    let policies = Api::<AccessPolicy>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let policy: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "sekisho.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "staff"},
        "spec": {"allow": [{"group": "staff"}]},
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    eventually(
        "the policy's Ready condition, written by the gate",
        || async {
            let policy = policies.get("staff").await?;
            Ok(policy
                .status
                .filter(|s| !s.conditions.is_empty())
                .map(|_| ()))
        },
    )
    .await?;
    let leases = Api::<Lease>::namespaced(cluster.admin.clone(), &cluster.namespace);
    eventually("the gate's status Lease", || async {
        let list = leases.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|l| {
                l.metadata.name.as_deref() != Some(sekisho_operator::LEASE_NAME)
                    && l.spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_ref())
                        .is_some()
            })
            .map(|_| ()))
    })
    .await?;
    running.shutdown();
    tokio::task::spawn_blocking(move || running.wait()).await?;
    operator.stop().await
}
