//! Reading configuration text for people: every problem the file's shape has at once (each
//! section, and each item of a list or map, is read on its own), each with the field path, the
//! line it is on and words a person uses ("a whole number", not `expected usize`).
//!
//! serde stops at the first error and names only the innermost field; `serde_path_to_error`
//! gives the whole path, and `yaml-rust2`'s parser events give each field's line (serde_yaml_ng
//! reads values without their positions).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use yaml_rust2::parser::{Event, Parser};

use super::host::{HostConfig, PathConfig};
use super::identity::IdentityConfig;
use super::listen::{Limits, Listen};
use super::problem::Problem;
use super::tls::Tls;
use super::tunnel::{AgentConfig, TunnelConfig};
use super::upstream::UpstreamConfig;
use crate::policy::AccessPolicy;

/// The whole file `text` read as `File` (the configuration), or every problem of its shape.
pub(super) fn read<File: DeserializeOwned>(text: &str) -> Result<File, Vec<Problem>> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|error| {
        let message = error.to_string();
        if message.starts_with("duplicate entry")
            && let Some((field, line)) = Positions::of(text).repeated.into_iter().next()
        {
            let mut problem = Problem::new(field, "is written twice in the same section");
            problem.line = Some(line);
            return vec![problem];
        }
        let mut problem = Problem::new("", human(&message));
        problem.line = error.location().map(|l| l.line());
        vec![problem]
    })?;
    let first = match serde_path_to_error::deserialize::<_, File>(value.clone()) {
        Ok(config) => return Ok(config),
        Err(error) => problem_at("", &error),
    };
    let mut problems = Vec::new();
    every_problem(&value, &mut problems);
    if problems.is_empty() {
        problems.push(first);
    }
    Err(problems)
}

/// Puts the line of each problem's field (or of the nearest enclosing one) on it.
pub(crate) fn locate(text: &str, problems: &mut [Problem]) {
    if problems.iter().all(|p| p.line.is_some()) {
        return;
    }
    let lines = Positions::of(text);
    for problem in problems.iter_mut().filter(|p| p.line.is_none()) {
        problem.line = lines.line(&problem.field);
    }
}

/// Reads each section, and each item of the lists and maps, on its own.
fn every_problem(value: &Value, problems: &mut Vec<Problem>) {
    let Some(sections) = value.as_mapping() else {
        problems.push(Problem::new(
            "",
            "the file must be a mapping of sections (`listen:`, `hosts:`, …)",
        ));
        return;
    };
    if !sections.contains_key("listen") {
        problems.push(Problem::new(
            "listen",
            "is missing: say where to listen (`https:` and `admin:` addresses)",
        ));
    }
    for (key, value) in sections {
        let Some(key) = key.as_str() else {
            problems.push(Problem::new("", "section names must be text"));
            continue;
        };
        match key {
            "listen" => check::<Listen>(value, key, problems),
            "workers" => check::<usize>(value, key, problems),
            "tls" => check::<Tls>(value, key, problems),
            "trusted_proxies" => check::<Vec<ipnet::IpNet>>(value, key, problems),
            "limits" => check::<Limits>(value, key, problems),
            "access_log" => check::<bool>(value, key, problems),
            "identity" => check_identity(value, problems),
            "upstreams" => each_entry::<UpstreamConfig>(value, key, problems),
            "policies" => each_entry::<AccessPolicy>(value, key, problems),
            "agents" => each_entry::<AgentConfig>(value, key, problems),
            "tunnels" => each_item::<TunnelConfig>(value, key, problems),
            "hosts" => check_hosts(value, problems),
            unknown => problems.push(Problem::new(unknown, unknown_field(unknown, SECTIONS))),
        }
    }
}

const SECTIONS: &[&str] = &[
    "listen",
    "workers",
    "tls",
    "trusted_proxies",
    "limits",
    "access_log",
    "identity",
    "upstreams",
    "policies",
    "agents",
    "tunnels",
    "hosts",
];

