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
    let mut response = Response::new(ResponseBody::full(page::json_error(
        error, message, login_url,
    )));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
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
