//! The internal listener: `/healthz`, `/readyz` and `/metrics`. It is bound to its own
//! address and never serves the public routes, nor they it. The optional metrics listener
//! serves `/metrics` alone, for a Service to expose to a scraper.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::observe::metrics::CertificateLabels;
use crate::respond::body::ResponseBody;
use crate::state::Shared;

/// What an internal listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `/healthz`, `/readyz` and `/metrics`.
    Admin,
    /// `/metrics` alone.
    Metrics,
}

/// Serves until `stop` turns true. Cancel-safe: the accept loop only awaits `accept`.
pub(crate) async fn serve(
    listener: TcpListener,
    scope: Scope,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = crate::state::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&shared, scope, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(shared: &Shared, scope: Scope, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/metrics" => metrics(shared),
        _ if scope == Scope::Metrics => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics\n",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" if !shared.synced.load(std::sync::atomic::Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first sync with the Kubernetes API\n",
        ),
        // Still ready while the Kubernetes API is away: the last state keeps serving, and the
        // body (and sekisho_kubernetes_api_reachable) says so.
        "/readyz" if shared.metrics.kubernetes_unreachable() => text(
            StatusCode::OK,
            "ready; the Kubernetes API cannot be reached, the last state it gave keeps serving\n",
        ),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn metrics(shared: &Shared) -> Response<ResponseBody> {
    refresh_certificate_expiry(shared);
    let mut response = text(StatusCode::OK, shared.metrics.encode());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn refresh_certificate_expiry(shared: &Shared) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let family = &shared.metrics.certificate_expiry;
    family.clear();
    for cert in &shared.certs.table().entries {
        family
            .get_or_create(&CertificateLabels {
                name: cert.label().to_string(),
            })
            .set(cert.not_after - now);
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
