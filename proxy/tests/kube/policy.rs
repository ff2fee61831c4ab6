//! Access comes from AccessPolicy objects named by the Ingress's annotation; without one, a
//! person must sign in (and is then refused); an invalid policy is reported in its status.

use anyhow::ensure;
use http::StatusCode;
use kube::api::Api;
use sekisho_api::{AccessPolicy, AccessPolicySpec, PolicyPath, Rule, Subject};

use crate::harness::{Gate, Site, apply, number, until};

/// A site for `host` to Service `web`, with its certificate from Secret `site-tls`.
fn site(gate: &Gate, name: &str, host: &str) -> Site {
    gate.site(name, host)
        .tls("site-tls")
        .path("/", "Prefix", "web", number(80))
}

/// A policy that lets `/open` through without login and everything else only to `staff`.
fn open_at(path: &str) -> AccessPolicySpec {
    AccessPolicySpec {
        allow: vec![Subject {
            group: Some("staff".into()),
            ..Subject::default()
        }],
        rules: vec![Rule {
            paths: vec![PolicyPath {
                path: path.into(),
                ..PolicyPath::default()
            }],
            public: true,
            ..Rule::default()
        }],
        ..AccessPolicySpec::default()
    }
}

#[tokio::test]
async fn an_access_policy_decides_and_its_edits_change_the_decisions() -> anyhow::Result<()> {
    let gate = Gate::start("policy").await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let mut policy = AccessPolicy::new("staff", open_at("/open"));
    policy.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &policy).await?;
    apply(
        &gate.api(),
        &site(&gate, "site", &host).policy("staff").build(),
    )
    .await?;

    until("the policy's public path to be served", || async {
        let answer = gate.get(&host, "/open/x").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    // Everything else needs a login, which this proxy does not have.
    let closed = gate.get(&host, "/closed").await?;
    assert_ne!(closed.status, StatusCode::OK, "{closed:?}");

    let mut edited = AccessPolicy::new("staff", open_at("/closed"));
    edited.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &edited).await?;
    until("the edit to change the decision", || async {
        let answer = gate.get(&host, "/closed").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    let open = gate.get(&host, "/open/x").await?;
    assert_ne!(open.status, StatusCode::OK, "{open:?}");

    // The policy's status says the proxy serves it, for this generation.
    let api: Api<AccessPolicy> = gate.api();
    until("the policy's status", || async {
        let found = api.get("staff").await?;
        let status = found.status.unwrap_or_default();
        ensure!(
            sekisho_api::condition::is_true(&status.conditions, "Ready")
                && status.observed_generation == found.metadata.generation,
            "{status:?}"
        );
        Ok(crate::harness::Answer::none())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_ingress_without_a_policy_is_not_served_to_anyone() -> anyhow::Result<()> {
    let gate = Gate::start("no-policy").await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    apply(&gate.api(), &site(&gate, "plain", &host).build()).await?;
    let missing = site(&gate, "missing", &format!("missing.{host}")).policy("nobody-wrote-it");
    apply(&gate.api(), &missing.build()).await?;
    until("the unannotated Ingress to be routed", || async {
        let answer = gate.get(&host, "/").await?;
        // Routed (not 404), and refused: this proxy has no login to offer.
        ensure!(answer.status == StatusCode::FORBIDDEN, "{answer:?}");
        ensure!(answer.body.contains("no login is configured"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    until(
        "an Event on the Ingress naming a missing policy",
        || async {
            let reasons = gate.event_reasons("missing").await?;
            ensure!(reasons.iter().any(|r| r == "PolicyNotFound"), "{reasons:?}");
            Ok(crate::harness::Answer::none())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_policy_the_schema_lets_through_but_the_proxy_cannot_use_is_reported_in_its_status()
-> anyhow::Result<()> {
    let gate = Gate::start("bad-policy").await?;
    // `..` passes the schema (a leading `/`, no query) but is not a normal path.
    let mut policy = AccessPolicy::new("odd", open_at("/a/../b"));
    policy.metadata.namespace = Some(gate.namespace.clone());
    apply(&gate.api(), &policy).await?;
    let api: Api<AccessPolicy> = gate.api();
    until("the policy's status to say why", || async {
        let status = api.get("odd").await?.status.unwrap_or_default();
        let ready = sekisho_api::condition::find(&status.conditions, "Ready")
            .ok_or_else(|| anyhow::anyhow!("no Ready condition yet"))?;
        ensure!(
            ready.status == "False"
                && ready.reason == "Invalid"
                && ready.message.contains("spec.rules[0].paths[0].path"),
            "{ready:?}"
        );
        Ok(crate::harness::Answer::none())
    })
    .await?;
    Ok(())
}