fn check_hosts(value: &Value, problems: &mut Vec<Problem>) {
    let Some(hosts) = value.as_sequence() else {
        return check::<Vec<HostConfig>>(value, "hosts", problems);
    };
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("hosts[{i}]");
        // Each path on its own, then the host without its paths.
        let mut host = host.clone();
        if let Some(paths) = host
            .as_mapping_mut()
            .and_then(|m| m.get_mut("paths"))
            .map(std::mem::take)
        {
            each_item::<PathConfig>(&paths, &format!("{field}.paths"), problems);
        }
        check::<HostConfig>(&host, &field, problems);
    }
}

fn check_identity(value: &Value, problems: &mut Vec<Problem>) {
    let mut identity = value.clone();
    let mapping = identity.as_mapping_mut();
    let providers = mapping.as_ref().and_then(|m| m.get("providers")).cloned();
    let issuers = mapping
        .as_ref()
        .and_then(|m| m.get("bearer_issuers"))
        .cloned();
    if let Some(mapping) = identity.as_mapping_mut() {
        mapping.remove("providers");
        mapping.remove("bearer_issuers");
    }
    if let Some(providers) = providers {
        each_item::<sekisho_identity::oidc::ProviderConfig>(
            &providers,
            "identity.providers",
            problems,
        );
    }
    if let Some(issuers) = issuers {
        each_item::<sekisho_identity::bearer::BearerIssuerConfig>(
            &issuers,
            "identity.bearer_issuers",
            problems,
        );
    }
    check::<IdentityConfig>(&identity, "identity", problems);
}

fn each_item<T: DeserializeOwned>(value: &Value, field: &str, problems: &mut Vec<Problem>) {
    match value.as_sequence() {
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                check::<T>(item, &format!("{field}[{i}]"), problems);
            }
        }
        None => check::<Vec<T>>(value, field, problems),
    }
}

fn each_entry<T: DeserializeOwned>(value: &Value, field: &str, problems: &mut Vec<Problem>) {
    match value.as_mapping() {
        Some(entries) => {
            for (name, entry) in entries {
                let name = name.as_str().unwrap_or("?");
                let entry_field = format!("{field}.{name}");
                match misplaced_field(name) {
                    Some(owner) if !entry.is_mapping() => problems.push(Problem::new(
                        entry_field,
                        format!(
                            "`{name}` looks like a field of {owner}, not the name of an entry: \
                             check its indentation"
                        ),
                    )),
                    _ => check::<T>(entry, &entry_field, problems),
                }
            }
        }
        None if value.is_null() => {}
        None => problems.push(Problem::new(
            field,
            "must be a section of named entries (`name: {…}`)",
        )),
    }
}

fn check<T: DeserializeOwned>(value: &Value, field: &str, problems: &mut Vec<Problem>) {
    if let Err(error) = serde_path_to_error::deserialize::<_, T>(value.clone()) {
        problems.push(problem_at(field, &error));
    }
}

fn problem_at(field: &str, error: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> Problem {
    let inner = error.path().to_string();
    Problem::new(join(field, &inner), human(&error.inner().to_string()))
}

fn join(field: &str, inner: &str) -> String {
    match (field, inner) {
        (_, "" | ".") => field.to_owned(),
        ("", inner) => inner.trim_start_matches('.').to_owned(),
        (field, inner) if inner.starts_with('[') => format!("{field}{inner}"),
        (field, inner) => format!("{field}.{}", inner.trim_start_matches('.')),
    }
}

/// serde's message in words a person uses.
fn human(message: &str) -> String {
    // serde_yaml_ng appends " at line L column C": the line goes to the problem's own field.
    let message = match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    if message.contains("found a tab character") {
        return "a tab indents this line; YAML indents with spaces only".to_owned();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let fields: Vec<&str> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|f| !f.is_empty())
            .collect();
        return unknown_field(name, &fields);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("`{name}` is missing here");
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!("`{name}` is not one of: {}", options.join(", "));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            return format!(
                "is {}, but must be {}",
                found_words(found),
                expected_words(expected)
            );
        }
    }
    message.to_owned()
}

