//! `deploy/examples/agent.yaml`, the example docs/agent.md points people at, is read by the
//! agent's own loader, so that it cannot drift from what the agent accepts: every field of the
//! file format is written in it (the destructuring below stops compiling when a field is added),
//! the lines it leaves commented out are valid too, and its paths are the systemd unit's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::re::humantime;
use sekisho_agent::config::{AllowConfig, Config, Overrides, ProxyConfig};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> (PathBuf, String) {
    let path = repository().join("deploy/examples/agent.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

/// The example with its optional fields (`# address: …`, `# ca_file: …`) switched on.
fn uncommented(text: &str) -> String {
    let mut switched = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            match line.trim_start().strip_prefix("# ") {
                Some(rest) if rest.starts_with("address: ") || rest.starts_with("ca_file: ") => {
                    switched += 1;
                    format!("{indent}{rest}")
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        switched, 2,
        "the example no longer has its two optional lines"
    );
    lines.join("\n")
}

#[test]
fn the_example_agent_config_is_valid_as_shipped() {
    let (path, text) = example();
    let config = Config::parse(&text, &path).unwrap();
    let settings = config
        .settings(Some(&path), Overrides::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(settings.name, "nas");
    assert_eq!(settings.proxies.len(), 1);
    assert_eq!(settings.proxies[0].address, None);
    assert_eq!(settings.ca_file, None);
    assert_eq!(settings.allow.tcp(), ["127.0.0.1:22"]);
}

#[test]
fn the_example_agent_config_writes_every_field_and_its_commented_lines_are_valid() {
    let (path, text) = example();
    let config = Config::parse(&uncommented(&text), &path).unwrap();
    let settings = config
        .clone()
        .settings(Some(&path), Overrides::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(settings.proxies[0].address.is_some());
    assert!(settings.ca_file.is_some());

    // No `..`: a new field in the format fails to compile here until the example has it.
    let Config {
        name,
        key_file,
        proxies,
        ca_file,
        connections,
        connect_timeout,
        shutdown_grace,
        allow,
    } = config;
    assert!(name.is_some() && key_file.is_some() && ca_file.is_some());
    let [ProxyConfig { url, address }] = &proxies[..] else {
        panic!("one proxy: {proxies:?}")
    };
    assert!(url.starts_with("https://") && address.is_some());
    // Written out even where they equal the defaults, so that people see them.
    for (field, value) in [
        ("connections", format!("{connections}")),
        (
            "connect_timeout",
            humantime::format_duration(connect_timeout).to_string(),
        ),
        (
            "shutdown_grace",
            humantime::format_duration(shutdown_grace).to_string(),
        ),
    ] {
        assert!(
            text.lines().any(|l| l == format!("{field}: {value}")),
            "{field}: {value} is not written in the example"
        );
    }
    let AllowConfig { tcp, http } = allow;
    assert!(!tcp.is_empty() && !http.is_empty());
}

/// The systemd unit's value of `key`, such as `TimeoutStopSec`.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_owned()
}

#[test]
fn the_example_agent_config_fits_the_systemd_unit() {
    let (path, text) = example();
    let settings = Config::parse(&text, &path)
        .unwrap()
        .settings(Some(&path), Overrides::default())
        .unwrap();
    let unit =
        std::fs::read_to_string(repository().join("deploy/systemd/sekisho-agent.service")).unwrap();
    assert!(
        unit_value(&unit, "ExecStart").ends_with("run --config /etc/sekisho-agent/config.yaml"),
        "the unit reads another file than the one the example says it is"
    );
    let state = Path::new("/var/lib").join(unit_value(&unit, "StateDirectory"));
    assert_eq!(settings.key_file.parent(), Some(state.as_path()));
    let stop: Duration = humantime::parse_duration(&unit_value(&unit, "TimeoutStopSec")).unwrap();
    assert!(
        settings.shutdown_grace < stop,
        "systemd would kill the agent before its streams' grace is over"
    );
}
