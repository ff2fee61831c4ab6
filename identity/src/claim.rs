//! Reading the claims that providers shape differently (groups, booleans, audiences, dates).

use serde_json::{Map, Value};

/// Group names from a claim that holds either one string or an array of strings. Non-string
/// array members are skipped.
pub(crate) fn groups(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(group)) => vec![group.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A boolean claim; some providers send `"true"` as a string.
pub(crate) fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// The `aud` claim as a list: one string or an array of strings.
pub(crate) fn audiences(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A `NumericDate` claim as whole seconds; fractions are dropped, anything else is `None`.
pub(crate) fn numeric_date(value: Option<&Value>) -> Option<i64> {
    let value = value?;
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// Seconds since the Unix epoch, as `NumericDate`s count them.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_accept_a_string_or_an_array() {
        assert_eq!(groups(Some(&json!("staff"))), ["staff"]);
        assert_eq!(
            groups(Some(&json!(["staff", 3, "admins"]))),
            ["staff", "admins"]
        );
        assert!(groups(Some(&json!({"a": 1}))).is_empty());
        assert!(groups(None).is_empty());
    }

    #[test]
    fn booleans_accept_strings_that_spell_them() {
        assert_eq!(boolean(Some(&json!(true))), Some(true));
        assert_eq!(boolean(Some(&json!("false"))), Some(false));
        assert_eq!(boolean(Some(&json!("yes"))), None);
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_only() {
        assert_eq!(numeric_date(Some(&json!(10))), Some(10));
        assert_eq!(numeric_date(Some(&json!(10.7))), Some(10));
        assert_eq!(numeric_date(Some(&json!("10"))), None);
        assert_eq!(numeric_date(None), None);
    }

    #[test]
    fn audiences_accept_a_string_or_an_array() {
        let claims = json!({"aud": ["a", "b"]});
        assert_eq!(audiences(claims.as_object().unwrap()), ["a", "b"]);
        let claims = json!({"aud": "a"});
        assert_eq!(audiences(claims.as_object().unwrap()), ["a"]);
    }
}
