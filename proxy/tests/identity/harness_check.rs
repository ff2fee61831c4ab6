//! The harness itself: these pass with a proxy that knows nothing of identity, so that a
//! failure elsewhere in this binary is about the proxy, not about the parts around it.

use http::StatusCode;

use crate::harness::{
    ALICE, APP, Agent, LIMIT, LOOPBACK_CALLBACK, Site, SiteOptions, id_token, jwt_claims,
    open_websocket,
};

#[tokio::test]
async fn the_site_starts_and_the_browser_trusts_the_proxy_on_the_chosen_port() -> anyhow::Result<()>
{
    let site = Site::start(SiteOptions {
        without_identity: true,
        ..SiteOptions::default()
    })
    .await?;
    let banner = site.idp.stderr();
    let callback = site.url("auth.sekisho.test", "/.sekisho/callback");
    assert!(
        banner.contains(&callback) && banner.contains(LOOPBACK_CALLBACK),
        "devidp registered the proxy's callback and the loopback one: {banner}"
    );

    // The plain client reaches the proxy by name, whatever the route then decides.
    let reply = site.get(&site.url(APP, "/hello"), &[]).await?;
    assert!(
        reply.header("x-request-id").is_some(),
        "the proxy answered: {reply}"
    );

    let browser = site.browser().await?;
    browser.goto(&site.url(APP, "/hello")).await?;
    let shown = browser.execute("return document.body.innerText;").await?;
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        !shown.contains("NET::ERR_CERT"),
        "the browser trusts the proxy's certificate: {shown}"
    );
    Ok(())
}

#[tokio::test]
async fn the_agent_logs_in_at_devidp_without_a_browser_and_gets_id_tokens() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions {
        without_identity: true,
        ..SiteOptions::default()
    })
    .await?;
    let token = id_token(&site.idp, "sekisho", ALICE).await?;
    let claims = jwt_claims(&token)?;
    assert_eq!(claims["aud"], "sekisho", "{claims}");
    assert_eq!(claims["email"], ALICE, "{claims}");
    assert_eq!(claims["iss"], site.idp.issuer(), "{claims}");
    assert!(
        claims["groups"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|g| g == "staff")),
        "{claims}"
    );
    let token = id_token(&site.idp, "sekisho-cli", ALICE).await?;
    assert_eq!(jwt_claims(&token)?["aud"], "sekisho-cli");

    // A wrong password never leaves devidp.
    let outcome = Agent::default()
        .authorize(
            &site.idp,
            &format!(
                "{}/auth?client_id=sekisho&response_type=code&redirect_uri={LOOPBACK_CALLBACK}\
                 &scope=openid&state=s&nonce=n&code_challenge={}&code_challenge_method=S256",
                site.idp.issuer(),
                sekisho_testkit::pkce().1
            ),
            "nobody@uniqe.example",
        )
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    Ok(())
}

#[tokio::test]
async fn the_websocket_echo_answers_a_page_script() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions {
        without_identity: true,
        ..SiteOptions::default()
    })
    .await?;
    let browser = site.browser().await?;
    // Straight to the upstreams, from a page of the echo upstream: whatever the proxy's
    // routes decide, the script and the echo are checked here.
    browser
        .goto(&format!("http://{}/page", site.app.addr))
        .await?;
    let answer = tokio::time::timeout(
        LIMIT,
        open_websocket(&browser, &format!("ws://{}/ws", site.ws.addr)),
    )
    .await??;
    assert_eq!(answer, "message ping");
    let status = site.get(&site.url(APP, "/public"), &[]).await?.status;
    assert_ne!(status, StatusCode::BAD_GATEWAY, "the echo upstream is up");
    Ok(())
}
