use std::time::Duration;

use sekisho_testkit::{Browser, BrowserOptions, Error, Idp, login_with_browser, pkce};

use crate::support::{Callback, param};

const WAIT: Duration = Duration::from_secs(15);

/// The authorization request of client `sekisho` for `redirect_uri`, with `state`.
fn authorize_url(idp: &Idp, redirect_uri: &str, state: &str) -> String {
    let (_verifier, challenge) = pkce();
    let mut url = sekisho_testkit::Url::parse(&format!("{}/auth", idp.issuer()))
        .expect("the issuer is a URL");
    url.query_pairs_mut()
        .append_pair("client_id", "sekisho")
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid email")
        .append_pair("state", state)
        .append_pair("nonce", "N")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    url.into()
}

#[tokio::test]
async fn alice_logs_in_and_the_client_receives_a_code_and_its_state() -> anyhow::Result<()> {
    let callback = Callback::start().await?;
    let idp = Idp::builder().redirect_uri(callback.uri()).start().await?;
    let browser = Browser::start(BrowserOptions::default()).await?;

    browser
        .goto(&authorize_url(&idp, &callback.uri(), "S"))
        .await?;
    assert!(login_with_browser(&browser, "alice@uniqe.example", "password").await?);
    let landed = browser
        .wait_for_url(|url| url.path() == "/cb", WAIT)
        .await?;
    assert_eq!(landed.port(), Some(callback.port));
    browser.wait_for("#callback", WAIT).await?;

    let received = callback.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(param(&received[0], "code").is_some_and(|code| !code.is_empty()));
    assert_eq!(param(&received[0], "state"), Some("S"));
    assert_eq!(param(&received[0], "iss"), Some(idp.issuer()));

    // The IdP session is still valid: no login form this time, straight back to the client.
    browser
        .goto(&authorize_url(&idp, &callback.uri(), "S2"))
        .await?;
    assert!(!login_with_browser(&browser, "alice@uniqe.example", "password").await?);
    browser
        .wait_for_url(|url| url.path() == "/cb", WAIT)
        .await?;
    let received = callback.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(param(&received[1], "state"), Some("S2"));
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_shows_the_error_and_never_reaches_the_client() -> anyhow::Result<()> {
    let callback = Callback::start().await?;
    let idp = Idp::builder().redirect_uri(callback.uri()).start().await?;
    let browser = Browser::start(BrowserOptions::default()).await?;

    browser
        .goto(&authorize_url(&idp, &callback.uri(), "S"))
        .await?;
    let rejected = login_with_browser(&browser, "alice@uniqe.example", "not-the-password").await;
    assert!(
        matches!(rejected, Err(Error::LoginRejected { .. })),
        "{rejected:?}"
    );
    assert!(!browser.text("#error").await?.is_empty());
    assert!(browser.exists("#login-form").await?);
    assert!(callback.received().is_empty());
    Ok(())
}

#[tokio::test]
async fn devidp_starts_with_the_given_flags_and_stops_on_drop() -> anyhow::Result<()> {
    let idp = Idp::builder()
        .redirect_uri("http://127.0.0.1:9/cb")
        .backchannel_logout_uri("http://127.0.0.1:9/logout")
        .id_token_ttl(Duration::from_secs(60))
        .access_token_ttl(Duration::from_secs(30))
        .arg("--id-token-alg")
        .arg("ES256")
        .start()
        .await?;
    assert_eq!(idp.issuer(), format!("http://127.0.0.1:{}", idp.port()));
    let banner = idp.stderr();
    assert!(
        banner.contains(r#"redirect_uris=["http://127.0.0.1:9/cb"]"#),
        "{banner}"
    );
    assert!(
        banner.contains("backchannel_logout_uri=http://127.0.0.1:9/logout"),
        "{banner}"
    );

    let port = idp.port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(idp);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "devidp still listens after drop"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_flag_fails_the_start_with_devidps_own_message() {
    let error = Idp::builder()
        .arg("--no-such-flag")
        .start()
        .await
        .expect_err("devidp rejects unknown flags");
    assert!(matches!(error, Error::Exited { .. }), "{error:?}");
    assert!(error.to_string().contains("no-such-flag"), "{error}");
}
