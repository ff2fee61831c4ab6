//! A small upstream for the local demo: answers every request with a plain-text page that
//! lists the method, path and headers it received, so a person can see what the proxy
//! forwards (and what it strips).
//!
//! Usage: cargo run -p sekisho-proxy --example sample_upstream -- [ADDR]   (default 127.0.0.1:8081)

use std::convert::Infallible;
use std::fmt::Write as _;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("sample upstream listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(describe(&req)))))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn describe(req: &Request<Incoming>) -> String {
    let mut page = format!(
        "Hello from the sample upstream.\n\n{} {} {:?}\n\nHeaders received:\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (name, value) in req.headers() {
        let _ = writeln!(page, "  {name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    page
}
