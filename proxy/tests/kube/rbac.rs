//! The proxy does its whole job with a ServiceAccount bound to its ClusterRole alone
//! (`deploy/kubernetes/proxy-clusterrole.yaml`): it watches, reads a Secret, writes a policy's
//! status and records Events, and that account can do nothing else.

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use sekisho_api::{AccessPolicy, AccessPolicySpec, PolicyPath, Rule};

use crate::harness::{Answer, As, Gate, apply, number, until};

#[tokio::test]
async fn the_proxy_serves_with_only_its_cluster_role() -> anyhow::Result<()> {
    let gate = Gate::start_as("rbac", As::ItsClusterRole).await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let mut policy = AccessPolicy::new(
        "open",
        AccessPolicySpec {
            rules: vec![Rule {
                paths: vec![PolicyPath {
                    path: "/".into(),
                    ..PolicyPath::default()
                }],
                public: true,
                ..Rule::default()
            }],
            ..AccessPolicySpec::default()
        },
    );
    policy.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &policy).await?;
    let site = |name: &str, host: &str, policy: &str| {
        gate.site(name, host)
            .policy(policy)
            .tls("site-tls")
            .path("/", "Prefix", "web", number(80))
            .build()
    };
    apply(&gate.api(), &site("site", &host, "open")).await?;
    let other = format!("other.{host}");
    apply(&gate.api(), &site("missing", &other, "nobody-wrote-it")).await?;

    // Watched, read the Secret, served.
    until("the Ingress to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    // Wrote the policy's status and an Event.
    let policies: Api<AccessPolicy> = gate.api();
    until("the policy's status and an Event", || async {
        let status = policies.get("open").await?.status.unwrap_or_default();
        ensure!(
            sekisho_api::condition::is_true(&status.conditions, "Ready"),
            "{status:?}"
        );
        let reasons = gate.event_reasons("missing").await?;
        ensure!(reasons.iter().any(|r| r == "PolicyNotFound"), "{reasons:?}");
        Ok(Answer::none())
    })
    .await?;

    // Held the Lease and wrote where the Ingress is reached.
    let ingresses: Api<Ingress> = gate.api();
    until("the Ingress's status", || async {
        let found = ingresses.get("site").await?;
        let published: Vec<String> = found
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip.or(i.hostname))
            .collect();
        ensure!(
            published == ["192.0.2.10", "gate.example.test"],
            "{published:?}"
        );
        Ok(Answer::none())
    })
    .await?;

    // And the account can do nothing the role does not say.
    let env = kube_testenv::TestEnv::shared().await?;
    let account = env
        .service_account_client(&gate.namespace, "sekisho-proxy")
        .await?;
    let refused = Api::<ConfigMap>::namespaced(account.clone(), &gate.namespace)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "{refused:?}"
    );
    let refused = Api::<Ingress>::namespaced(account, &gate.namespace)
        .delete("site", &Default::default())
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "{refused:?}"
    );
    Ok(())
}
