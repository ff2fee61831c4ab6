//! Agents and Tunnels as objects: an Agent's keys let it connect; deleting the Agent cuts its
//! link; a Tunnel that names no usable Agent or policy says why in its status.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::api::{Api, DeleteParams};
use sekisho_api::{Agent, Tunnel, TunnelSpec};

use crate::harness::{Answer, Gate, apply, until};

#[tokio::test]
async fn an_agent_object_lets_its_agent_connect_and_deleting_it_cuts_the_link() -> anyhow::Result<()>
{
    let gate = Gate::start("agent").await?;
    let host = format!("site.{}.test", gate.namespace);
    let _web = gate.public_site("site", &host).await?;

    let name = format!("nas-{}", gate.namespace);
    let agent = gate.agent(&name, &host).await?;
    let links = || gate.agent_links(&name);
    until("the agent to be connected", || async {
        ensure!(links() == 1, "{} links", links());
        Ok(Answer::none())
    })
    .await?;

    // Its status says so.
    let agents: Api<Agent> = gate.api();
    until("the Agent's status", || async {
        let status = agents.get(&name).await?.status.unwrap_or_default();
        ensure!(
            status.connected && status.replica.is_some() && status.connected_since.is_some(),
            "{status:?}"
        );
        ensure!(
            sekisho_api::condition::is_true(&status.conditions, "Ready"),
            "{status:?}"
        );
        Ok(Answer::none())
    })
    .await?;

    // A Tunnel naming it (and a policy that does not exist) says why it is not served.
    let mut tunnel = Tunnel::new(
        "nas",
        TunnelSpec {
            host: format!("nas.{}.test", gate.namespace),
            target: "127.0.0.1:22".into(),
            agent: Some(name.clone()),
            policy: "staff".into(),
            connect_timeout: Some(Duration::from_secs(3).into()),
        },
    );
    tunnel.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &tunnel).await?;
    let tunnels: Api<Tunnel> = gate.api();
    until("the Tunnel's status", || async {
        let status = tunnels.get("nas").await?.status.unwrap_or_default();
        let ready = sekisho_api::condition::find(&status.conditions, "Ready")
            .context("no Ready condition yet")?;
        ensure!(
            ready.status == "False" && ready.reason == "PolicyNotFound",
            "{ready:?}"
        );
        Ok(Answer::none())
    })
    .await?;

    gate.api::<Agent>()
        .delete(&name, &DeleteParams::default())
        .await?;
    until("the link to be cut", || async {
        ensure!(links() == 0, "{} links", links());
        Ok(Answer::none())
    })
    .await?;
    drop(agent);
    Ok(())
}
