//! Sessions without a browser: what a request without one gets, cookies that are replayed,
//! tampered with or moved to another host, the login endpoint's `rd` and the callback's
//! checks, and identity headers a client tries to send itself.

use http::{Method, StatusCode};
use sekisho_testkit::Url;

use crate::harness::{
    ALICE, APP, AUTH, Agent, Jar, OTHER, Reply, SESSION_COOKIE, Site, SiteOptions, navigation, refs,
};
use crate::support::echoed;

fn with_session(cookie: &str) -> String {
    Jar::with(SESSION_COOKIE, cookie).header()
}

/// Asserts the proxy's 401 for a request that cannot follow a redirect, and returns its
/// `login_url`.
fn assert_unauthorized_json(reply: &Reply, what: &str) -> Url {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {reply}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: a JSON body: {reply}"
    );
    assert!(!reply.answered_by_upstream(), "{what}: {reply}");
    let json = reply
        .json()
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert_eq!(json["error"], "unauthorized", "{what}: {json}");
    assert!(json["message"].is_string(), "{what}: {json}");
    let login_url = json["login_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no login_url in {json}"));
    Url::parse(login_url).unwrap_or_else(|error| panic!("{what}: login_url {login_url}: {error}"))
}

/// Asserts that `url` is the auth host's login endpoint with `rd` = `expected_rd`.
fn assert_login_url(url: &Url, port: u16, expected_rd: &str) {
    assert_eq!(url.scheme(), "https", "{url}");
    assert_eq!(url.host_str(), Some(AUTH), "{url}");
    assert_eq!(
        url.port(),
        Some(port),
        "the port of the request is kept: {url}"
    );
    assert_eq!(url.path(), "/.sekisho/login", "{url}");
    let rd = url
        .query_pairs()
        .find(|(name, _)| name == "rd")
        .map(|(_, rd)| rd.into_owned());
    assert_eq!(rd.as_deref(), Some(expected_rd), "{url}");
}

