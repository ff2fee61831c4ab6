//! Logins in a real browser: the redirect dance through the auth host and devidp, what the
//! upstream sees afterwards, the denied page, logout, and a WebSocket that logout closes.

use std::time::Duration;

use http::StatusCode;
use sekisho_testkit::{Browser, eventually};

use crate::harness::{
    ALICE, APP, AUTH, CAROL, Jar, LIMIT, NAS, SESSION_COOKIE, Site, SiteOptions, open_websocket,
};
use crate::support::echoed;

/// The text the browser shows.
async fn page_text(browser: &Browser) -> anyhow::Result<String> {
    Ok(browser
        .execute("return document.body ? document.body.innerText : '';")
        .await?
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The value of the app host's session cookie in the browser, if any.
async fn session_cookie(browser: &Browser) -> anyhow::Result<Option<sekisho_testkit::Cookie>> {
    Ok(browser
        .cookies()
        .await?
        .into_iter()
        .find(|cookie| cookie.name == SESSION_COOKIE))
}

#[tokio::test]
async fn alice_logs_in_from_the_browser_and_the_upstream_sees_her_verified_identity()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let browser = site.browser_login(ALICE).await?;

    let text = page_text(&browser).await?;
    assert!(
        text.starts_with("upstream: app"),
        "after the login the page is the upstream's answer: {text}"
    );
    let seen = echoed(&text);
    assert_eq!(
        seen.get("path").and_then(|v| v.to_str().ok()),
        Some("/hello")
    );
    assert_eq!(
        seen.get("x-forwarded-email").and_then(|v| v.to_str().ok()),
        Some(ALICE),
        "{text}"
    );
    assert_eq!(
        seen.get("x-forwarded-user").and_then(|v| v.to_str().ok()),
        Some("alice"),
        "X-Forwarded-User is the subject: {text}"
    );
    let groups = seen
        .get("x-forwarded-groups")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        groups.split(',').any(|g| g.trim() == "staff"),
        "X-Forwarded-Groups has staff: {text}"
    );
    let assertion = seen
        .get("x-sekisho-assertion")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("the upstream got no X-Sekisho-Assertion: {text}"));
    let claims = site.verify_assertion(assertion, APP).await?;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.email, ALICE);
    assert!(claims.groups.iter().any(|g| g == "staff"), "{claims:?}");
    assert!(
        claims.exp > claims.iat && claims.exp - claims.iat <= 300,
        "the assertion lives at most 5 minutes: {claims:?}"
    );
    for cookie in seen.get_all("cookie") {
        let cookie = cookie.to_str().unwrap_or_default();
        assert!(
            !cookie.contains("__Host-sekisho"),
            "the upstream saw the proxy's own cookie: {cookie}"
        );
    }

    let cookie = session_cookie(&browser)
        .await?
        .unwrap_or_else(|| panic!("the browser holds no {SESSION_COOKIE} cookie for {APP}"));
    assert!(cookie.secure, "{cookie:?}");
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(
        cookie.domain.as_deref(),
        Some(APP),
        "a host-only cookie (no Domain): {cookie:?}"
    );
    assert_eq!(cookie.path.as_deref(), Some("/"), "{cookie:?}");
    assert_eq!(cookie.same_site.as_deref(), Some("Lax"), "{cookie:?}");
    Ok(())
}

#[tokio::test]
async fn carol_is_signed_in_but_sees_the_denied_page_naming_her_and_a_request_id()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let browser = site.browser_login(CAROL).await?;
    let text = page_text(&browser).await?;
    assert!(
        !text.starts_with("upstream: app"),
        "carol is not staff and must not reach the upstream: {text}"
    );
    assert!(
        text.contains(CAROL) || text.contains("Carol"),
        "the denied page names carol: {text}"
    );
    assert!(
        site.app.received_at("/hello").is_empty(),
        "the upstream saw a request for carol: {:?}",
        site.app.received()
    );

    // The same session outside the browser: the status and the request id.
    let cookie = session_cookie(&browser)
        .await?
        .unwrap_or_else(|| panic!("carol's login set no {SESSION_COOKIE} cookie"));
    let reply = site
        .get(
            &site.url(APP, "/hello"),
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("cookie", &Jar::with(SESSION_COOKIE, &cookie.value).header()),
            ],
        )
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply}");
    let request_id = reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id: {reply}"));
    assert!(
        reply.body.contains(request_id),
        "the denied page shows the request id {request_id}: {reply}"
    );
    assert!(reply.body.contains(CAROL), "{reply}");
    assert!(
        reply.body.contains("/.sekisho/"),
        "the denied page links to sign in as someone else: {reply}"
    );
    Ok(())
}

