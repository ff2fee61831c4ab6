//! `sekisho tunnel HOST` against the proxy's tunnel endpoint, for a route whose target is the
//! harness's TCP echo server (the proxy dials it). When the proxy says "not logged in", the CLI
//! logs in on stderr, remembers the host and tries again, and only the stream's bytes reach
//! stdout; the next tunnel goes straight through with the cached token.

use http::Method;

use crate::harness::{ALICE, APP, AUTH, LIMIT, SSH, Site};

fn on_device_page(url: &sekisho_testkit::Url) -> bool {
    url.host_str() == Some(AUTH) && url.path() == "/.sekisho/cli/device"
}

#[tokio::test]
async fn a_tunnel_that_is_not_logged_in_logs_in_on_stderr_and_then_carries_only_the_stream()
-> anyhow::Result<()> {
    let site = Site::start().await?;
    let ssh_host = format!("{SSH}:{}", site.port);

    // The auth host vouches for the tunnel host (the CLI asks before it sends it a token),
    // though no HTTP route serves it.
    let reply = site
        .send(
            Method::GET,
            &site.url(AUTH, &format!("/.sekisho/cli/config?host={SSH}")),
            &[],
            "",
        )
        .await?;
    assert_eq!(reply.json()?["serves_host"], true, "{reply}");

    let hello = "SSH-2.0-test\r\n";
    let mut tunnel = site.spawn_with_input(
        &["tunnel", "--no-browser", &ssh_host],
        Some(hello.as_bytes().to_vec()),
    )?;
    let complete = tunnel.url_after("?user_code=").await?;
    assert!(
        complete.starts_with(&site.url(AUTH, "/.sekisho/cli/device?user_code=")),
        "the login is at the auth host the refusal named: {complete}"
    );
    assert_eq!(
        site.echo.connections(),
        0,
        "a refused tunnel does not reach its target"
    );
    let browser = site.browser().await?;
    site.browse_and_log_in(&browser, &complete, on_device_page)
        .await?;
    browser.wait_for("#approve", LIMIT).await?;
    browser.click("#approve").await?;
    let finished = tunnel.finish().await?;
    assert!(finished.status.success(), "{finished}");
    assert_eq!(
        finished.stdout, hello,
        "stdout carries the echoed stream and nothing else: {finished}"
    );
    assert!(
        finished
            .stderr
            .contains(&format!("needs a login at {}", site.origin(AUTH)))
            && finished.stderr.contains(&format!("as {ALICE}")),
        "{finished}"
    );
    assert_eq!(site.echo.connections(), 1, "{finished}");
    let cache = site.cache()?;
    assert_eq!(
        cache["hosts"][format!("https://{ssh_host}")],
        site.origin(AUTH),
        "the host is remembered: {cache:#}"
    );
    let login = site.cached_login()?;

    // The next tunnel opens at once with the cached token: no login, nothing on stderr, and
    // a stream longer than one copy buffer comes back whole.
    let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let again = site
        .spawn_with_input(&["tunnel", &ssh_host], Some(long.clone().into_bytes()))?
        .finish()
        .await?;
    assert!(again.status.success(), "{again}");
    assert!(
        again.stdout == long,
        "the stream comes back whole: {} of {} bytes, stderr: {}",
        again.stdout.len(),
        long.len(),
        again.stderr
    );
    assert!(again.stderr.is_empty(), "no login, no message: {again}");
    assert_eq!(site.echo.connections(), 2, "{again}");
    assert_eq!(site.cached_login()?, login, "the cached token as it was");

    // A host without a tunnel route: 15, without a login, and no stream.
    let app_host = format!("{APP}:{}", site.port);
    let unknown = site
        .spawn_with_input(&["tunnel", &app_host], Some(b"nope\n".to_vec()))?
        .finish()
        .await?;
    assert_eq!(unknown.status.code(), Some(15), "{unknown}");
    assert!(unknown.stdout.is_empty(), "{unknown}");
    assert!(
        unknown.stderr.contains("serves no tunnel for this host")
            && !unknown.stderr.contains("login"),
        "{unknown}"
    );
    assert_eq!(site.echo.connections(), 2, "{unknown}");

    // Logged out, a tunnel that cannot log in (its device code is denied) exits with 10.
    assert!(
        site.run(&["logout", &site.origin(AUTH)])
            .await?
            .status
            .success()
    );
    let mut denied =
        site.spawn_with_input(&["tunnel", "--no-browser", &ssh_host], Some(Vec::new()))?;
    let complete = denied.url_after("?user_code=").await?;
    site.browse_and_log_in(&browser, &complete, on_device_page)
        .await?;
    browser.wait_for("#deny", LIMIT).await?;
    browser.click("#deny").await?;
    let finished = denied.finish().await?;
    assert_eq!(finished.status.code(), Some(10), "{finished}");
    assert!(finished.stdout.is_empty(), "{finished}");
    assert!(finished.stderr.contains("denied"), "{finished}");
    assert_eq!(site.echo.connections(), 2, "{finished}");
    Ok(())
}
