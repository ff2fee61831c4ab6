//! Two replicas of one gate: only the holder of the Lease writes the Ingresses' status, and
//! when it stops the other takes over.

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
