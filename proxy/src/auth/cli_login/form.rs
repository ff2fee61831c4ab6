//! The bounded `application/x-www-form-urlencoded` bodies the CLI endpoints take (RFC 6749
//! §3.2: the token endpoint's requests are forms, each parameter at most once, and a parameter
//! without a value counts as absent).

use http::HeaderMap;
use http::header::CONTENT_TYPE;

/// The largest body read (a refresh token is at most 4 KiB).
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// The most fields a form may have.
const MAX_FIELDS: usize = 16;
/// The longest field name.
const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormError {
    #[error("the body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the form has more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("a field name is longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("`{0}` is given more than once")]
    Repeated(String),
}

/// A parsed form: names are unique, empty values are left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, FormError> {
        if body.len() > MAX_BODY {
            return Err(FormError::TooLarge);
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(body) {
            if name.len() > MAX_NAME {
                return Err(FormError::NameTooLong);
            }
            if fields.iter().any(|(seen, _)| *seen == name) {
                return Err(FormError::Repeated(name.into_owned()));
            }
            if fields.len() == MAX_FIELDS {
                return Err(FormError::TooManyFields);
            }
            fields.push((name.into_owned(), value.into_owned()));
        }
        fields.retain(|(_, value)| !value.is_empty());
        Ok(Self(fields))
    }

    /// The value of `name`, if given and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether the request says its body is a form (`application/x-www-form-urlencoded`, any
/// parameters such as `charset`).
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn fields_are_decoded_and_empty_ones_count_as_absent() {
        let form = Form::parse(b"grant_type=refresh_token&refresh_token=a%2Bb+c&scope=").unwrap();
        assert_eq!(form.get("grant_type"), Some("refresh_token"));
        assert_eq!(form.get("refresh_token"), Some("a+b c"));
        assert_eq!(form.get("scope"), None);
        assert_eq!(form.get("missing"), None);
        assert_eq!(Form::parse(b"").unwrap(), Form::default());
    }

    #[test]
    fn a_field_given_twice_is_refused_even_when_one_is_empty() {
        assert_eq!(
            Form::parse(b"code=a&code=b"),
            Err(FormError::Repeated("code".into()))
        );
        assert_eq!(
            Form::parse(b"code=&code=b"),
            Err(FormError::Repeated("code".into()))
        );
    }

    #[test]
    fn oversized_bodies_too_many_fields_and_long_names_are_refused() {
        assert_eq!(
            Form::parse(&vec![b'a'; MAX_BODY + 1]),
            Err(FormError::TooLarge)
        );
        let largest = format!("a={}", "b".repeat(MAX_BODY - 2));
        assert_eq!(
            Form::parse(largest.as_bytes())
                .unwrap()
                .get("a")
                .map(str::len),
            Some(MAX_BODY - 2)
        );
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("f{i}=1")).collect();
        assert_eq!(
            Form::parse(many.join("&").as_bytes()),
            Err(FormError::TooManyFields)
        );
        let enough: Vec<String> = (0..MAX_FIELDS).map(|i| format!("f{i}=1")).collect();
        assert!(Form::parse(enough.join("&").as_bytes()).is_ok());
        let long = format!("{}=1", "n".repeat(MAX_NAME + 1));
        assert_eq!(Form::parse(long.as_bytes()), Err(FormError::NameTooLong));
    }

    #[test]
    fn bytes_that_are_not_utf8_never_panic() {
        let form = Form::parse(b"a=%ff%fe&b=\xff").unwrap();
        assert!(form.get("a").is_some());
    }

    #[test]
    fn only_form_content_types_are_forms() {
        let mut headers = HeaderMap::new();
        assert!(!is_form(&headers));
        for (value, form) in [
            ("application/x-www-form-urlencoded", true),
            ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", true),
            ("application/json", false),
            ("multipart/form-data; boundary=x", false),
            ("application/x-www-form-urlencodedx", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_form(&headers), form, "{value}");
        }
    }
}
