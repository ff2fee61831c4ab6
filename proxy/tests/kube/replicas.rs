//! Two replicas of one gate: only the holder of the Lease writes the Ingresses' status, and
//! when it stops the other takes over. Each replica keeps a Lease naming the agents it holds
//! (what the others relay tunnel streams by), and deletes it when it stops.

use anyhow::ensure;
use k8s_openapi::api::networking::v1::Ingress;

use crate::harness::{Answer, Gate, apply, number, until};

/// What the Ingress's `status.loadBalancer` says.
async fn published(gate: &Gate, name: &str) -> anyhow::Result<Vec<String>> {
    let found = gate.api::<Ingress>().get(name).await?;
    Ok(found
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect())
}

#[tokio::test]
async fn one_replica_writes_the_ingress_status_and_the_other_takes_over_when_it_stops()
-> anyhow::Result<()> {
    let mut gate = Gate::start("replicas").await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate
        .site("site", &host)
        .policy("public")
        .tls("site-tls")
        .path("/", "Prefix", "web", number(80));
    apply(&gate.api(), &site.build()).await?;
    until("the first replica to publish its addresses", || async {
        let now = published(&gate, "site").await?;
        ensure!(now == ["192.0.2.10", "gate.example.test"], "{now:?}");
        Ok(Answer::none())
    })
    .await?;

    // A second replica, publishing other addresses: it serves, but the holder keeps writing.
    let other = gate.another_ready_replica(&["198.51.100.7"]).await?;
    let answer = gate.get(&host, "/").await?;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(
        published(&gate, "site").await?,
        ["192.0.2.10", "gate.example.test"],
        "only the holder of the Lease writes"
    );

    // The holder stops (a rolling restart): it lets the Lease go, the other takes over.
    gate.stop_proxy();
    until("the second replica to take over", || async {
        let now = published(&gate, "site").await?;
        ensure!(now == ["198.51.100.7"], "{now:?}");
        Ok(Answer::none())
    })
    .await?;
    drop(other);
    Ok(())
}

/// The agents a replica's Lease (label `sekisho.dev/replica`) says it holds, over all replicas.
async fn held_by_leases(gate: &Gate) -> anyhow::Result<Vec<String>> {
    let leases = gate
        .api::<k8s_openapi::api::coordination::v1::Lease>()
        .list(&kube::api::ListParams::default().labels("sekisho.dev/replica"))
        .await?;
    Ok(leases
        .items
        .iter()
        .filter_map(|l| l.metadata.annotations.as_ref()?.get("sekisho.dev/agents"))
        .flat_map(|agents| agents.split(',').map(str::to_owned))
        .filter(|name| !name.is_empty())
        .collect())
}

#[tokio::test]
async fn a_replica_names_the_agents_it_holds_in_its_lease_under_the_proxys_own_role()
-> anyhow::Result<()> {
    let mut gate = Gate::start_as("replica-lease", crate::harness::As::ItsClusterRole).await?;
    let host = format!("agents.{}.test", gate.namespace);
    let _web = gate.public_site("agents", &host).await?;
    let name = format!("box-{}", gate.namespace);
    let agent = gate.agent(&name, &host).await?;
    until("the replica's Lease to name the agent", || async {
        let held = held_by_leases(&gate).await?;
        ensure!(held == [name.clone()], "{held:?}");
        Ok(Answer::none())
    })
    .await?;
    // The agent goes: the Lease says so; the replica stops: its Lease goes.
    drop(agent);
    until("the Lease to name no agent", || async {
        let held = held_by_leases(&gate).await?;
        ensure!(held.is_empty(), "{held:?}");
        Ok(Answer::none())
    })
    .await?;
    gate.stop_proxy();
    let leases = gate
        .api::<k8s_openapi::api::coordination::v1::Lease>()
        .list(&kube::api::ListParams::default().labels("sekisho.dev/replica"))
        .await?;
    ensure!(
        leases.items.is_empty(),
        "a stopped replica left its Lease: {:?}",
        leases.items
    );
    Ok(())
}