/// What serde found, as a person would say it: `string "abc"` → `"abc"`.
fn found_words(found: &str) -> String {
    for kind in ["string ", "integer ", "floating point ", "boolean "] {
        if let Some(value) = found.strip_prefix(kind) {
            return value.trim_matches('`').to_owned();
        }
    }
    match found {
        "sequence" => "a list".to_owned(),
        "map" => "a section of fields".to_owned(),
        "unit value" => "empty".to_owned(),
        other => other.to_owned(),
    }
}

/// What serde expected, as a person would say it.
fn expected_words(expected: &str) -> String {
    let words = match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number",
        "i64" | "i32" | "isize" => "a whole number (it may be negative)",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a string" => "text",
        "a sequence" => "a list",
        "a map" => "a section of fields",
        other if other.starts_with("struct ") => "a section of fields",
        other if other.starts_with("a sequence") => "a list",
        other => return other.to_owned(),
    };
    words.to_owned()
}

/// The message for a field that has no place where it is written. When it is a field of
/// another part of the file, it was most likely indented one level too far out or in.
fn unknown_field(name: &str, fields: &[&str]) -> String {
    let mut message = format!("`{name}` is not a field here");
    if let Some(close) = fields
        .iter()
        .copied()
        .filter(|f| strsim::levenshtein(f, name) <= 2)
        .min_by_key(|f| strsim::levenshtein(f, name))
    {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    } else if let Some(owner) = misplaced_field(name) {
        message.push_str(&format!(
            "; it is a field of {owner}: check its indentation"
        ));
    }
    if !fields.is_empty() {
        message.push_str(&format!("; the fields here are {}", fields.join(", ")));
    }
    message
}

/// Where `name` (or a field spelled nearly like it) belongs, when it is a nested field.
fn misplaced_field(name: &str) -> Option<&'static str> {
    NESTED_FIELDS
        .iter()
        .find(|(field, _)| strsim::levenshtein(field, name) <= 2.min(field.len() / 3))
        .map(|(_, owner)| *owner)
}

/// Fields of the file's nested parts, with where they belong, for the indentation hint.
const NESTED_FIELDS: &[(&str, &str)] = &[
    ("path", "each of a host's `paths`"),
    ("type", "each of a host's `paths`"),
    ("upstream", "each of a host's `paths`"),
    ("webhook", "each of a host's `paths`"),
    ("endpoints", "an upstream (under `upstreams:`)"),
    ("protocol", "an upstream (under `upstreams:`)"),
    ("connect_timeout", "an upstream or a tunnel"),
    (
        "response_header_timeout",
        "an upstream (under `upstreams:`)",
    ),
    ("ejection", "an upstream (under `upstreams:`)"),
    ("https", "`listen:`"),
    ("http", "`listen:`"),
    ("admin", "`listen:`"),
    ("http_mode", "`listen:`"),
    ("certificates", "`tls:`"),
    ("cert", "each of `tls.certificates`"),
    ("key", "each of `tls.certificates`"),
    ("auth_host", "`identity:`"),
    ("providers", "`identity:`"),
    (
        "issuer",
        "each of `identity.providers` or `identity.bearer_issuers`",
    ),
    ("client_id", "each of `identity.providers`"),
    ("client_secret_file", "each of `identity.providers`"),
    ("allow", "a policy (under `policies:`)"),
    ("rules", "a policy (under `policies:`)"),
    ("identity_headers", "a policy (under `policies:`)"),
    ("public_keys", "an agent (under `agents:`)"),
    ("target", "a tunnel (under `tunnels:`)"),
    ("paths", "a host (under `hosts:`)"),
    ("default", "a host (under `hosts:`)"),
];

/// The line each field of a YAML document starts on, by field path.
struct Positions {
    lines: HashMap<String, usize>,
    /// Fields written a second time in the same section, with the line of the second.
    repeated: Vec<(String, usize)>,
}

