//! What the proxy answers itself: status pages, the HTML pages of login and refusals, JSON
//! errors, redirects, request ids. Every built-in endpoint and every phase that answers early
//! uses these; they depend only on the response body type and the page templates.

pub(crate) mod body;
pub(crate) mod page;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use body::ResponseBody;

/// The request id header, on requests to upstreams and on every response.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How a client wants the proxy's own errors: a page for browsers, JSON for programs that ask
/// for it, plain text for the rest (curl).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Format {
    Html,
    Json,
    #[default]
    Text,
}

impl Format {
    /// From a request's `Accept` header.
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        let Some(accept) = headers.get(header::ACCEPT) else {
            return Self::Text;
        };
        let accept = accept.as_bytes();
        if memchr::memmem::find(accept, b"text/html").is_some() {
            Self::Html
        } else if memchr::memmem::find(accept, b"json").is_some() {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// The proxy's own answer for `status`: `message` says what happened, in the client's
/// [`Format`], naming the request id.
pub(crate) fn error_page(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
    format: Format,
) -> Response<ResponseBody> {
    let id = request_id.to_str().unwrap_or("-");
    let (body, content_type) = match format {
        Format::Text => return status_page(status, message, request_id),
        Format::Html => (
            page::error(status.as_u16(), error_title(status), message, id),
            page::CONTENT_TYPE,
        ),
        Format::Json => (
            serde_json::json!({
                "error": status.canonical_reason().unwrap_or("error").to_ascii_lowercase().replace(' ', "_"),
                "message": message,
                "request_id": id,
            })
            .to_string(),
            "application/json",
        ),
    };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if format == Format::Html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
        );
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    response
}

/// A page title for an error status, in words a person reads.
fn error_title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "This request cannot be served",
        401 | 403 => "Not allowed",
        404 => "Nothing here",
        405 => "Not allowed this way",
        413 => "Too large",
        431 => "Request headers too large",
        501 => "Not supported",
        502 => "The service behind this address failed",
        503 => "Not available right now",
        504 => "The service behind this address did not answer in time",
        _ => "Something went wrong",
    }
}

/// A plain-text answer for `status`, naming the request id.
pub(crate) fn status_page(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = format!(
        "{} {}\n{message}\nrequest id: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        request_id.to_str().unwrap_or("-"),
    );
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

pub(crate) fn is_acceptable_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, byte) in random.to_be_bytes().iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

pub(crate) fn html(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page::CONTENT_TYPE),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

pub(crate) fn json_error(
    status: StatusCode,
    error: &str,
    message: &str,
    login_url: Option<&str>,
) -> Response<ResponseBody> {
    json(
        status,
        page::json_error(error, message, login_url).into_bytes(),
    )
}

/// `body` (JSON, or nothing) with `status`, not to be cached.
pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let empty = body.is_empty();
    let mut response = Response::new(match empty {
        true => ResponseBody::empty(),
        false => ResponseBody::full(body),
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !empty {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

pub(crate) fn query<B>(req: &Request<B>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn redirect(
    location: &str,
    set_cookies: Option<Vec<HeaderValue>>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in set_cookies.into_iter().flatten() {
        headers.append(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_random_hex_and_client_ids_are_checked() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
        assert!(is_acceptable_request_id(b"abc-123_x.y"));
        assert!(!is_acceptable_request_id(b""));
        assert!(!is_acceptable_request_id(b"a b"));
        assert!(!is_acceptable_request_id(&[b'a'; 129]));
    }
}
