//! `Authorization: Bearer` on the `bearer: true` route `/api`, with ID tokens from devidp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use sekisho_testkit::Idp;

use crate::harness::{
    ALICE, APP, AUTH, CAROL, LOOPBACK_CALLBACK, Reply, Site, SiteOptions, id_token, jwt_claims,
};
use crate::support::echoed;

async fn call(site: &Site, path: &str, token: &str) -> anyhow::Result<Reply> {
    site.get(
        &site.url(APP, path),
        &[
            ("accept", "application/json"),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await
}

#[tokio::test]
async fn bearer_tokens_on_the_api_route_are_verified() -> anyhow::Result<()> {
    // A second provider whose ID tokens live one second, trusted with a one-second skew.
    let short = Idp::builder()
        .redirect_uri(LOOPBACK_CALLBACK)
        .id_token_ttl(Duration::from_secs(1))
        .start()
        .await?;
    let site = Site::start(SiteOptions {
        extra_bearer_issuers: vec![format!(
            "{{issuer: '{}', audiences: [sekisho], max_clock_skew: 1s}}",
            short.issuer()
        )],
        ..SiteOptions::default()
    })
    .await?;

    let token = id_token(&site.idp, "sekisho", ALICE).await?;
    let reply = call(&site, "/api/things", &token).await?;
    assert_eq!(reply.status, StatusCode::OK, "alice's ID token: {reply}");
    assert!(reply.answered_by_upstream(), "{reply}");
    let seen = echoed(&reply.body);
    assert_eq!(
        seen.get("x-forwarded-email").and_then(|v| v.to_str().ok()),
        Some(ALICE),
        "{reply}"
    );
    assert_eq!(
        seen.get("x-forwarded-user").and_then(|v| v.to_str().ok()),
        Some("alice"),
        "{reply}"
    );
    let assertion = seen
        .get("x-sekisho-assertion")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Sekisho-Assertion for a bearer request: {reply}"));
    assert_eq!(site.verify_assertion(assertion, APP).await?.sub, "alice");
    assert!(
        seen.get("authorization").is_none(),
        "the bearer token itself was passed on: {reply}"
    );

    // Bearer tokens count only where the route says so.
    let reply = call(&site, "/hello", &token).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "a bearer token on a route without `bearer: true`: {reply}"
    );

    let cli = id_token(&site.idp, "sekisho-cli", ALICE).await?;
    assert_eq!(jwt_claims(&cli)?["aud"], "sekisho-cli");
    let reply = call(&site, "/api/things", &cli).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "a token for another audience: {reply}"
    );

    let mut forged = token.clone();
    forged.truncate(token.len() - 4);
    forged.push_str("AAAA");
    let reply = call(&site, "/api/things", &forged).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "a bad signature: {reply}"
    );

    let expiring = id_token(&short, "sekisho", ALICE).await?;
    let exp = jwt_claims(&expiring)?["exp"].as_u64().unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // Past exp plus the one-second skew. The expiry is what is under test, and it is on the
    // wall clock: devidp signs `exp` from its own clock and the proxy checks it against the
    // system's, so the test waits for that time to come (asking earlier would send the still
    // valid token upstream).
    tokio::time::sleep(Duration::from_secs((exp + 2).saturating_sub(now))).await;
    let reply = call(&site, "/api/things", &expiring).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "an expired token: {reply}"
    );
    assert_eq!(
        site.app.received_at("/api/things").len(),
        1,
        "only alice's valid token reached the upstream: {:?}",
        site.app.received()
    );
    Ok(())
}

#[tokio::test]
async fn a_bearer_issuer_with_hosted_domains_refuses_tokens_from_any_other_domain()
-> anyhow::Result<()> {
    // A second provider, trusted for bearer tokens of uniqe.example accounts only.
    let workspace = Idp::builder()
        .redirect_uri(LOOPBACK_CALLBACK)
        .start()
        .await?;
    let site = Site::start(SiteOptions {
        extra_bearer_issuers: vec![format!(
            "{{issuer: '{}', audiences: [sekisho], hosted_domains: [Uniqe.Example]}}",
            workspace.issuer()
        )],
        ..SiteOptions::default()
    })
    .await?;

    let alice = id_token(&workspace, "sekisho", ALICE).await?;
    assert_eq!(jwt_claims(&alice)?["hd"], "uniqe.example");
    let reply = call(&site, "/api/things", &alice).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "alice of uniqe.example: {reply}"
    );

    // Carol's account has no hosted domain: her token is refused before any policy looks at
    // her (a policy refusal would be 403).
    let carol = id_token(&workspace, "sekisho", CAROL).await?;
    assert!(jwt_claims(&carol)?.get("hd").is_none());
    let reply = call(&site, "/api/things", &carol).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "a token without hd from an issuer that requires one: {reply}"
    );
    // The site's own provider names no hosted domains: carol's token from it is verified, and
    // then refused by the policy.
    let carol = id_token(&site.idp, "sekisho", CAROL).await?;
    let reply = call(&site, "/api/things", &carol).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply}");
    Ok(())
}

#[tokio::test]
async fn sekisho_user_tokens_are_accepted_and_tokens_for_another_proxy_are_not()
-> anyhow::Result<()> {
    use sekisho_identity::signing::{Identity, SigningKeys};
    use sekisho_identity::user_token::UserTokens;
    use std::sync::Arc;

    let site = Site::start(SiteOptions::default()).await?;
    let keys = Arc::new(SigningKeys::load(&site.signing_keys)?);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let groups = vec!["staff".to_owned()];
    let alice = Identity {
        subject: "alice",
        email: ALICE,
        groups: &groups,
    };
    let ours = UserTokens::new(keys.clone(), format!("https://{AUTH}"), AUTH);
    let token = ours.issue([7; 16], &alice, now)?.token;
    let reply = call(&site, "/api/me", token.expose()).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_eq!(echoed(&reply.body)["x-forwarded-email"], ALICE, "{reply}");

    // Signed with the right key, but for another proxy.
    let elsewhere = UserTokens::new(keys, format!("https://{AUTH}"), "auth.elsewhere.test");
    let token = elsewhere.issue([7; 16], &alice, now)?.token;
    let reply = call(&site, "/api/me", token.expose()).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply}");
    Ok(())
}
