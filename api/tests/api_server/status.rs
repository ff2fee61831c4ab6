//! The status subresource and the printer columns.

use anyhow::{Context as _, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sekisho_api::condition::{self, reason};
use sekisho_api::{Agent, AgentSpec, AgentStatus, ObservedStatus, Tunnel, TunnelSpec};
use serde_json::{Value, json};

use crate::install;

const KEY: &str = "ed25519:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn now() -> Time {
    // Kubernetes stores times to the second.
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What `kubectl get` asks for: the server renders the printer columns into a Table.
async fn table(client: &Client, path: &str) -> anyhow::Result<Value> {
    let request = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())?;
    Ok(client.request::<Value>(request).await?)
}

fn column_names(table: &Value) -> Vec<String> {
    table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_agents_status_is_written_through_its_subresource_and_shown_by_kubectl_get()
-> anyhow::Result<()> {
    let installed = install().await?;
    let namespace = installed.env.namespace("agent-status").await?;
    let agents = Api::<Agent>::namespaced(installed.client.clone(), &namespace);
    let spec = AgentSpec {
        public_keys: vec![KEY.into()],
        targets: vec!["127.0.0.1:22".into()],
    };
    let created = agents
        .create(&PostParams::default(), &Agent::new("nas", spec.clone()))
        .await?;
    let generation = created.metadata.generation;

    let mut status = AgentStatus {
        connected: true,
        replica: Some("sekisho-0".into()),
        connected_since: Some(now()),
        ..AgentStatus::default()
    };
    condition::set(
        &mut status.conditions,
        condition::ready(
            true,
            reason::CONNECTED,
            "connected to sekisho-0",
            generation,
            now(),
        ),
    );
    status.observed_generation = generation;
    agents
        .patch_status(
            "nas",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    let read = agents.get("nas").await?;
    ensure!(
        read.status.as_ref() == Some(&status),
        "status read back as {:?}",
        read.status
    );
    ensure!(read.spec == spec, "the spec changed: {:?}", read.spec);
    ensure!(
        read.metadata.generation == generation,
        "a status write moved the generation"
    );

    // The main resource ignores status, the status subresource ignores spec.
    let mut changed = read.clone();
    changed.status = Some(AgentStatus::default());
    changed.spec.targets.push("127.0.0.1:2222".into());
    let replaced = agents
        .replace("nas", &PostParams::default(), &changed)
        .await?;
    ensure!(
        replaced.status.as_ref() == Some(&status),
        "an update of the object wrote its status"
    );
    ensure!(
        replaced.metadata.generation > generation,
        "a spec change kept the generation"
    );

    let table = table(
        &installed.client,
        &format!("/apis/sekisho.dev/v1alpha1/namespaces/{namespace}/agents"),
    )
    .await?;
    ensure!(
        column_names(&table) == ["Name", "Connected", "Replica", "Age"],
        "columns {:?}",
        column_names(&table)
    );
    let cells = &table["rows"][0]["cells"];
    ensure!(
        cells[0] == "nas" && cells[1] == true && cells[2] == "sekisho-0",
        "row {cells}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tunnels_ready_condition_shows_in_its_columns() -> anyhow::Result<()> {
    let installed = install().await?;
    let namespace = installed.env.namespace("tunnel-status").await?;
    let tunnels = Api::<Tunnel>::namespaced(installed.client.clone(), &namespace);
    let spec = TunnelSpec {
        host: "nas.ssh.example.com".into(),
        target: "127.0.0.1:22".into(),
        agent: Some("nas".into()),
        policy: "staff".into(),
        connect_timeout: Some("5s".parse().context("a duration")?),
    };
    let created = tunnels
        .create(&PostParams::default(), &Tunnel::new("nas-ssh", spec))
        .await?;
    let mut status = ObservedStatus {
        observed_generation: created.metadata.generation,
        ..ObservedStatus::default()
    };
    condition::set(
        &mut status.conditions,
        condition::ready(
            false,
            reason::AGENT_NOT_FOUND,
            "no Agent `nas` here",
            status.observed_generation,
            now(),
        ),
    );
    tunnels
        .patch_status(
            "nas-ssh",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    ensure!(
        tunnels.get_status("nas-ssh").await?.status.as_ref() == Some(&status),
        "the status was not kept"
    );

    let table = table(
        &installed.client,
        &format!("/apis/sekisho.dev/v1alpha1/namespaces/{namespace}/tunnels"),
    )
    .await?;
    ensure!(
        column_names(&table) == ["Name", "Host", "Target", "Agent", "Ready", "Age"],
        "columns {:?}",
        column_names(&table)
    );
    let cells = &table["rows"][0]["cells"];
    ensure!(
        cells[1] == "nas.ssh.example.com"
            && cells[2] == "127.0.0.1:22"
            && cells[3] == "nas"
            && cells[4] == "False",
        "row {cells}"
    );
    Ok(())
}

#[tokio::test]
async fn every_installed_crd_has_printer_columns_and_a_status_subresource_where_it_has_a_status()
-> anyhow::Result<()> {
    let installed = install().await?;
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(installed.client.clone());
    let expected = [
        ("accesspolicies.sekisho.dev", vec!["Ready", "Age"], true),
        (
            "clusteraccesspolicies.sekisho.dev",
            vec!["Ready", "Age"],
            true,
        ),
        (
            "agents.sekisho.dev",
            vec!["Connected", "Replica", "Age"],
            true,
        ),
        (
            "tunnels.sekisho.dev",
            vec!["Host", "Target", "Agent", "Ready", "Age"],
            true,
        ),
        (
            "ingressclassparameters.sekisho.dev",
            vec!["Default Policy", "Age"],
            false,
        ),
        ("sharedhosts.sekisho.dev", vec!["Host", "Age"], false),
        (
            "proxies.sekisho.dev",
            vec!["Domain", "Replicas", "Version", "Ready", "Age"],
            true,
        ),
        (
            "githubwebhooks.sekisho.dev",
            vec!["Host", "Path", "Ready", "Age"],
            true,
        ),
        (
            "revocations.sekisho.dev",
            vec!["Email", "Subject", "Session", "Expires", "Age"],
            false,
        ),
    ];
    ensure!(
        expected.len() == installed.kinds.len(),
        "a CRD is not checked here"
    );
    for (name, columns, has_status) in expected {
        let crd = crds.get(name).await?;
        let version = &crd.spec.versions[0];
        let served: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        ensure!(served == columns, "{name}: columns {served:?}");
        let status = version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some();
        ensure!(status == has_status, "{name}: status subresource {status}");
    }
    Ok(())
}
