//! `sekisho login` in a browser on this machine: the loopback redirect with PKCE.

use http::{Method, StatusCode};

use crate::harness::{ALICE, APP, AUTH, LIMIT, Site, echoed, mode};

#[tokio::test]
async fn a_browser_login_caches_private_tokens_that_the_bearer_route_accepts() -> anyhow::Result<()>
{
    let site = Site::start().await?;
    let mut login = site.spawn(&["login", &site.origin(APP)])?;
    let url = login.url_after("/.sekisho/cli/authorize?").await?;
    assert!(
        url.starts_with(&site.url(AUTH, "/.sekisho/cli/authorize?")),
        "the CLI sends the browser to the auth host: {url}"
    );
    assert!(
        login.stderr().contains("To log in, visit"),
        "SEKISHO_BROWSER=none only prints the URL: {}",
        login.stderr()
    );

    let browser = site.browser().await?;
    let back = site
        .browse_and_log_in(&browser, &url, |u| {
            u.host_str() == Some("127.0.0.1") && u.path() == "/callback"
        })
        .await?;
    assert_ne!(back.port(), Some(site.idp.port()));
    browser.wait_for("#message", LIMIT).await?;
    assert!(
        browser
            .text("#message")
            .await?
            .contains("You can close this tab"),
        "the loopback page says the CLI is signed in"
    );
    let finished = login.finish().await?;
    assert!(finished.status.success(), "{finished}");
    assert!(
        finished
            .stderr
            .contains(&format!("Logged in to {} as {ALICE}", site.origin(AUTH))),
        "{finished}"
    );
    assert!(finished.stdout.is_empty(), "nothing on stdout: {finished}");

    let status = site.run(&["status"]).await?;
    assert!(status.status.success(), "{status}");
    assert!(status.stdout.contains(ALICE), "{status}");
    assert!(status.stdout.contains(&site.origin(AUTH)), "{status}");
    assert!(status.stdout.contains("valid for"), "{status}");

    // The ssh block names this binary by its absolute path, the options given, and the port.
    let block = site.run(&["ssh-config"]).await?;
    assert!(block.status.success(), "{block}");
    let lines: Vec<&str> = block.stdout.lines().collect();
    assert!(
        lines[0].starts_with("# Paste this into ~/.ssh/config"),
        "{block}"
    );
    assert_eq!(lines[1], "Host *.sekisho.test", "{block}");
    let command: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(command[0], "ProxyCommand", "{block}");
    assert!(std::path::Path::new(command[1]).is_absolute(), "{block}");
    assert_eq!(&command[2..3], ["--ca"], "{block}");
    assert!(std::path::Path::new(command[3]).is_absolute(), "{block}");
    assert_eq!(
        &command[4..],
        [
            "--connect-to",
            &format!("127.0.0.1:{}", site.port),
            "tunnel",
            &format!("%h:{}", site.port)
        ],
        "{block}"
    );

    let cache_dir = site.cache_dir();
    assert_eq!(mode(&cache_dir)?, 0o700);
    assert_eq!(mode(&cache_dir.join("tokens.json"))?, 0o600);
    let cache = site.cache()?;
    assert_eq!(
        cache["hosts"][site.origin(APP)],
        site.origin(AUTH),
        "{cache:#}"
    );
    assert_eq!(cache["last_proxy"], site.origin(APP), "{cache:#}");
    let tokens = site.cached_login()?;
    assert_eq!(tokens["user"], ALICE);
    let access = tokens["access_token"].as_str().unwrap_or_default();

    let reply = site
        .send(
            Method::GET,
            &site.url(APP, "/api/things"),
            &[
                ("accept", "application/json"),
                ("authorization", &format!("Bearer {access}")),
            ],
            "",
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "the cached token: {reply}");
    assert_eq!(
        echoed(&reply.body, "x-forwarded-email"),
        Some(ALICE),
        "{reply}"
    );
    assert_eq!(echoed(&reply.body, "authorization"), None, "{reply}");

    // The refresh token gets a new access token.
    let refresh = tokens["refresh_token"].as_str().unwrap_or_default();
    let reply = site
        .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    let answer = reply.json()?;
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["user"], ALICE);
    assert_ne!(answer["access_token"], tokens["access_token"]);
    assert!(answer["expires_in"].as_u64().unwrap_or(0) > 800, "{answer}");
    assert!(
        answer["refresh_expires_in"].as_u64().unwrap_or(0) > 3600,
        "{answer}"
    );
    Ok(())
}
