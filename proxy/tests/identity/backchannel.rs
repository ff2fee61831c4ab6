//! OpenID back-channel logout: the provider's logout token, posted to the auth host's
//! `/.sekisho/backchannel-logout`, ends the session. devidp cannot reach the auth host (no DNS
//! for the test hosts, no trust in the test CA), so its delivery goes to a capture listener on
//! loopback and the test posts the captured token to the proxy itself.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sekisho_testkit::LogoutCapture;
use tokio::time::timeout;

use crate::harness::{
    ALICE, APP, AUTH, Jar, LIMIT, Reply, SESSION_COOKIE, Site, SiteOptions, id_token, jwt_claims,
};

/// The next logout token devidp delivered to `capture`, waiting at most [`LIMIT`].
async fn next_token(capture: &mut LogoutCapture) -> anyhow::Result<String> {
    Ok(capture.next_token(LIMIT).await?)
}

/// `POST <issuer>/__dev/logout?sub=<sub>` at devidp: status and body.
async fn dev_logout(site: &Site, sub: &str) -> anyhow::Result<(StatusCode, String)> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::post(format!("{}/__dev/logout?sub={sub}", site.idp.issuer()))
        .body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    timeout(LIMIT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("devidp answers /__dev/logout within {LIMIT:?}"))?
}

/// `POST https://auth…/.sekisho/backchannel-logout` with `logout_token`, as the provider does.
async fn post_logout_token(site: &Site, token: &str) -> anyhow::Result<Reply> {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    site.send(
        Method::POST,
        &site.url(AUTH, "/.sekisho/backchannel-logout"),
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await
}

/// The status of `GET https://app…/hello` with the session cookie `session`.
async fn hello(site: &Site, session: &str) -> anyhow::Result<Reply> {
    let cookie = Jar::with(SESSION_COOKIE, session).header();
    site.get(
        &site.url(APP, "/hello"),
        &[("accept", "application/json"), ("cookie", cookie.as_str())],
    )
    .await
}

/// A logout token for alice that names only her (`sub`, no `sid`: the site's devidp was started
/// with [`SiteOptions::logout_without_sid`]), from a login at devidp directly: it ends every
/// session of alice that began before it.
async fn logout_token_by_subject(
    site: &Site,
    capture: &mut LogoutCapture,
) -> anyhow::Result<String> {
    id_token(&site.idp, "sekisho", ALICE).await?;
    let (status, body) = dev_logout(site, "alice").await?;
    anyhow::ensure!(status == StatusCode::OK, "devidp's /__dev/logout: {body}");
    let token = next_token(capture).await?;
    anyhow::ensure!(
        jwt_claims(&token)?.get("sid").is_none(),
        "devidp's logout token names a sid"
    );
    Ok(token)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What every proxy in this test binary logs with target `sekisho::access`, as JSON lines.
/// Installed as the global subscriber on first use; the lines of tests running at the same
/// time mix in, so a test looks for lines only it can cause.
fn access_log() -> String {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("sekisho::access=info")
            .with_writer(move || SharedLog(writer.clone()))
            .try_init();
        log
    });
    String::from_utf8_lossy(&log.lock().expect("not poisoned")).into_owned()
}

struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `sekisho::access` lines that refused a logout token for `reason` (a part of it).
fn refusals_logged(reason: &str) -> Vec<String> {
    access_log()
        .lines()
        .filter(|line| line.contains("back-channel logout token refused") && line.contains(reason))
        .map(str::to_owned)
        .collect()
}