enum Frame {
    Map { awaiting_value: bool },
    Seq { next: usize },
}

impl Positions {
    fn of(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut repeated = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut path: Vec<String> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            let line = mark.line();
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { awaiting_value }) = stack.last_mut()
                        && !*awaiting_value
                    {
                        *awaiting_value = true;
                        let separator = if path.is_empty() { "" } else { "." };
                        path.push(format!("{separator}{value}"));
                        match lines.entry(path.concat()) {
                            Entry::Occupied(field) => repeated.push((field.key().clone(), line)),
                            Entry::Vacant(field) => {
                                field.insert(line);
                            }
                        }
                    } else {
                        begin_value(&mut stack, &mut path, &mut lines, line);
                        end_value(&mut stack, &mut path);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    begin_value(&mut stack, &mut path, &mut lines, line);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map {
                            awaiting_value: false,
                        },
                        _ => Frame::Seq { next: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    end_value(&mut stack, &mut path);
                }
                _ => {}
            }
        }
        Self { lines, repeated }
    }

    /// The line of `field`, or of the nearest enclosing field that has one.
    fn line(&self, field: &str) -> Option<usize> {
        let mut field = field;
        loop {
            if let Some(line) = self.lines.get(field) {
                return Some(*line);
            }
            let cut = field.rfind(['.', '['])?;
            field = &field[..cut];
        }
    }
}

fn begin_value(
    stack: &mut [Frame],
    path: &mut Vec<String>,
    lines: &mut HashMap<String, usize>,
    line: usize,
) {
    if let Some(Frame::Seq { next }) = stack.last_mut() {
        path.push(format!("[{next}]"));
        *next += 1;
        lines.entry(path.concat()).or_insert(line);
    }
}

fn end_value(stack: &mut [Frame], path: &mut Vec<String>) {
    match stack.last_mut() {
        Some(Frame::Seq { .. }) => {
            path.pop();
        }
        Some(Frame::Map { awaiting_value }) if *awaiting_value => {
            *awaiting_value = false;
            path.pop();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_its_line_in_block_and_flow_style() {
        let text = "listen:\n  https: 1\nhosts:\n  - host: a\n    paths:\n      - {path: /, upstream: app}\n      - path: /x\n        upstream: b\n";
        let lines = Positions::of(text);
        for (field, line) in [
            ("listen", 1),
            ("listen.https", 2),
            ("hosts", 3),
            ("hosts[0]", 4),
            ("hosts[0].host", 4),
            ("hosts[0].paths", 5),
            ("hosts[0].paths[0]", 6),
            ("hosts[0].paths[0].upstream", 6),
            ("hosts[0].paths[1].upstream", 8),
            ("hosts[0].paths[1].nothing", 7),
        ] {
            assert_eq!(lines.line(field), Some(line), "{field}");
        }
    }

    #[test]
    fn serde_messages_become_words_a_person_uses() {
        let cases = [
            (
                "invalid type: string \"two\", expected usize",
                "is \"two\", but must be a whole number",
            ),
            (
                "invalid type: sequence, expected a boolean",
                "is a list, but must be true or false",
            ),
            ("missing field `upstream`", "`upstream` is missing here"),
            (
                "unknown variant `Prefx`, expected `Prefix` or `Exact`",
                "`Prefx` is not one of: Prefix, Exact",
            ),
            (
                "unknown field `pth`, expected one of `path`, `type`, `upstream`",
                "`pth` is not a field here (did you mean `path`?); the fields here are path, type, upstream",
            ),
        ];
        for (serde, person) in cases {
            assert_eq!(human(serde), person, "{serde}");
        }
    }

    #[test]
    fn a_field_of_a_nested_part_is_reported_as_mis_indented() {
        let message = unknown_field("upstream", &["host", "default", "paths"]);
        assert!(
            message.contains("it is a field of each of a host's `paths`: check its indentation"),
            "{message}"
        );
    }
}
