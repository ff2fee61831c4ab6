//! Cross-site WebSocket hijacking, in a real browser: a page on a sibling host of the same site
//! (whose requests carry the app host's `SameSite=Lax` cookie) opens a WebSocket to the app.

use sekisho_testkit::Browser;

use crate::harness::{ALICE, APP, LIMIT, NAS, OTHER, Site, SiteOptions, open_websocket};

/// Goes to a page on `host` (the login on the app host signs the browser in there too) and
/// waits until it is shown.
async fn visit(site: &Site, browser: &Browser, host: &str) -> anyhow::Result<()> {
    browser.goto(&site.url(host, "/page")).await?;
    browser
        .wait_for_url(|url| url.host_str() == Some(host), LIMIT)
        .await?;
    Ok(())
}

/// Opens `url` from the browser's current page, within the limit.
async fn websocket_from_page(browser: &Browser, url: &str) -> anyhow::Result<String> {
    tokio::time::timeout(LIMIT, open_websocket(browser, url)).await?
}

#[tokio::test]
async fn websocket_handshakes_from_pages_on_other_origins_are_refused_unless_the_route_lists_them()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let browser = site.browser_login(ALICE).await?;
    let app_ws = format!("wss://{APP}:{}/ws", site.port);

    // From the app's own page the WebSocket works.
    assert_eq!(
        websocket_from_page(&browser, &app_ws).await?,
        "message ping",
        "a page on the app host opens its own WebSocket"
    );

    // From a page on the sibling host, with alice's cookie for the app host sent along, it is
    // refused before the upstream sees anything.
    visit(&site, &browser, OTHER).await?;
    let before = site.ws.connections();
    let answer = websocket_from_page(&browser, &app_ws).await?;
    assert!(
        answer.starts_with("closed "),
        "a page on {OTHER} opened a WebSocket to {APP}: {answer}"
    );
    assert_eq!(
        site.ws.connections(),
        before,
        "the WebSocket upstream saw a connection from a page on another origin"
    );

    // A route that lists the sibling's origin lets its pages in.
    let shared = format!("wss://{APP}:{}/ws-shared", site.port);
    assert_eq!(
        websocket_from_page(&browser, &shared).await?,
        "message ping",
        "/ws-shared lists https://{OTHER}:PORT in websocket_origins"
    );
    Ok(())
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_open_a_websocket_to_an_upstream_behind_an_agent()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let _agent = site.start_agent().await?;
    let browser = site.browser_login(ALICE).await?;
    let nas_ws = format!("wss://{NAS}:{}/ws", site.port);

    // The browser holds a session for the NAS host, and its own page opens the WebSocket.
    visit(&site, &browser, NAS).await?;
    assert_eq!(
        websocket_from_page(&browser, &nas_ws).await?,
        "message ping"
    );

    visit(&site, &browser, OTHER).await?;
    let before = site.ws.connections();
    let answer = websocket_from_page(&browser, &nas_ws).await?;
    assert!(
        answer.starts_with("closed "),
        "a page on {OTHER} opened a WebSocket to {NAS}: {answer}"
    );
    assert_eq!(
        site.ws.connections(),
        before,
        "the agent's WebSocket upstream saw a connection from a page on another origin"
    );
    Ok(())
}
