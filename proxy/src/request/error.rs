//! Where a failure came from, and what the client is told.
//!
//! Errors carry their source, and that decides the status: 4xx for what the client sent,
//! 502/504 for what the upstream did, 503 when nothing can serve.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::forward::body::ClientBodyError;
use crate::forward::upstream::{ConnectError, SendError};
use crate::respond::body::ResponseBody;
use crate::respond::{Format, error_page};
use crate::routing::path::PathError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a failure came from and what the client is told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the request has no valid host")]
    BadHost,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    BadPath(#[from] PathError),
    #[error("the request uses a transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("the request body is malformed or was cut short")]
    ClientBody(#[source] BoxError),
    #[error("no site is served for this host")]
    UnknownHost,
    #[error("nothing is served at this path")]
    NoRoute,
    /// The path answers only the methods in `allow` (the `Allow` header's value).
    #[error("this path answers only {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("the upstream has no endpoint")]
    NoEndpoint,
    #[error("could not connect to the upstream")]
    UpstreamConnect(#[source] BoxError),
    #[error("the upstream did not accept the connection in time")]
    UpstreamConnectTimeout(#[source] BoxError),
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream exchange failed")]
    UpstreamProtocol(#[source] BoxError),
    #[error("the upstream switched protocols without being asked")]
    UnexpectedUpgrade,
    #[error("the agent that reaches the upstream is not connected")]
    AgentOffline,
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorSource {
    Downstream,
    Upstream,
    Internal,
}

impl ProxyError {
    pub(crate) fn source_kind(&self) -> ErrorSource {
        match self {
            Self::BadHost
            | Self::BadRequest(_)
            | Self::BadPath(_)
            | Self::UnsupportedTransferCoding
            | Self::ClientBody(_)
            | Self::UnknownHost
            | Self::NoRoute
            | Self::MethodNotAllowed { .. } => ErrorSource::Downstream,
            Self::NoEndpoint => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadHost | Self::BadRequest(_) | Self::BadPath(_) | Self::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::UnknownHost | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoEndpoint | Self::AgentOffline => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnectTimeout(_) | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::UnexpectedUpgrade => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The `kind` label of the upstream error metric (one of
    /// [`crate::observe::metrics::UPSTREAM_ERROR_KINDS`], or `downstream`).
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "connect",
            Self::UpstreamConnectTimeout(_) => "connect_timeout",
            Self::UpstreamTimeout => "response_timeout",
            Self::UpstreamProtocol(_) => "protocol",
            Self::UnexpectedUpgrade => "unexpected_upgrade",
            Self::NoEndpoint => "no_endpoint",
            Self::AgentOffline => "agent_offline",
            Self::BadHost
            | Self::BadRequest(_)
            | Self::BadPath(_)
            | Self::UnsupportedTransferCoding
            | Self::ClientBody(_)
            | Self::UnknownHost
            | Self::NoRoute
            | Self::MethodNotAllowed { .. } => "downstream",
        }
    }
}

/// A response made by the proxy itself, naming the request id, in the client's format.
pub(crate) fn error_response(
    err: &ProxyError,
    request_id: &HeaderValue,
    format: Format,
) -> Response<ResponseBody> {
    let mut response = error_page(err.status(), &err.to_string(), request_id, format);
    if let ProxyError::MethodNotAllowed { allow } = err {
        // RFC 9110 §15.5.6: a 405 says what the resource does answer.
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// Whether an exchange failed because the client's request body did.
pub(crate) fn caused_by_client_body(err: &ProxyError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(error) = source {
        if error.is::<ClientBodyError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// What a failed send to an endpoint means.
pub(crate) fn classify_send_error(err: SendError) -> ProxyError {
    match err.connect_error() {
        Some(ConnectError::Timeout { .. }) => ProxyError::UpstreamConnectTimeout(Box::new(err)),
        Some(_) => ProxyError::UpstreamConnect(Box::new(err)),
        None if err.is_connect() => ProxyError::UpstreamConnect(Box::new(err)),
        None => ProxyError::UpstreamProtocol(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses_follow_the_error_source() {
        assert_eq!(ProxyError::UnknownHost.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ProxyError::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::UpstreamConnect("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::UpstreamConnect("x".into()).source_kind(),
            ErrorSource::Upstream
        );
    }
}
