use std::time::{Duration, Instant};

use sekisho_testkit::{Browser, BrowserOptions, spki_sha256_base64};

use crate::support::{HttpsApp, chain};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_browser_trusts_the_listed_certificate_and_refuses_an_unlisted_one() -> anyhow::Result<()>
{
    let trusted = HttpsApp::start("app.sekisho.test", "hello from app").await?;
    let stranger = HttpsApp::start("other.sekisho.test", "you should not see this").await?;
    let started = Instant::now();
    let browser = Browser::start(BrowserOptions {
        spki_hashes: vec![spki_sha256_base64(&trusted.cert_pem)?],
        ..BrowserOptions::default()
    })
    .await?;
    eprintln!("browser started in {:?}", started.elapsed());

    let url = format!("https://app.sekisho.test:{}/", trusted.port);
    browser.goto(&url).await?;
    browser.wait_for("#greeting", WAIT).await?;
    assert_eq!(browser.text("#greeting").await?, "hello from app");
    assert_eq!(browser.current_url().await?.as_str(), url);
    assert!(
        trusted.requests() >= 1,
        "the page (and perhaps /favicon.ico) was served"
    );

    // Chromium shows its interstitial in place of the page; the navigation itself succeeds.
    browser
        .goto(&format!("https://other.sekisho.test:{}/", stranger.port))
        .await?;
    let shown = browser.execute("return document.body.innerText;").await?;
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.contains("NET::ERR_CERT_AUTHORITY_INVALID"), "{shown}");
    assert!(
        !browser
            .page_source()
            .await?
            .contains("you should not see this")
    );
    assert_eq!(
        stranger.requests(),
        0,
        "the browser reached the unlisted server"
    );
    Ok(())
}

#[tokio::test]
async fn names_outside_the_test_domain_do_not_resolve() -> anyhow::Result<()> {
    let browser = Browser::start(BrowserOptions::default()).await?;
    let error = browser
        .goto("https://example.com/")
        .await
        .expect_err("example.com must not resolve");
    assert!(
        chain(&error).contains("ERR_NAME_NOT_RESOLVED"),
        "unexpected error: {}",
        chain(&error)
    );
    Ok(())
}

#[tokio::test]
async fn the_page_sets_cookies_runs_scripts_and_can_be_photographed() -> anyhow::Result<()> {
    let app = HttpsApp::start("app.sekisho.test", "cookie jar").await?;
    let browser = Browser::start(BrowserOptions {
        spki_hashes: vec![spki_sha256_base64(&app.cert_pem)?],
        ..BrowserOptions::default()
    })
    .await?;
    browser
        .goto(&format!("https://app.sekisho.test:{}/", app.port))
        .await?;

    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|cookie| cookie.name == "app_session")
        .unwrap_or_else(|| panic!("no app_session cookie in {cookies:?}"));
    assert_eq!(session.value, "s3cr3t");
    assert_eq!(session.domain.as_deref(), Some("app.sekisho.test"));
    assert!(session.secure && session.http_only && session.session);
    assert_eq!(session.same_site.as_deref(), Some("Lax"));

    let answer = browser
        .execute("return fetch('/api').then(response => response.text());")
        .await?;
    assert_eq!(answer, serde_json::json!("pong"));

    browser.delete_all_cookies().await?;
    assert_eq!(browser.cookies().await?, Vec::new());

    let dir = tempfile::tempdir()?;
    let png = dir.path().join("page.png");
    browser.screenshot(&png).await?;
    assert!(std::fs::read(&png)?.starts_with(b"\x89PNG"));
    Ok(())
}

#[tokio::test]
async fn a_wait_that_times_out_names_the_url_and_shows_the_page() -> anyhow::Result<()> {
    let app = HttpsApp::start("app.sekisho.test", "nothing to wait for").await?;
    let browser = Browser::start(BrowserOptions {
        spki_hashes: vec![spki_sha256_base64(&app.cert_pem)?],
        ..BrowserOptions::default()
    })
    .await?;
    let url = format!("https://app.sekisho.test:{}/", app.port);
    browser.goto(&url).await?;
    let error = browser
        .wait_for("#missing", Duration::from_millis(300))
        .await
        .expect_err("#missing is not on the page");
    let message = error.to_string();
    assert!(message.contains("#missing"), "{message}");
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("nothing to wait for"), "{message}");
    Ok(())
}

#[tokio::test]
async fn dropping_a_browser_leaves_no_chromium_or_chromedriver_behind() -> anyhow::Result<()> {
    let browser = Browser::start(BrowserOptions::default()).await?;
    let dir = browser
        .driver_log()
        .parent()
        .expect("the log is in the browser's directory")
        .to_owned();
    browser.goto("about:blank").await?;
    assert!(!processes_mentioning(&dir.to_string_lossy()).is_empty());
    drop(browser);
    sekisho_testkit::eventually(WAIT, || {
        let left = processes_mentioning(&dir.to_string_lossy());
        async move {
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        }
    })
    .await?;
    assert!(!dir.exists(), "{} was not removed", dir.display());
    Ok(())
}

/// The pids of live processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = status
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}
