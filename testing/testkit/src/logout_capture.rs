//! A stand-in for a relying party's back-channel logout endpoint: devidp delivers logout tokens
//! to it (devidp cannot reach a test's proxy by name, nor trust its CA), and the test posts them
//! on to the proxy itself.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::Error;

/// An HTTP/1 listener on 127.0.0.1 that answers every request 200 and keeps the
/// `logout_token` form field of each POST; stops when dropped.
pub struct LogoutCapture {
    uri: String,
    tokens: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LogoutCapture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LogoutCapture {
    pub async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let uri = format!("http://{addr}/backchannel-logout");
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

    /// Where devidp is to deliver (its `--backchannel-logout-uri`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The next logout token delivered, waiting at most `within`.
    pub async fn next_token(&mut self, within: Duration) -> Result<String, Error> {
        tokio::time::timeout(within, self.tokens.recv())
            .await
            .ok()
            .flatten()
            .ok_or(Error::NoLogoutToken(within))
    }
}

async fn capture(
    request: Request<Incoming>,
    tokens: mpsc::UnboundedSender<String>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
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
    Ok(Response::new(Empty::new()))
}
