//! `sekisho login --no-browser`: the device flow, approved (or denied) in a browser.

use crate::harness::{ALICE, APP, AUTH, LIMIT, Site};

fn on_device_page(url: &sekisho_testkit::Url) -> bool {
    url.host_str() == Some(AUTH) && url.path() == "/.sekisho/cli/device"
}

#[tokio::test]
async fn a_device_login_completes_once_approved_and_a_denied_one_exits_with_10()
-> anyhow::Result<()> {
    let site = Site::start().await?;
    let mut login = site.spawn(&["login", "--no-browser", &site.origin(APP)])?;
    let complete = login.url_after("?user_code=").await?;
    let printed = login.stderr();
    let code = complete
        .split("user_code=")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(code.len(), 9, "a code like XXXX-XXXX: {printed}");
    assert!(
        printed.contains(&site.url(AUTH, "/.sekisho/cli/device"))
            && printed.contains(&format!("enter the code {code}")),
        "the verification URL and the code are on stderr: {printed}"
    );

    let browser = site.browser().await?;
    site.browse_and_log_in(&browser, &complete, on_device_page)
        .await?;
    browser.wait_for("#approve", LIMIT).await?;
    let shown = browser
        .execute("return document.getElementById('user_code').value;")
        .await?;
    assert_eq!(
        shown.as_str(),
        Some(code.as_str()),
        "the page shows the code"
    );
    assert!(browser.page_source().await?.contains(ALICE));
    browser.click("#approve").await?;
    browser.wait_for("h1", LIMIT).await?;
    assert_eq!(browser.text("h1").await?, "Approved");

    let finished = login.finish().await?;
    assert!(finished.status.success(), "{finished}");
    assert!(
        finished.stderr.contains(&format!("as {ALICE}")),
        "{finished}"
    );
    let status = site.run(&["status"]).await?;
    assert!(
        status.status.success() && status.stdout.contains(ALICE),
        "{status}"
    );
    let approved = site.cached_login()?;

    // A second device login, denied: the CLI says so and exits with 10 (not logged in); the
    // first login stays.
    let mut denied = site.spawn(&["login", "--no-browser"])?;
    let complete = denied.url_after("?user_code=").await?;
    site.browse_and_log_in(&browser, &complete, on_device_page)
        .await?;
    browser.wait_for("#deny", LIMIT).await?;
    browser.click("#deny").await?;
    browser.wait_for("h1", LIMIT).await?;
    assert_eq!(browser.text("h1").await?, "Denied");
    let finished = denied.finish().await?;
    assert_eq!(finished.status.code(), Some(10), "{finished}");
    assert!(finished.stderr.contains("denied"), "{finished}");
    assert_eq!(site.cached_login()?, approved);
    Ok(())
}

#[tokio::test]
async fn the_device_page_refuses_a_decision_without_its_csrf_token() -> anyhow::Result<()> {
    let site = Site::start().await?;
    let mut login = site.spawn(&["login", "--no-browser", &site.origin(APP)])?;
    let complete = login.url_after("?user_code=").await?;
    let browser = site.browser().await?;
    site.browse_and_log_in(&browser, &complete, on_device_page)
        .await?;
    browser.wait_for("#approve", LIMIT).await?;
    // The page's own form, with a forged and then without a CSRF token (the page's CSP lets
    // no script fetch, so the form itself is changed and submitted).
    for change in [
        "document.querySelector('input[name=csrf]').value = 'forged';",
        "document.querySelector('input[name=csrf]').remove();",
    ] {
        browser.execute(change).await?;
        browser.click("#approve").await?;
        // The form's page has an h1 too: wait for the answer's address, not for any h1.
        browser
            .wait_for_url(|url| url.path().ends_with("/device/approve"), LIMIT)
            .await?;
        browser.wait_for("h1", LIMIT).await?;
        let page = browser.page_source().await?;
        assert!(
            page.contains("This form is out of date or was not sent from Sekisho"),
            "{change}: {page}"
        );
        site.browse_and_log_in(&browser, &complete, on_device_page)
            .await?;
        browser.wait_for("#approve", LIMIT).await?;
    }
    // The same, straight to the endpoint with the session cookie: 403 both times.
    let code = complete.split("user_code=").nth(1).unwrap_or_default();
    let cookie = browser
        .cookies()
        .await?
        .into_iter()
        .find(|c| c.name == "__Host-sekisho")
        .map(|c| c.value)
        .expect("the auth host's session cookie");
    for csrf in ["&csrf=forged", ""] {
        let reply = site
            .send(
                http::Method::POST,
                &site.url(AUTH, "/.sekisho/cli/device/approve"),
                &[
                    ("cookie", &format!("__Host-sekisho={cookie}")),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &format!("action=approve&user_code={code}{csrf}"),
            )
            .await?;
        assert_eq!(
            reply.status,
            http::StatusCode::FORBIDDEN,
            "{csrf:?}: {reply}"
        );
    }
    // The grant is still waiting: the real form approves it.
    browser.click("#approve").await?;
    browser.wait_for("h1", LIMIT).await?;
    assert_eq!(browser.text("h1").await?, "Approved");
    let finished = login.finish().await?;
    assert!(finished.status.success(), "{finished}");
    Ok(())
}
