//! OpenID back-channel logout: the provider's logout token, posted to the auth host's
//! `/.sekisho/backchannel-logout`, ends the session. devidp cannot reach the auth host (no DNS
//! for the test hosts, no trust in the test CA), so its delivery goes to a capture listener on
//! loopback and the test posts the captured token to the proxy itself.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::harness::{ALICE, APP, AUTH, Jar, LIMIT, SESSION_COOKIE, Site, SiteOptions};
use crate::support::{TestBody, empty};

/// An HTTP/1 listener on 127.0.0.1:0 standing in for the proxy's back-channel endpoint: it
/// answers every request 200 and passes on the `logout_token` form field of each POST.
struct Capture {
    uri: String,
    tokens: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Capture {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("http://{}/backchannel-logout", listener.local_addr()?);
        let (sender, tokens) = mpsc::unbounded_channel();
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| capture(request, sender.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { uri, tokens, task })
    }

    /// The next logout token devidp delivered, waiting at most [`LIMIT`].
    async fn next_token(&mut self) -> anyhow::Result<String> {
        timeout(LIMIT, self.tokens.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no logout token arrived within {LIMIT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the capture listener stopped"))
    }
}

async fn capture(
    request: Request<Incoming>,
    tokens: mpsc::UnboundedSender<String>,
) -> Result<Response<TestBody>, Infallible> {
    let post = request.method() == Method::POST;
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    if post
        && let Some(token) = url::form_urlencoded::parse(&body)
            .find(|(name, _)| name == "logout_token")
            .map(|(_, token)| token.into_owned())
    {
        let _ = tokens.send(token);
    }
    Ok(Response::new(empty()))
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
    let mut capture = Capture::start().await?;
    let site = Site::start(SiteOptions {
        backchannel_capture: Some(capture.uri.clone()),
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
    let token = capture.next_token().await?;

    let endpoint = site.url(AUTH, "/.sekisho/backchannel-logout");
    let post = |token: &str| {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", token)
            .finish();
        site.send(
            Method::POST,
            &endpoint,
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
    };

    let reply = post(&tampered(&token)).await?;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a logout token with a broken signature: {reply}"
    );
    let reply = site.get(&hello, &as_json).await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a bad logout token ends nothing: {reply}"
    );

    let reply = post(&token).await?;
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
