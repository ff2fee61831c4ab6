//! What is wrong with a configuration, field by field, and the naming rules every section
//! shares. A leaf: it must not depend on the rest of the proxy.

use std::collections::HashSet;
use std::fmt;

/// One problem of a configuration: the field (as a path into the document, like
/// `hosts[0].paths[1].upstream`; empty for the whole file), what is wrong with it in words a
/// person uses, and the line it is on, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
    pub line: Option<usize>,
}

impl Problem {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for Problem {
    /// `field: message` (the line goes before it, with the file's name: see
    /// [`super::ConfigError`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.as_str() {
            "" => f.write_str(&self.message),
            field => write!(f, "{field}: {}", self.message),
        }
    }
}

/// Every problem found so far.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(field, message));
    }

    pub(crate) fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }

    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// What the sections define, for checking the references between them.
#[derive(Debug, Default)]
pub(crate) struct Names<'a> {
    pub(crate) upstreams: HashSet<&'a str>,
    pub(crate) policies: HashSet<&'a str>,
    pub(crate) agents: HashSet<&'a str>,
    /// Whether people can log in (`identity` is configured).
    pub(crate) identity: bool,
}

impl Names<'_> {
    /// The problem with a `policy:` reference, if it names no policy.
    pub(crate) fn unknown_policy(&self, name: Option<&str>) -> Option<String> {
        name.filter(|name| !self.policies.contains(name))
            .map(|name| format!("no policy named `{name}`"))
    }
}

/// The naming rule for upstreams and policies.
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Letters, digits and `-` in dot-separated labels of at most 63 bytes, none starting or
/// ending with `-`; at most 253 bytes in all.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(valid_label)
}

/// A host is an exact DNS name, or `*.` followed by a DNS name (one label wildcard).
pub(crate) fn check_host_pattern(host: &str) -> Result<(), String> {
    if !is_dns_name(host.strip_prefix("*.").unwrap_or(host)) {
        return Err(format!(
            "`{host}` is not a DNS name or a `*.` wildcard of one"
        ));
    }
    Ok(())
}
