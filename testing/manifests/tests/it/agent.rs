//! The agent's example configuration and its systemd unit agree, and the agent accepts it.

use crate::support::repo;

#[test]
fn the_agent_example_configuration_is_valid_where_the_systemd_unit_reads_it() {
    let path = repo().join("deploy/examples/agent/config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = sekisho_agent::config::Config::parse(&text, &path).unwrap();
    let settings = config.settings(Some(&path), Default::default());
    assert!(settings.is_ok(), "{}: {:?}", path.display(), settings.err());

    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/sekisho-agent.service")).unwrap();
    assert!(
        unit.lines().any(|l| l.starts_with("ExecStart=")
            && l.ends_with("run --config /etc/sekisho-agent/config.yaml")),
        "the unit reads another file"
    );
    let key = "key_file: /var/lib/sekisho-agent/";
    assert!(
        text.contains(key) && unit.contains("StateDirectory=sekisho-agent"),
        "the key is not in the unit's state directory"
    );
}
