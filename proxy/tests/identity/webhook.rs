//! The `/hooks/github` route: a GitHub `X-Hub-Signature-256` instead of a login.

use http::{Method, StatusCode};

use crate::harness::{APP, Site, SiteOptions, WEBHOOK_SECRET};

const PAYLOAD: &str = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;

/// `sha256=<hex>` of `body` under `secret`, as GitHub computes it.
fn signature(secret: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[test]
fn the_signature_helper_matches_githubs_documented_example() {
    assert_eq!(
        signature("It's a Secret to Everybody", "Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[tokio::test]
async fn a_correctly_signed_webhook_reaches_the_upstream_and_a_bad_or_missing_one_does_not()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let url = site.url(APP, "/hooks/github");
    let json = ("content-type", "application/json");
    let event = ("x-github-event", "ping");

    let good = signature(WEBHOOK_SECRET, PAYLOAD);
    let reply = site
        .send(
            Method::POST,
            &url,
            &[json, event, ("x-hub-signature-256", &good)],
            PAYLOAD,
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "a signed delivery: {reply}");
    assert!(reply.answered_by_upstream(), "{reply}");
    let delivered = site.app.received_at("/hooks/github");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].complete, "the upstream got the whole body");
    assert_eq!(delivered[0].method, Method::POST);
    assert_eq!(
        delivered[0]
            .headers
            .get("x-hub-signature-256")
            .map(|v| v.as_bytes()),
        Some(good.as_bytes()),
        "the upstream can check the signature itself"
    );

    let wrong_secret = signature("not the secret", PAYLOAD);
    let other_body = signature(WEBHOOK_SECRET, "{}");
    let cases: [(&str, Option<&str>); 5] = [
        ("signed with another secret", Some(&wrong_secret)),
        ("signed over another body", Some(&other_body)),
        ("a malformed signature", Some("sha256=zz")),
        (
            "an uppercase algorithm",
            Some(&good.replace("sha256", "SHA256")),
        ),
        ("no signature", None),
    ];
    for (what, header) in cases {
        let mut headers = vec![json, event];
        if let Some(header) = header {
            headers.push(("x-hub-signature-256", header));
        }
        let reply = site.send(Method::POST, &url, &headers, PAYLOAD).await?;
        assert!(
            reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN,
            "{what}: 401 or 403, got {reply}"
        );
        assert!(!reply.answered_by_upstream(), "{what}: {reply}");
        let complete = site
            .app
            .received_at("/hooks/github")
            .iter()
            .filter(|seen| seen.complete)
            .count();
        assert_eq!(
            complete, 1,
            "{what}: the upstream received the whole request"
        );
    }
    Ok(())
}
