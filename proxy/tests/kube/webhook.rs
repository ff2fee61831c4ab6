//! A GitHubWebhook makes its namespace's Ingress path a webhook path: a delivery signed with
//! the Secret's value reaches the backend without a login, an unsigned or wrongly signed one
//! does not, the rest of the site keeps its login, a new secret counts at once, and another
//! namespace's GitHubWebhook cannot open the path.

use std::collections::BTreeMap;

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use sekisho_api::GitHubWebhook;

use crate::harness::{Answer, As, Gate, apply, number, until};

const BODY: &[u8] = br#"{"zen":"Keep it logically awesome."}"#;

/// `sha256=` and the hex HMAC-SHA256 of [`BODY`] with `secret`, as GitHub signs.
fn signature(secret: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, BODY);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn deliver(gate: &Gate, host: &str, secret: &str) -> anyhow::Result<Answer> {
    let signature = signature(secret);
    gate.post(
        host,
        "/hooks/github",
        &[
            ("X-Hub-Signature-256", signature.as_str()),
            ("X-GitHub-Event", "ping"),
            ("Content-Type", "application/json"),
        ],
        BODY,
    )
    .await
}

fn hook_secret(namespace: &str, value: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("hook".into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("secret".into(), value.into())])),
        ..Secret::default()
    }
}

fn github_webhook(namespace: &str, host: &str) -> anyhow::Result<GitHubWebhook> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "GitHubWebhook",
        "metadata": {"name": "deploys", "namespace": namespace},
        "spec": {
            "host": host,
            "path": "/hooks/github",
            "repositories": ["org/app"],
            "secretRef": {"name": "hook"},
            "app": {"secretRef": {"name": "github-app"}},
        },
    }))?)
}

#[tokio::test]
async fn signed_deliveries_pass_to_the_namespaces_path_and_nothing_else_does() -> anyhow::Result<()>
{
    // As the proxy's ClusterRole allows, and no more.
    let gate = Gate::start_as("webhook", As::ItsClusterRole).await?;
    let _web = gate.backend("web").await?;
    let host = format!("hooks.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate
        .site("site", &host)
        .tls("site-tls")
        .policy("staff")
        .path("/", "Prefix", "web", number(80))
        .path("/hooks/github", "Exact", "web", number(80))
        .build();
    apply(&gate.api(), &site).await?;
    until("the site, behind its login", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(
            answer.status != StatusCode::NOT_FOUND
                && answer.status != StatusCode::SERVICE_UNAVAILABLE,
            "{answer:?}"
        );
        Ok(answer)
    })
    .await?;
    let before = deliver(&gate, &host, "s3cret").await?;
    assert_ne!(
        before.status,
        StatusCode::OK,
        "a delivery passed before any GitHubWebhook: {before:?}"
    );

    apply(&gate.api(), &hook_secret(&gate.namespace, "s3cret")).await?;
    apply(&gate.api(), &github_webhook(&gate.namespace, &host)?).await?;
    until("a signed delivery to reach the backend", || async {
        let answer = deliver(&gate, &host, "s3cret").await?;
        ensure!(
            answer.status == StatusCode::OK && answer.body.starts_with("upstream: web\n"),
            "{answer:?}"
        );
        Ok(answer)
    })
    .await?;
    let forged = deliver(&gate, &host, "guessed").await?;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{forged:?}");
    let unsigned = gate.post(&host, "/hooks/github", &[], BODY).await?;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED, "{unsigned:?}");
    let elsewhere = gate
        .post(
            &host,
            "/",
            &[("X-Hub-Signature-256", &signature("s3cret"))],
            BODY,
        )
        .await?;
    assert_ne!(
        elsewhere.status,
        StatusCode::OK,
        "the rest of the site lost its login: {elsewhere:?}"
    );

    // A new secret counts at once; the old one no more.
    apply(&gate.api(), &hook_secret(&gate.namespace, "n3w-secret")).await?;
    until("the new secret", || async {
        let answer = deliver(&gate, &host, "n3w-secret").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    let old = deliver(&gate, &host, "s3cret").await?;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{old:?}");
    Ok(())
}

#[tokio::test]
async fn another_namespaces_github_webhook_cannot_open_a_path_and_is_told_why() -> anyhow::Result<()>
{
    let gate = Gate::start("webhook-owner").await?;
    let _web = gate.backend("web").await?;
    let host = format!("hooks.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate
        .site("site", &host)
        .tls("site-tls")
        .policy("staff")
        .path("/hooks/github", "Exact", "web", number(80))
        .build();
    apply(&gate.api(), &site).await?;
    until("the owner's path, behind its login", || async {
        let answer = deliver(&gate, &host, "known").await?;
        ensure!(answer.status != StatusCode::NOT_FOUND, "{answer:?}");
        Ok(answer)
    })
    .await?;

    let env = kube_testenv::TestEnv::shared().await?;
    let intruder = env.namespace("webhook-intruder").await?;
    let client = env.client().await?;
    Api::<Secret>::namespaced(client.clone(), &intruder)
        .create(&PostParams::default(), &hook_secret(&intruder, "known"))
        .await?;
    Api::<GitHubWebhook>::namespaced(client.clone(), &intruder)
        .create(&PostParams::default(), &github_webhook(&intruder, &host)?)
        .await?;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client, &intruder);
    until("an Event on the intruder's GitHubWebhook", || async {
        let list = events.list(&kube::api::ListParams::default()).await?;
        let reasons: Vec<String> = list.items.into_iter().filter_map(|e| e.reason).collect();
        ensure!(
            reasons.iter().any(|r| r == "WebhookRouteNotFound"),
            "{reasons:?}"
        );
        Ok(Answer::none())
    })
    .await?;
    let answer = deliver(&gate, &host, "known").await?;
    assert_ne!(
        answer.status,
        StatusCode::OK,
        "another namespace opened the path: {answer:?}"
    );
    Ok(())
}
