//! The API server going away: the last state keeps serving and the metric says so; once it is
//! back the proxy catches up without a restart.

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::networking::v1::IngressTLS;
use kube_testenv::TestEnv;

use crate::harness::{Answer, As, Gate, apply, until};
use crate::ingress::ingress;

#[tokio::test]
async fn the_last_state_serves_while_the_api_server_is_down_and_changes_follow_once_it_is_back()
-> anyhow::Result<()> {
    let mut env = TestEnv::start().await?;
    let gate = Gate::start_on(&env, "outage", As::Admin).await?;
    let _web = gate.backend("web").await?;
    let _api = gate.backend("api").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let tls = Some(vec![IngressTLS {
        hosts: Some(vec![host.clone()]),
        secret_name: Some("site-tls".into()),
    }]);
    let mut site = ingress(&gate, "site", &host, &[("/", "Prefix", "web")]);
    site.spec.as_mut().unwrap().tls = tls.clone();
    apply(&gate.api(), &site).await?;
    until("the site to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    assert_eq!(gate.metric("sekisho_kubernetes_api_reachable").await?, 1.0);

    env.stop_apiserver();
    until("the metric to tell the API is unreachable", || async {
        let reachable = gate.metric("sekisho_kubernetes_api_reachable").await?;
        ensure!(reachable == 0.0, "reachable: {reachable}");
        Ok(Answer::none())
    })
    .await?;
    let answer = gate.get(&host, "/").await?;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the last state serves: {answer:?}"
    );
    let ready = gate.admin_get("/readyz").await?;
    assert!(ready.starts_with("HTTP/1.1 200"), "still ready: {ready}");
    assert!(
        ready.contains("the Kubernetes API cannot be reached"),
        "and says why: {ready}"
    );

    env.start_apiserver().await?;
    let mut edited = ingress(
        &gate,
        "site",
        &host,
        &[("/", "Prefix", "web"), ("/api", "Prefix", "api")],
    );
    edited.spec.as_mut().unwrap().tls = tls;
    apply(&gate.api(), &edited).await?;
    until("the change made after the restart to be served", || async {
        let answer = gate.get(&host, "/api").await?;
        ensure!(answer.body.starts_with("upstream: api\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    // Every watch reconnects, each after its own backoff.
    until("the metric to tell the API is back", || async {
        let reachable = gate.metric("sekisho_kubernetes_api_reachable").await?;
        ensure!(reachable == 1.0, "reachable: {reachable}");
        Ok(Answer::none())
    })
    .await?;
    Ok(())
}
