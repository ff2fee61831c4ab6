//! What the proxy refuses: redirect URIs that are not loopback, replayed codes, wrong
//! verifiers, and refresh tokens after `sekisho logout`.

use base64::Engine as _;
use http::{Method, StatusCode};

use crate::harness::{APP, AUTH, Reply, Site};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const LOOPBACK: &str = "http://127.0.0.1:9/cb";

fn authorize_url(site: &Site, redirect_uri: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", "st")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256")
        .finish();
    site.url(AUTH, &format!("/.sekisho/cli/authorize?{query}"))
}

/// A fresh code from the authorize endpoint, for the session `cookie`.
async fn code(site: &Site, cookie: &str) -> anyhow::Result<String> {
    let reply = site
        .send(
            Method::GET,
            &authorize_url(site, LOOPBACK),
            &[("cookie", &format!("__Host-sekisho={cookie}"))],
            "",
        )
        .await?;
    assert_eq!(reply.status, StatusCode::FOUND, "{reply}");
    let location = url::Url::parse(reply.location.as_deref().unwrap_or_default())?;
    assert_eq!(
        location.as_str().split('?').next(),
        Some(LOOPBACK),
        "{reply}"
    );
    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert!(
        pairs.contains(&("state".to_owned(), "st".to_owned())),
        "{reply}"
    );
    Ok(pairs
        .into_iter()
        .find(|(name, _)| name == "code")
        .map(|(_, code)| code)
        .unwrap_or_default())
}

async fn redeem(
    site: &Site,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> anyhow::Result<Reply> {
    site.token(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("redirect_uri", redirect_uri),
    ])
    .await
}

fn assert_invalid_grant(reply: &Reply, what: &str) -> anyhow::Result<()> {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}: {reply}");
    assert_eq!(reply.json()?["error"], "invalid_grant", "{what}: {reply}");
    Ok(())
}

#[tokio::test]
async fn foreign_redirects_replayed_codes_wrong_verifiers_and_logged_out_refresh_tokens_are_refused()
-> anyhow::Result<()> {
    let site = Site::start().await?;

    // Not loopback: refused before any login, and never redirected to.
    for redirect_uri in [
        "https://evil.example/cb",
        "http://localhost:5000/cb",
        "http://127.0.0.1.evil.example:5000/cb",
        "http://127.0.0.1/cb",
    ] {
        let reply = site
            .send(Method::GET, &authorize_url(&site, redirect_uri), &[], "")
            .await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{redirect_uri}: {reply}"
        );
        assert_eq!(reply.location, None, "{redirect_uri}: {reply}");
    }
    // Loopback without a session: into the login, with this request as the return URL.
    let reply = site
        .send(Method::GET, &authorize_url(&site, LOOPBACK), &[], "")
        .await?;
    assert_eq!(reply.status, StatusCode::FOUND, "{reply}");
    let login = url::Url::parse(reply.location.as_deref().unwrap_or_default())?;
    assert_eq!(login.path(), "/.sekisho/login", "{reply}");
    let rd = login
        .query_pairs()
        .find(|(name, _)| name == "rd")
        .map(|(_, rd)| rd.into_owned())
        .unwrap_or_default();
    assert!(
        rd.starts_with(&site.url(AUTH, "/.sekisho/cli/authorize?")),
        "{rd}"
    );

    // A session on the auth host, from a device login approved in the browser.
    let mut cli = site.spawn(&["login", "--no-browser", &site.origin(APP)])?;
    let complete = cli.url_after("?user_code=").await?;
    let browser = site.browser().await?;
    site.browse_and_log_in(&browser, &complete, |u| {
        u.host_str() == Some(AUTH) && u.path() == "/.sekisho/cli/device"
    })
    .await?;
    browser.click("#approve").await?;
    let finished = cli.finish().await?;
    assert!(finished.status.success(), "{finished}");
    let cookie = browser
        .cookies()
        .await?
        .into_iter()
        .find(|c| c.name == "__Host-sekisho")
        .map(|c| c.value)
        .expect("the auth host's session cookie");

    // A wrong verifier is refused, and spends the code.
    let first = code(&site, &cookie).await?;
    let wrong = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    assert_invalid_grant(
        &redeem(&site, &first, &wrong, LOOPBACK).await?,
        "a wrong verifier",
    )?;
    assert_invalid_grant(
        &redeem(&site, &first, VERIFIER, LOOPBACK).await?,
        "a code tried once already",
    )?;
    // Another redirect URI than the code's is refused.
    let other = code(&site, &cookie).await?;
    assert_invalid_grant(
        &redeem(&site, &other, VERIFIER, "http://127.0.0.1:10/cb").await?,
        "another redirect URI",
    )?;
    // The right verifier works once; the replay is refused.
    let good = code(&site, &cookie).await?;
    let reply = redeem(&site, &good, VERIFIER, LOOPBACK).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_invalid_grant(
        &redeem(&site, &good, VERIFIER, LOOPBACK).await?,
        "a replayed code",
    )?;
    // A code is not a refresh token, nor the other way round.
    let refresh = reply.json()?["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_invalid_grant(
        &site
            .token(&[("grant_type", "refresh_token"), ("refresh_token", &good)])
            .await?,
        "a code as a refresh token",
    )?;
    assert_invalid_grant(
        &redeem(&site, &refresh, VERIFIER, LOOPBACK).await?,
        "a refresh token as a code",
    )?;

    // After `sekisho logout` the CLI's refresh token and access token no longer work.
    let cached = site.cached_login()?;
    let cached_refresh = cached["refresh_token"].as_str().unwrap_or_default();
    let cached_access = cached["access_token"].as_str().unwrap_or_default();
    let logout = site.run(&["logout"]).await?;
    assert!(logout.status.success(), "{logout}");
    assert_invalid_grant(
        &site
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", cached_refresh),
            ])
            .await?,
        "a refresh token after logout",
    )?;
    let reply = site
        .send(
            Method::GET,
            &site.url(APP, "/api/things"),
            &[
                ("accept", "application/json"),
                ("authorization", &format!("Bearer {cached_access}")),
            ],
            "",
        )
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "an access token after logout: {reply}"
    );
    let status = site.run(&["status"]).await?;
    assert_eq!(status.status.code(), Some(10), "{status}");
    assert!(status.stdout.contains("not logged in"), "{status}");
    // Revoking again, or something that is no token, is still 200 (RFC 7009).
    let reply = site
        .send(
            Method::POST,
            &site.url(AUTH, "/.sekisho/cli/revoke"),
            &[("content-type", "application/x-www-form-urlencoded")],
            "token=nonsense",
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    Ok(())
}