/// `token` with one character in the middle of its signature changed.
fn tampered(token: &str) -> String {
    let signature_start = token.rfind('.').expect("a JWS has three parts") + 1;
    let middle = signature_start + (token.len() - signature_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64url stays ASCII")
}

#[tokio::test]
async fn a_back_channel_logout_from_the_provider_ends_the_session() -> anyhow::Result<()> {
    let mut capture = LogoutCapture::start().await?;
    let site = Site::start(SiteOptions {
        backchannel_capture: Some(capture.uri().to_owned()),
        ..SiteOptions::default()
    })
    .await?;
    let cookie = Jar::with(SESSION_COOKIE, &site.login(ALICE).await?).header();
    let hello = site.url(APP, "/hello");
    let as_json = [("accept", "application/json"), ("cookie", cookie.as_str())];

    let reply = site.get(&hello, &as_json).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "alice's session works: {reply}"
    );
    assert!(reply.answered_by_upstream(), "{reply}");

    let (status, body) = dev_logout(&site, "alice").await?;
    assert_eq!(status, StatusCode::OK, "devidp's /__dev/logout: {body}");
    let token = next_token(&mut capture).await?;

    access_log();
    let reply = post_logout_token(&site, &tampered(&token)).await?;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a logout token with a broken signature: {reply}"
    );
    // Logged before the answer was sent: why, and never the token.
    assert_eq!(
        refusals_logged("signature is invalid").len(),
        1,
        "{}",
        access_log()
    );
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(!access_log().contains(signature), "{}", access_log());
    let reply = site.get(&hello, &as_json).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a bad logout token ends nothing: {reply}"
    );

    let reply = post_logout_token(&site, &token).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the real logout token: {reply}"
    );
    let reply = site.get(&hello, &as_json).await?;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "after the back-channel logout alice's cookie is no session: {reply}"
    );
    assert!(!reply.answered_by_upstream(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn a_replayed_logout_token_is_refused_and_ends_no_later_session() -> anyhow::Result<()> {
    let mut capture = LogoutCapture::start().await?;
    let site = Site::start(SiteOptions {
        backchannel_capture: Some(capture.uri().to_owned()),
        ..SiteOptions::default()
    })
    .await?;
    let first = site.login(ALICE).await?;
    let (status, body) = dev_logout(&site, "alice").await?;
    assert_eq!(status, StatusCode::OK, "devidp's /__dev/logout: {body}");
    let token = next_token(&mut capture).await?;
    let reply = post_logout_token(&site, &token).await?;
    assert_eq!(reply.status, StatusCode::OK, "the logout token: {reply}");
    let reply = hello(&site, &first).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply}");

    // Alice signs in again; someone who saw the first token posts it again.
    let second = site.login(ALICE).await?;
    access_log();
    let reply = post_logout_token(&site, &token).await?;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a replayed logout token: {reply}"
    );
    assert_eq!(reply.json()?["error"], "invalid_request", "{reply}");
    assert!(reply.body.contains("already used"), "{reply}");
    assert_eq!(refusals_logged("replay").len(), 1, "{}", access_log());
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(!access_log().contains(signature), "{}", access_log());
    let reply = hello(&site, &second).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "alice's new session outlives the replay: {reply}"
    );
    assert!(reply.answered_by_upstream(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn a_login_that_completes_just_after_a_logout_of_its_subject_keeps_its_session()
-> anyhow::Result<()> {
    let mut capture = LogoutCapture::start().await?;
    let site = Site::start(SiteOptions {
        backchannel_capture: Some(capture.uri().to_owned()),
        logout_without_sid: true,
        ..SiteOptions::default()
    })
    .await?;
    // What is tested is a logout and a session that begins in the same second: a round where
    // the two fell in different seconds proves nothing, and is run again.
    for _ in 0..3 {
        let token = logout_token_by_subject(&site, &mut capture).await?;
        let before = site.login(ALICE).await?;
        let callback = site.login_until_callback(ALICE).await?;
        let logout_second = unix_seconds();
        let reply = post_logout_token(&site, &token).await?;
        assert_eq!(reply.status, StatusCode::OK, "the logout by sub: {reply}");
        let session = site.finish_login(callback).await?;
        let reply = hello(&site, &before).await?;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "a session that began before the logout by sub: {reply}"
        );
        if unix_seconds() != logout_second {
            continue;
        }
        let reply = hello(&site, &session).await?;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "a session that began after the logout, in the same second: {reply}"
        );
        assert!(reply.answered_by_upstream(), "{reply}");
        return Ok(());
    }
    anyhow::bail!("the logout and the next login never fell in the same second")
}
