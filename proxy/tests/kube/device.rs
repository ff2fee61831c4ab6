//! Device logins across replicas: a CLI's device login started on one replica is approved or
//! denied by the person on the other and answered to the CLI on whichever it polls, once. The
//! replicas run as the proxy's own RBAC.

use anyhow::{Context as _, ensure};
use http::StatusCode;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;

use crate::harness::{Answer, Gate, Running, until};
use crate::revocation::{TwoReplicas, now, two_replicas};

const DEVICE: &str = "/.sekisho/cli/device";
const TOKEN: &str = "/.sekisho/cli/token";

/// A device login started through the replica on `https`: its device and user codes.
async fn start(
    gate: &Gate,
    https: std::net::SocketAddr,
    auth: &str,
) -> anyhow::Result<(String, String)> {
    let answer = gate.post_form(https, auth, DEVICE, String::new()).await?;
    ensure!(answer.status == StatusCode::OK, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body)?;
    let code = |field: &str| {
        body[field]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {field} in {body}"))
    };
    Ok((code("device_code")?, code("user_code")?))
}

/// The CLI's poll with `device_code` through the replica on `https`.
async fn poll(
    gate: &Gate,
    https: std::net::SocketAddr,
    auth: &str,
    device_code: &str,
) -> anyhow::Result<Answer> {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
        .append_pair("device_code", device_code)
        .finish();
    gate.post_form(https, auth, TOKEN, form).await
}

/// How many device logins the replicas share.
async fn device_leases(gate: &Gate) -> anyhow::Result<usize> {
    let leases = gate
        .api::<Lease>()
        .list(&ListParams::default().labels("sekisho.dev/device-login"))
        .await?;
    Ok(leases.items.len())
}

fn oauth_error(answer: &Answer) -> String {
    serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The person's decision on the device page of the replica on `https`, signed in with `cookie`.
async fn decide(
    gate: &Gate,
    https: std::net::SocketAddr,
    auth: &str,
    cookie: &str,
    user_code: &str,
    action: &str,
) -> anyhow::Result<Answer> {
    let page = gate
        .get_signed_in(
            https,
            auth,
            &format!("{DEVICE}?user_code={user_code}"),
            cookie,
        )
        .await?;
    ensure!(page.status == StatusCode::OK, "{page:?}");
    ensure!(
        page.body.contains(&format!("value=\"{user_code}\"")),
        "the page does not offer {user_code} for approval: {}",
        page.body
    );
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no CSRF token on the device page")?;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", csrf)
        .append_pair("action", action)
        .append_pair("user_code", user_code)
        .finish();
    gate.post_form_as(
        https,
        auth,
        &format!("{DEVICE}/approve"),
        Some(cookie),
        form,
    )
    .await
}

/// The auth host on both replicas, with its certificate (the default one, for names no
/// Ingress covers), and a session cookie of alice's there.
async fn auth_host(gate: &Gate, other: &Running) -> anyhow::Result<(String, String)> {
    let auth = format!("auth.{}.test", gate.namespace);
    gate.tls_secret("default-tls", &[&auth]).await?;
    let (_, cookie) = gate.session(&auth, "alice@uniqe.example", now())?;
    until("both replicas to serve the auth host", || async {
        for https in [gate.https, other.https()?] {
            let config = gate
                .get_signed_in(https, &auth, "/.sekisho/cli/config", &cookie)
                .await?;
            ensure!(config.status == StatusCode::OK, "{https}: {config:?}");
        }
        Ok(Answer::none())
    })
    .await?;
    Ok((auth, cookie))
}

#[tokio::test]
async fn a_device_login_started_on_one_replica_is_decided_on_the_other_and_answered_once()
-> anyhow::Result<()> {
    let TwoReplicas { gate, other, .. } = &two_replicas("device").await?;
    let (here, there) = (gate.https, other.https()?);
    let (auth, cookie) = auth_host(gate, other).await?;
    // Started here, polled and approved there, answered here.
    let (device_code, user_code) = start(gate, here, &auth).await?;
    let waiting = poll(gate, there, &auth, &device_code).await?;
    assert_eq!(
        oauth_error(&waiting),
        "authorization_pending",
        "{waiting:?}"
    );
    let approved = decide(gate, there, &auth, &cookie, &user_code, "approve").await?;
    assert_eq!(approved.status, StatusCode::OK, "{approved:?}");
    let again = decide(gate, here, &auth, &cookie, &user_code, "deny").await;
    assert!(
        again.is_err(),
        "a decided code is no longer offered: {again:?}"
    );
    let token = poll(gate, here, &auth, &device_code).await?;
    assert_eq!(token.status, StatusCode::OK, "{token:?}");
    let body: serde_json::Value = serde_json::from_str(&token.body)?;
    assert!(body["access_token"].is_string(), "{body}");
    assert!(body["refresh_token"].is_string(), "{body}");
    assert_eq!(body["user"], "alice@uniqe.example");
    // Answered once: the grant is gone from the replicas' shared state. (The other replica,
    // polled 2 s ago, would only say `slow_down` to a poll this soon: it checks the pace
    // before it asks the API.)
    let gone = poll(gate, here, &auth, &device_code).await?;
    assert_eq!(oauth_error(&gone), "invalid_grant", "{gone:?}");
    assert_eq!(device_leases(gate).await?, 0);

    // Started there, denied here, answered there.
    let (device_code, user_code) = start(gate, there, &auth).await?;
    let denied = decide(gate, here, &auth, &cookie, &user_code, "deny").await?;
    assert_eq!(denied.status, StatusCode::OK, "{denied:?}");
    let refused = poll(gate, there, &auth, &device_code).await?;
    assert_eq!(oauth_error(&refused), "access_denied", "{refused:?}");

    assert_eq!(device_leases(gate).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_waiting_device_login_is_a_lease_that_holds_neither_code() -> anyhow::Result<()> {
    let TwoReplicas { gate, other, .. } = &two_replicas("device-lease").await?;
    let (auth, _) = auth_host(gate, other).await?;
    let (device_code, user_code) = start(gate, other.https()?, &auth).await?;
    let leases = gate
        .api::<Lease>()
        .list(&ListParams::default().labels("sekisho.dev/device-login"))
        .await?;
    assert_eq!(leases.items.len(), 1);
    let text = serde_json::to_string(&leases.items[0])?;
    let letters = user_code.replace('-', "");
    for secret in [device_code.as_str(), user_code.as_str(), letters.as_str()] {
        assert!(!text.contains(secret), "the Lease shows {secret}: {text}");
    }
    assert!(
        text.contains("\"sekisho.dev/decision\":\"pending\""),
        "{text}"
    );
    Ok(())
}
