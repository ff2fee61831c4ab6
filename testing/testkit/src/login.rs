use std::time::Duration;

use crate::{Browser, Error};

/// How long the IdP may take to answer a submitted login.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Logs in at devidp's login form if the current page shows it: fills `#username` and
/// `#password`, clicks `#login` and waits for the answer. Returns `false` when no login form
/// is shown (the IdP session was still valid and the browser already went on), `true` after
/// a successful login, and [`Error::LoginRejected`] when devidp shows `#error` instead.
pub async fn login_with_browser(
    browser: &Browser,
    email: &str,
    password: &str,
) -> Result<bool, Error> {
    if !browser.exists("#login-form").await? {
        return Ok(false);
    }
    browser.fill("#username", email).await?;
    browser.fill("#password", password).await?;
    browser.click("#login").await?;
    let deadline = tokio::time::Instant::now() + SUBMIT_TIMEOUT;
    loop {
        if browser.exists("#error").await? {
            let message = browser.text("#error").await?;
            let url = browser.current_url().await?.to_string();
            return Err(Error::LoginRejected { url, message });
        }
        if !browser.exists("#login-form").await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(browser
                .timeout("devidp to answer the login".to_owned(), SUBMIT_TIMEOUT)
                .await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
