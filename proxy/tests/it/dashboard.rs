//! The Grafana dashboard (`deploy/grafana/sekisho-proxy.json`) asks only for metrics the proxy
//! exports: every metric name in its queries is a series of `/metrics` (a histogram's
//! `_bucket`, `_sum` and `_count`, a counter's `_total`). The proxy runs in Kubernetes mode,
//! which exports every family of file mode and the Kubernetes ones; no API server needs to
//! answer for those to be registered.

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::support::*;

/// PromQL words that take a label list in parentheses, which names no metric.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// PromQL operators and modifiers written as words.
const KEYWORDS: [&str; 7] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "group_left",
    "group_right",
];

/// The index just past the `close` that ends what opens at `start` (`chars[start]` is the
/// opening character), skipping quoted strings.
fn skip(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if chars[i] == '"' {
            i = skip_quoted(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

/// The index just past the string quoted at `start`.
fn skip_quoted(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges, strings and label lists, that are neither functions nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_quoted(&chars, i);
        } else if c == '{' {
            i = skip(&chars, i, '}');
        } else if c == '[' {
            i = skip(&chars, i, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A dashboard variable, or a number (with its exponent or unit).
            i += 1;
            while i < chars.len() && (word_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // A function or an aggregation (`sum(...)`, `sum by (...) (...)`).
            let rest: String = chars[next..].iter().take(16).collect();
            let call = rest.starts_with('(')
                || LABEL_LISTS.iter().any(|w| {
                    rest.strip_prefix(w)
                        .is_some_and(|r| r.trim_start().starts_with('('))
                });
            if chars.get(next) == Some(&'(') && LABEL_LISTS.contains(&word.as_str()) {
                i = skip(&chars, next, ')');
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric name the dashboard's panels and variables query.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        // Collapsed rows hold their panels.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.is_empty(),
                "a target without expr in {}",
                panel["title"]
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}: a query that does not use the datasource variable",
                panel["title"]
            );
            names.extend(metric_names(expr));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Value::String(query) => query.as_str(),
            query => query["query"].as_str().unwrap_or_default(),
        };
        // label_values(METRIC{...}, label): only the first argument names a metric.
        if let Some(args) = query.strip_prefix("label_values(") {
            let chars: Vec<char> = args.chars().collect();
            let mut end = 0;
            while end < chars.len() && chars[end] != ',' {
                end = if chars[end] == '{' {
                    skip(&chars, end, '}')
                } else {
                    end + 1
                };
            }
            names.extend(metric_names(
                &chars[..end.min(chars.len())].iter().collect::<String>(),
            ));
        }
    }
    names
}

/// The names of the series an exposition can hold: each family's own, by its type.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names.remove("");
    names
}

/// `/metrics` of a file-mode proxy in which the families that start empty have a series: a
/// request served (requests, durations), an endpoint ejected, an identity provider configured
/// (logins, provider errors) and an agent connected.
async fn exposition_with_traffic() -> String {
    let pki = Pki::new();
    let (cert, key) = pki.write_leaf("site", &["app.test", "auth.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (agent_key, agent_pem) = sekisho_wire::agent_auth::AgentKey::generate().unwrap();
    let key_file = dir.path().join("nas.key");
    std::fs::write(&key_file, agent_pem).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&format!(
        "{certs}{identity}agents:
  nas: {{public_keys: ['{public}']}}
upstreams:
  pair:
    endpoints: ['http://{closed}', '{app}']
    ejection: {{consecutive_failures: 1, duration: 60s}}
hosts:
  - host: app.test
    public: true
    default: pair
",
        certs = certificates_yaml(&[(cert, key)]),
        identity = identity_yaml(dir.path(), ""),
        public = agent_key.public_key(),
        closed = closed_port(),
        app = app.url(),
    ));
    let client = TlsClient::new(&pki, proxy.https(), false);
    for _ in 0..4 {
        client.get("app.test", "/").await;
    }

    let port = proxy.https().port();
    let yaml = format!(
        "name: nas\nkey_file: '{}'\nca_file: '{}'\nproxies:\n  - {{url: 'https://auth.test:{port}', address: '127.0.0.1:{port}'}}\nallow: {{http: ['{}']}}\n",
        key_file.display(),
        ca_file.display(),
        app.addr,
    );
    let settings = sekisho_agent::config::Config::parse(&yaml, std::path::Path::new("nas.yaml"))
        .unwrap()
        .settings(None, Default::default())
        .unwrap();
    let agent = sekisho_agent::Agent::new(settings).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(agent.run(async {
            let _ = stopped.await;
        }));
    });
    let running = proxy.running();
    assert!(
        eventually(Duration::from_secs(10), || async {
            running.agent_links("nas") == 1
        })
        .await,
        "the agent connects"
    );
    let exposition = proxy.metrics().await;
    drop(stop);
    thread.join().unwrap();
    exposition
}

/// `/metrics` of a proxy in Kubernetes mode. Nothing listens on port 1: the watches fail and
/// retry, and the Kubernetes families are registered all the same.
async fn exposition_in_kubernetes_mode() -> String {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("static.yaml");
    std::fs::write(&config_path, LISTEN).unwrap();
    let unreachable = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let running = sekisho_proxy::start(sekisho_proxy::Options {
        config_path: Some(config_path),
        access_log: Some(Box::new(std::io::sink())),
        handle_signals: false,
        dev_ca_dir: Some(dir.path().join("dev-ca")),
        kubernetes: Some(sekisho_proxy::KubernetesOptions {
            config: Some(unreachable),
            ..sekisho_proxy::KubernetesOptions::default()
        }),
    })
    .expect("proxy starts");
    let (status, _, exposition) = plain_get(running.admin_addr, "admin", "/metrics").await;
    running.shutdown();
    std::thread::spawn(move || running.wait());
    assert_eq!(status, StatusCode::OK);
    exposition
}

#[test]
fn metric_names_are_read_from_queries_without_labels_functions_or_variables() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (route, le) (rate(a_bucket{job=~"$job", x="{y}"}[$__rate_interval]))) / on (route) group_left b_total offset 5m and c > bool 1e3 - time() + d:rule"#,
    );
    assert_eq!(names, ["a_bucket", "b_total", "c", "d:rule"]);
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_is_exported_by_the_proxy() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/sekisho-proxy.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    let wanted = dashboard_metrics(&dashboard);
    assert!(
        wanted.len() >= 20,
        "only {} metric names found: {wanted:?}",
        wanted.len()
    );

    let exposition = format!(
        "{}{}",
        exposition_with_traffic().await,
        exposition_in_kubernetes_mode().await
    );
    let exported = exported(&exposition);
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "deploy/grafana/sekisho-proxy.json queries metrics the proxy does not export: \
         {missing:?}\n/metrics:\n{exposition}"
    );
}
