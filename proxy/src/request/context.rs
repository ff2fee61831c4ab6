//! What the pipeline learns about one request, phase by phase: its id, host, the path it is
//! decided on, its route and upstream, who it is from. Every phase and built-in endpoint reads
//! it; it depends only on what it holds.

use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Response, StatusCode};

use crate::respond::body::ResponseBody;
use crate::respond::{Format, error_page};
use crate::routing::snapshot::Route;

/// What the pipeline learns about one request.
pub(crate) struct RequestCtx {
    pub(crate) start: Instant,
    pub(crate) request_id: HeaderValue,
    /// Normalised: lowercase, no port.
    pub(crate) host: String,
    /// As the client sent it, for `X-Forwarded-Host` and the upstream authority.
    pub(crate) raw_host: Option<HeaderValue>,
    /// The path routing and access decide on, when it is not the request's (normal) path:
    /// without path parameters, or with encoded slashes decoded.
    pub(crate) decided_path: Option<Box<str>>,
    /// The path keeps `%2F`: only a route that allows it may serve the request.
    pub(crate) encoded_slashes: bool,
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) endpoint: Option<Arc<str>>,
    /// Who the access phase identified, for the access log.
    pub(crate) user: Option<Arc<str>>,
    /// A refreshed session cookie to send back.
    pub(crate) set_cookie: Option<HeaderValue>,
    /// How the client wants the proxy's own errors.
    pub(crate) format: Format,
}

impl RequestCtx {
    /// A context for a request that starts now.
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            request_id: HeaderValue::from_static("-"),
            host: String::new(),
            raw_host: None,
            decided_path: None,
            encoded_slashes: false,
            route: None,
            endpoint: None,
            user: None,
            set_cookie: None,
            format: Format::Text,
        }
    }

    /// The path routing and every access check decide on, given the request's normal path
    /// (after the request filter, `req.uri().path()`).
    pub(crate) fn decided_path<'a>(&'a self, normal_path: &'a str) -> &'a str {
        self.decided_path.as_deref().unwrap_or(normal_path)
    }

    /// `:PORT` when the client's `Host` names a port, for URLs back to this proxy.
    pub(crate) fn port_suffix(&self) -> &str {
        let raw = self
            .raw_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        match raw.rfind(':') {
            Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                &raw[i..]
            }
            _ => "",
        }
    }

    /// The proxy's own error answer, in the client's format, naming the request id.
    pub(crate) fn page(&self, status: StatusCode, message: &str) -> Response<ResponseBody> {
        error_page(status, message, &self.request_id, self.format)
    }
}