#[tokio::test]
async fn a_request_without_a_session_gets_401_json_or_a_redirect_to_the_login() -> anyhow::Result<()>
{
    let site = Site::start(SiteOptions::default()).await?;
    let page = site.url(APP, "/hello?x=1");

    let reply = site.get(&page, &refs(&navigation(&Jar::new()))).await?;
    assert_eq!(
        reply.status,
        StatusCode::FOUND,
        "a browser navigation: {reply}"
    );
    assert_login_url(&reply.location()?, site.port, &page);

    let cases = [
        ("JSON", Method::GET, vec![("accept", "application/json")]),
        (
            "fetch",
            Method::GET,
            vec![("accept", "text/html"), ("sec-fetch-mode", "cors")],
        ),
        (
            "XMLHttpRequest",
            Method::GET,
            vec![
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        ),
        ("POST", Method::POST, vec![("accept", "text/html")]),
    ];
    for (what, method, headers) in cases {
        let reply = site.send(method, &page, &headers, "").await?;
        let login_url = assert_unauthorized_json(&reply, what);
        assert_login_url(&login_url, site.port, &page);
    }
    assert!(
        site.app.received().is_empty(),
        "requests without a session reached the upstream: {:?}",
        site.app.received()
    );
    Ok(())
}

#[tokio::test]
async fn a_session_cookie_replayed_on_another_host_is_rejected() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let cookie = site.login(ALICE).await?;
    let json = |cookie: &str| {
        vec![
            ("accept", "application/json".to_owned()),
            ("cookie", with_session(cookie)),
        ]
    };

    let reply = site
        .get(&site.url(OTHER, "/hello"), &refs(&json(&cookie)))
        .await?;
    assert_unauthorized_json(&reply, "app's cookie on other.sekisho.test");

    let reply = site
        .get(&site.url(APP, "/hello"), &refs(&json(&cookie)))
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the same cookie on its own host: {reply}"
    );
    assert!(reply.answered_by_upstream(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn a_tampered_session_cookie_is_no_session() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let cookie = site.login(ALICE).await?;
    let mut tampered: Vec<char> = cookie.chars().collect();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for (what, value) in [
        ("one character flipped", tampered),
        ("truncated", cookie[..cookie.len() / 2].to_owned()),
        ("garbage", "not-a-session".to_owned()),
    ] {
        let reply = site
            .get(
                &site.url(APP, "/hello"),
                &[
                    ("accept", "application/json"),
                    ("cookie", &with_session(&value)),
                ],
            )
            .await?;
        assert_unauthorized_json(&reply, what);
    }
    assert!(
        site.app.received_at("/hello").is_empty(),
        "a tampered cookie reached the upstream"
    );
    Ok(())
}

#[tokio::test]
async fn open_redirects_in_the_login_endpoint_fail() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let hostile = [
        "https://evil.example/",
        "//evil.example/",
        "https://app.sekisho.test.evil.example/",
        "javascript:alert(1)",
        "https://evil.example\\@app.sekisho.test/",
        "http://app.sekisho.test/",
        "/relative/path",
    ]
    .map(str::to_owned);
    // On a served host, but read by a browser as another host, or on another port.
    let on_the_site = [
        site.url(APP, "//evil.example/"),
        site.url(APP, "/\\evil.example/"),
        site.url(APP, "/\\/evil.example/"),
        format!("https://{APP}:1/"),
        format!("https://{APP}/"),
    ];
    for rd in hostile.iter().chain(&on_the_site) {
        let reply = site
            .get(&site.login_url(rd), &refs(&navigation(&Jar::new())))
            .await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "rd={rd} is refused: {reply}"
        );
        assert!(
            reply
                .header("location")
                .is_none_or(|location| !location.contains("evil")),
            "rd={rd} led to a redirect towards evil: {reply}"
        );
    }
    // On the auth host only its own pages (home, /.sekisho/me, the CLI's) are return URLs.
    for path in [
        "/.sekisho/logout",
        "/.sekisho/callback?code=x&state=y",
        "/.sekisho/cli/../logout",
        "/elsewhere",
    ] {
        let rd = site.url(AUTH, path);
        let reply = site
            .get(&site.login_url(&rd), &refs(&navigation(&Jar::new())))
            .await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "rd={rd} is refused: {reply}"
        );
    }
    let started = site
        .start_login(&site.url(AUTH, "/.sekisho/cli/device"))
        .await?;
    assert!(started.idp_url.starts_with(site.idp.issuer()));
    // The same endpoint with a configured host does start a login.
    let started = site.start_login(&site.url(APP, "/hello")).await?;
    assert!(started.idp_url.starts_with(site.idp.issuer()));
    Ok(())
}