#[tokio::test]
async fn logout_ends_the_session_and_the_next_visit_asks_for_a_login_again() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let browser = site.browser_login(ALICE).await?;
    let before = session_cookie(&browser)
        .await?
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie after the login"));

    browser.goto(&site.url(APP, "/.sekisho/logout")).await?;
    // RP-initiated logout at devidp ends at the post-logout redirect: the auth host's root.
    browser
        .wait_for_url(
            |url| url.host_str() == Some(AUTH) && url.path() == "/",
            LIMIT,
        )
        .await?;

    // The old cookie is no session any more, even replayed by hand.
    let reply = site
        .get(
            &site.url(APP, "/hello"),
            &[
                ("accept", "application/json"),
                ("cookie", &Jar::with(SESSION_COOKIE, &before.value).header()),
            ],
        )
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "the session cookie from before the logout still works: {reply}"
    );

    // The browser is asked to log in again: devidp shows its form (its session ended too).
    browser.goto(&site.url(APP, "/hello")).await?;
    browser
        .wait_for("#login-form", LIMIT)
        .await
        .map_err(|error| {
            anyhow::anyhow!("after logout, /hello does not lead to devidp's login form: {error}")
        })?;
    Ok(())
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_session_is_logged_out() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let browser = site.browser_login(ALICE).await?;
    websocket_echoes_until_logout(&site, &browser, &format!("wss://{APP}:{}/ws", site.port)).await
}

#[tokio::test]
async fn a_websocket_to_an_upstream_behind_an_agent_echoes_and_closes_on_logout()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let _agent = site.start_agent().await?;
    let browser = site.browser_login(ALICE).await?;
    // A page of the host first, so the browser holds that host's session.
    browser.goto(&site.url(NAS, "/page")).await?;
    browser
        .wait_for_url(|url| url.host_str() == Some(NAS), LIMIT)
        .await?;
    websocket_echoes_until_logout(&site, &browser, &format!("wss://{NAS}:{}/ws", site.port)).await
}

/// Opens `ws_url` from the browser's page, checks that it echoes, logs the page's host out,
/// and checks that the WebSocket is then closed with 1008 (policy violation) on both sides: the
/// browser and the upstream each get a close frame, and the browser's closing handshake
/// completes.
async fn websocket_echoes_until_logout(
    site: &Site,
    browser: &Browser,
    ws_url: &str,
) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(LIMIT, open_websocket(browser, ws_url)).await??;
    assert_eq!(
        answer, "message ping",
        "the WebSocket works while logged in"
    );

    let status = browser
        .execute(
            "return fetch('/.sekisho/logout', {redirect: 'manual', credentials: 'same-origin'})
                .then((r) => r.type + ' ' + r.status);",
        )
        .await?;
    eprintln!("logout from the page: {status}");

    let code = eventually(Duration::from_secs(10), || async {
        match browser.execute("return window.sekishoClose;").await {
            Ok(serde_json::Value::Number(code)) => Ok(code),
            Ok(other) => Err(format!("still open (close code {other})")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .map_err(|error| anyhow::anyhow!("the WebSocket stays open after logout: {error}"))?;
    assert_eq!(
        code.as_u64(),
        Some(1008),
        "a logged-out WebSocket closes with 1008 (policy violation)"
    );
    assert_eq!(
        browser.execute("return window.sekishoCloseClean;").await?,
        serde_json::Value::Bool(true),
        "the browser's closing handshake completed"
    );
    let closes = eventually(Duration::from_secs(10), || async {
        let closes = site.ws.closes();
        match closes.is_empty() {
            true => Err("no close frame yet"),
            false => Ok(closes),
        }
    })
    .await
    .map_err(|error| anyhow::anyhow!("the upstream got no close frame after logout: {error}"))?;
    assert_eq!(
        closes,
        [1008],
        "the upstream's WebSocket is closed with 1008 (policy violation), once"
    );
    Ok(())
}

#[tokio::test]
async fn an_upstream_behind_an_agent_is_reached_after_the_browser_login() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    // Without the agent, the host's upstream is out of reach.
    let offline = site.get(&site.url(NAS, "/through"), &[]).await?;
    assert_ne!(offline.status, StatusCode::OK, "{offline}");

    let _agent = site.start_agent().await?;
    let browser = site.browser_login(ALICE).await?;
    browser.goto(&site.url(NAS, "/through-the-agent")).await?;
    browser
        .wait_for_url(
            |url| url.host_str() == Some(NAS) && url.path() == "/through-the-agent",
            LIMIT,
        )
        .await?;
    let text = page_text(&browser).await?;
    assert!(text.starts_with("upstream: app"), "{text}");
    let seen = echoed(&text);
    assert_eq!(
        seen.get("path").and_then(|v| v.to_str().ok()),
        Some("/through-the-agent")
    );
    assert_eq!(
        seen.get("x-forwarded-email").and_then(|v| v.to_str().ok()),
        Some(ALICE),
        "the upstream behind the agent sees the verified identity: {text}"
    );
    assert!(
        seen.get("cookie")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|c| !c.contains(SESSION_COOKIE)),
        "the proxy's cookie never reaches the upstream: {text}"
    );
    Ok(())
}
