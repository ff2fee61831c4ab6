//! The browser flow's loopback listener (RFC 8252 §7.3): `http://127.0.0.1:PORT/callback` on a
//! port the kernel picks, waiting for the one redirect that carries our `state`.
//!
//! Exactly one valid callback is answered ("you can close this tab"); any other request —
//! another path, a missing or wrong `state`, a second callback — gets 400. The wait is bounded;
//! the accept loop ends with it (accepting is cancel-safe: a connection not yet accepted stays
//! in the kernel's queue and is dropped with the listener).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::secret::{Secret, printable};

/// The path the browser is sent back to.
pub const CALLBACK_PATH: &str = "/callback";
/// How long the browser login may take.
pub const WAIT: Duration = Duration::from_secs(300);
/// How long the answer page may take to reach the browser once the code is in.
const FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("cannot listen on 127.0.0.1 for the browser's answer")]
    Bind(#[source] std::io::Error),
    #[error("the browser did not come back within {} minutes", .0.as_secs() / 60)]
    Timeout(Duration),
    #[error("the sign-in failed: {0}")]
    Refused(String),
}

/// A listener for one callback.
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    addr: SocketAddr,
}

/// What the one valid callback carried.
type Outcome = Result<Secret, String>;

impl Loopback {
    /// Listens on `127.0.0.1:0`.
    pub async fn bind() -> Result<Self, LoopbackError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(LoopbackError::Bind)?;
        let addr = listener.local_addr().map_err(LoopbackError::Bind)?;
        Ok(Self { listener, addr })
    }

    /// `http://127.0.0.1:PORT/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("http://{}{CALLBACK_PATH}", self.addr)
    }

    /// Waits up to `wait` for the callback with `state`; returns its code.
    pub async fn wait(self, state: &Secret, wait: Duration) -> Result<Secret, LoopbackError> {
        let (tx, mut rx) = mpsc::channel::<Outcome>(1);
        let done = Arc::new(AtomicBool::new(false));
        let state = Arc::new(state.clone());
        let mut connections = JoinSet::new();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                // Both `recv` and `accept` are cancel-safe.
                Some(outcome) = rx.recv() => break outcome,
                () = &mut deadline => return Err(LoopbackError::Timeout(wait)),
                accepted = self.listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (tx, done, state) = (tx.clone(), done.clone(), state.clone());
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let answer = answer(&req, &state, &done, &tx);
                            async move { Ok::<_, Infallible>(answer) }
                        });
                        // One request per connection: the connection ends once the answer
                        // is written, which is what the wait below waits for.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .header_read_timeout(Duration::from_secs(10))
                            .timer(hyper_util::rt::TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        };
        // Let the page reach the browser before the process moves on (and maybe exits).
        let _ = tokio::time::timeout(FLUSH, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        outcome.map_err(LoopbackError::Refused)
    }
}

/// The answer to one request, and the outcome sent to the waiter for the valid callback.
fn answer(
    req: &Request<Incoming>,
    state: &Secret,
    done: &AtomicBool,
    tx: &mpsc::Sender<Outcome>,
) -> Response<Full<Bytes>> {
    let Some(outcome) = callback(req.method(), req.uri(), state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not this sign-in",
            "This address is waiting for one particular sign-in, and this is not it.",
        );
    };
    if done.swap(true, Ordering::SeqCst) {
        return page(
            StatusCode::BAD_REQUEST,
            "Already signed in",
            "This sign-in is already complete.",
        );
    }
    let response = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Signed in",
            "The sekisho command line is signed in. You can close this tab.",
        ),
        Err(reason) => page(StatusCode::OK, "Sign-in failed", reason),
    };
    let _ = tx.try_send(outcome);
    response
}

/// What a request is, if it is the callback with our state: the code, or the error it
/// carries.
fn callback(method: &Method, uri: &http::Uri, state: &Secret) -> Option<Outcome> {
    if method != Method::GET || uri.path() != CALLBACK_PATH {
        return None;
    }
    let query = uri.query().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if fields.iter().any(|(n, _)| *n == name) || fields.len() >= 8 {
            return None;
        }
        fields.push((name.into_owned(), value.into_owned()));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if !same(get("state")?.as_bytes(), state.expose().as_bytes()) {
        return None;
    }
    if let Some(error) = get("error") {
        let description = get("error_description").unwrap_or(error);
        return Some(Err(printable(description, 300)));
    }
    let code = Secret::new(get("code")?);
    code.is_token_text().then_some(Ok(code))
}

/// Equal in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A small self-contained page (nothing loads, nothing runs).
fn page(status: StatusCode, title: &str, message: &str) -> Response<Full<Bytes>> {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\"><title>{title} · Sekisho</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:15vh auto;padding:0 1rem}}\
</style></head><body><h1>{title}</h1><p id=\"message\">{message}</p></body></html>\n",
        title = escape(title),
        message = escape(message),
    );
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'",
        )
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a page response is well formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> http::Uri {
        text.parse().unwrap()
    }

    #[test]
    fn only_a_get_of_the_callback_path_with_our_state_is_the_callback() {
        let state = Secret::new("s3cr3t-state");
        let ok = callback(
            &Method::GET,
            &uri("/callback?code=abc&state=s3cr3t-state"),
            &state,
        );
        assert_eq!(ok.unwrap().unwrap().expose(), "abc");
        for other in [
            "/callback?code=abc&state=wrong",
            "/callback?code=abc",
            "/callback?code=abc&state=s3cr3t-state&state=s3cr3t-state",
            "/callback?code=abc&state=s3cr3t-stat",
            "/other?code=abc&state=s3cr3t-state",
            "/callback/?code=abc&state=s3cr3t-state",
            "/callback?state=s3cr3t-state",
            "/callback?code=a%20b&state=s3cr3t-state",
            "/favicon.ico",
        ] {
            assert!(
                callback(&Method::GET, &uri(other), &state).is_none(),
                "{other}"
            );
        }
        assert!(
            callback(
                &Method::POST,
                &uri("/callback?code=abc&state=s3cr3t-state"),
                &state
            )
            .is_none()
        );
        let refused = callback(
            &Method::GET,
            &uri("/callback?error=access_denied&error_description=no%1b%5B31m&state=s3cr3t-state"),
            &state,
        );
        assert_eq!(refused, Some(Err("no[31m".to_owned())));
    }

    #[tokio::test]
    async fn the_listener_answers_one_valid_callback_and_refuses_everything_else() {
        let loopback = Loopback::bind().await.unwrap();
        let redirect = loopback.redirect_uri();
        assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/callback"));
        let addr = loopback.addr;
        let state = Secret::new("the-state");
        let waiter =
            tokio::spawn(async move { loopback.wait(&state, Duration::from_secs(20)).await });
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        assert!(
            get("/callback?code=x&state=nope")
                .await
                .starts_with("HTTP/1.1 400")
        );
        assert!(get("/").await.starts_with("HTTP/1.1 400"));
        let answer = get("/callback?code=the-code&state=the-state").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("You can close this tab"));
        let code = waiter.await.unwrap().unwrap();
        assert_eq!(code.expose(), "the-code");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_after_its_time() {
        let loopback = Loopback::bind().await.unwrap();
        let result = loopback.wait(&Secret::new("s"), WAIT).await;
        assert!(matches!(result, Err(LoopbackError::Timeout(_))));
    }
}