#[tokio::test]
async fn a_callback_with_a_wrong_state_or_a_used_code_fails() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;

    // Made up: no pending login, wrong state.
    let reply = site
        .get(
            &site.url(AUTH, "/.sekisho/callback?code=x&state=y"),
            &refs(&navigation(&Jar::new())),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(
        reply.body.contains("/.sekisho/login"),
        "the error page has a link to try again: {reply}"
    );

    // A real code with the pending login of another attempt: the state does not match.
    let first = site.start_login(&site.url(APP, "/one")).await?;
    let second = site.start_login(&site.url(APP, "/two")).await?;
    let callback = Agent::default()
        .authorize(&site.idp, &first.idp_url, ALICE)
        .await?;
    let reply = site
        .get(&callback, &refs(&navigation(&second.auth_cookies)))
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a callback whose state belongs to another login: {reply}"
    );

    // A fresh login goes through once; the same callback URL again fails.
    let started = site.start_login(&site.url(APP, "/hello")).await?;
    let callback = Agent::default()
        .authorize(&site.idp, &started.idp_url, ALICE)
        .await?;
    let reply = site
        .get(&callback, &refs(&navigation(&started.auth_cookies)))
        .await?;
    assert!(
        reply.status.is_redirection(),
        "the first use of the callback: {reply}"
    );
    let handoff = reply.location()?;
    assert_eq!(handoff.host_str(), Some(APP), "{reply}");
    assert_eq!(handoff.path(), "/.sekisho/handoff", "{reply}");
    let reply = site
        .get(&callback, &refs(&navigation(&started.auth_cookies)))
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "the replayed callback (code already used): {reply}"
    );

    // The handoff code works once, and only on its own host.
    let on_other = handoff.as_str().replace(APP, OTHER);
    let reply = site.get(&on_other, &refs(&navigation(&Jar::new()))).await?;
    let mut jar = Jar::new();
    jar.absorb(&reply.headers);
    assert!(
        jar.get(SESSION_COOKIE).is_none(),
        "app's handoff code made a session on {OTHER}: {reply}"
    );
    let reply = site
        .get(handoff.as_str(), &refs(&navigation(&Jar::new())))
        .await?;
    let mut jar = Jar::new();
    jar.absorb(&reply.headers);
    assert!(
        jar.get(SESSION_COOKIE).is_some(),
        "the handoff sets the session: {reply}"
    );
    let reply = site
        .get(handoff.as_str(), &refs(&navigation(&Jar::new())))
        .await?;
    let mut jar = Jar::new();
    jar.absorb(&reply.headers);
    assert!(
        jar.get(SESSION_COOKIE).is_none(),
        "a handoff code redeemed twice: {reply}"
    );
    Ok(())
}

#[tokio::test]
async fn client_spoofed_identity_headers_never_reach_the_upstream() -> anyhow::Result<()> {
    let site = Site::start(SiteOptions::default()).await?;
    let cookie = site.login(ALICE).await?;
    let spoofed = [
        ("x-forwarded-email", "boss@evil.example"),
        ("x-forwarded-user", "boss"),
        ("x-forwarded-groups", "admins,root"),
        ("x-sekisho-assertion", "forged"),
        ("x-sekisho-anything", "forged"),
    ];

    let session = with_session(&cookie);
    let mut headers = vec![("accept", "application/json"), ("cookie", session.as_str())];
    headers.extend(spoofed);
    let reply = site.get(&site.url(APP, "/hello"), &headers).await?;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    let seen = echoed(&reply.body);
    let all = |name: &str| -> Vec<String> {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(all("x-forwarded-email"), [ALICE], "{reply}");
    assert_eq!(all("x-forwarded-user"), ["alice"], "{reply}");
    assert_eq!(all("x-forwarded-groups").len(), 1, "{reply}");
    assert!(!all("x-forwarded-groups")[0].contains("root"), "{reply}");
    assert!(all("x-sekisho-anything").is_empty(), "{reply}");
    let assertions = all("x-sekisho-assertion");
    assert_eq!(assertions.len(), 1, "{reply}");
    let claims = site.verify_assertion(&assertions[0], APP).await?;
    assert_eq!(claims.email, ALICE);

    // A public route gets no identity headers: not the spoofed ones, not the session's.
    for cookie in [None, Some(session.as_str())] {
        let mut headers: Vec<(&str, &str)> = spoofed.to_vec();
        headers.push(("accept", "application/json"));
        if let Some(cookie) = cookie {
            headers.push(("cookie", cookie));
        }
        let reply = site.get(&site.url(APP, "/public/page"), &headers).await?;
        assert_eq!(reply.status, StatusCode::OK, "{reply}");
        assert!(reply.answered_by_upstream(), "{reply}");
        let seen = echoed(&reply.body);
        for name in [
            "x-forwarded-email",
            "x-forwarded-user",
            "x-forwarded-groups",
            "x-sekisho-assertion",
            "x-sekisho-anything",
        ] {
            assert!(
                seen.get(name).is_none(),
                "the public route passed {name} (session: {}): {reply}",
                cookie.is_some()
            );
        }
        assert!(
            seen.get_all("cookie")
                .iter()
                .all(|c| !c.to_str().unwrap_or_default().contains("__Host-sekisho")),
            "{reply}"
        );
    }
    Ok(())
}
