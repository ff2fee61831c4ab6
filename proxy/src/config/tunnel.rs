//! The `agents:` and `tunnels:` sections of the configuration.
//!
//! ```yaml
//! agents:
//!   nas:                                  # the agent's name (sekisho-agent --name nas)
//!     public_keys: ["ed25519:…"]          # printed by `sekisho-agent init`
//! tunnels:
//!   - host: nas.ssh.example.com           # what `sekisho tunnel` (ssh's %h) names
//!     policy: staff                       # who may open it; without one, no one
//!     agent: nas                          # optional: the agent dials the target
//!     target: 127.0.0.1:22                # host:port, as seen from the agent (or the proxy)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use sekisho_wire::agent_auth::AgentPublicKey;
use serde::Deserialize;

use super::problem::{Names, Problems, check_host_pattern};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The keys the agent may prove itself with (more than one while rotating).
    pub public_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    pub host: String,
    /// `host:port` the byte stream goes to.
    pub target: String,
    /// The agent that dials the target; without one, the proxy dials it itself.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    /// How long dialing the target may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl AgentConfig {
    /// The agent's keys, parsed (the configuration was validated, so all parse).
    pub fn public_keys(&self) -> Vec<AgentPublicKey> {
        self.public_keys
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect()
    }
}

/// Whether `target` is `host:port` with a port above zero.
pub(crate) fn check_target(target: &str) -> Result<(), String> {
    let bad = || format!("`{target}` is not host:port");
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match port.parse::<u16>() {
        Ok(port) if port > 0 && !host.is_empty() && !host.contains(['/', ' ', '@']) => Ok(()),
        _ => Err(bad()),
    }
}

pub(crate) fn validate_tunnels(
    tunnels: &[TunnelConfig],
    names: &Names<'_>,
    problems: &mut Problems,
) {
    let mut hosts = HashSet::new();
    for (i, tunnel) in tunnels.iter().enumerate() {
        let field = format!("tunnels[{i}]");
        let mut problem =
            |name: &str, message: String| problems.add(format!("{field}{name}"), message);
        match check_host_pattern(&tunnel.host) {
            Err(message) => problem(".host", message),
            Ok(()) if tunnel.host.starts_with("*.") => {
                problem(".host", "a tunnel is for one exact host name".into())
            }
            Ok(()) if !hosts.insert(tunnel.host.to_ascii_lowercase()) => {
                problem(".host", format!("`{}` is listed twice", tunnel.host))
            }
            Ok(()) => {}
        }
        if let Err(message) = check_target(&tunnel.target) {
            problem(".target", message);
        }
        if let Some(agent) = &tunnel.agent
            && !names.agents.contains(agent.as_str())
        {
            problem(".agent", format!("no agent named `{agent}` under `agents`"));
        }
        match &tunnel.policy {
            Some(name) if !names.policies.contains(name.as_str()) => {
                problem(".policy", format!("no policy named `{name}`"))
            }
            Some(_) if !names.identity => problem(
                ".policy",
                "tunnels need the `identity` section: their users log in with `sekisho login`"
                    .into(),
            ),
            _ => {}
        }
        if tunnel.connect_timeout.is_zero() {
            problem(".connect_timeout", "must be longer than zero".into());
        }
    }
}

pub(crate) fn validate_agents(agents: &BTreeMap<String, AgentConfig>, problems: &mut Problems) {
    for (name, agent) in agents {
        let field = format!("agents.{name}");
        if !sekisho_wire::is_name(name) {
            problems.add(
                field.clone(),
                "agent names are 1 to 63 lowercase letters, digits, '-', '_' and '.'",
            );
        }
        if agent.public_keys.is_empty() {
            problems.add(
                format!("{field}.public_keys"),
                "needs at least one key (sekisho-agent init prints it)",
            );
        }
        for (i, key) in agent.public_keys.iter().enumerate() {
            if let Err(error) = key.parse::<AgentPublicKey>() {
                problems.add(format!("{field}.public_keys[{i}]"), error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Problem};

    const KEY: &str = "ed25519:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn site(tunnels_and_agents: &str) -> String {
        format!(
            "
listen: {{https: '127.0.0.1:8443', admin: '127.0.0.1:9901'}}
identity: {{auth_host: auth.example.com}}
policies:
  staff: {{allow: [{{group: staff}}]}}
upstreams:
  app: {{endpoints: ['http://127.0.0.1:3000']}}
hosts:
  - {{host: app.example.com, default: app, policy: staff}}
{tunnels_and_agents}"
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(text, Path::new("test.yaml"), Path::new("/etc/sekisho")) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid { problems, .. }) => problems,
            Err(other) => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn agents_tunnels_and_agent_upstreams_parse() {
        let text = site(&format!(
            "agents:\n  nas: {{public_keys: ['{KEY}']}}\ntunnels:\n  - {{host: nas.ssh.example.com, policy: staff, agent: nas, target: '127.0.0.1:22'}}\n  - {{host: Jump.ssh.example.com, policy: staff, target: 'jump.internal:22', connect_timeout: 2s}}\n"
        ))
        .replace(
            "  app: {endpoints: ['http://127.0.0.1:3000']}",
            "  app: {endpoints: ['http://127.0.0.1:3000']}\n  nas-web: {agent: nas, endpoints: ['http://127.0.0.1:8080']}",
        );
        let config = Config::parse(&text, Path::new("t.yaml"), Path::new("/")).unwrap();
        assert_eq!(config.agents["nas"].public_keys().len(), 1);
        assert_eq!(config.tunnels[0].agent.as_deref(), Some("nas"));
        assert_eq!(config.tunnels[1].connect_timeout, Duration::from_secs(2));
        assert_eq!(config.upstreams["nas-web"].agent.as_deref(), Some("nas"));
    }

    #[test]
    fn every_problem_of_the_tunnel_sections_is_named_by_its_field() {
        let text = site(
            "agents:
  NAS: {public_keys: []}
  lab: {public_keys: ['ed25519:short', 'rsa:AAAA']}
tunnels:
  - {host: '*.ssh.example.com', policy: staff, target: '127.0.0.1:22'}
  - {host: a.ssh.example.com, policy: nobody, agent: ghost, target: '127.0.0.1'}
  - {host: A.ssh.example.com, target: '127.0.0.1:22', connect_timeout: 0s}
",
        );
        let found: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        for field in [
            "agents.NAS",
            "agents.NAS.public_keys",
            "agents.lab.public_keys[0]",
            "agents.lab.public_keys[1]",
            "tunnels[0].host",
            "tunnels[1].policy",
            "tunnels[1].agent",
            "tunnels[1].target",
            "tunnels[2].host",
            "tunnels[2].connect_timeout",
        ] {
            assert!(found.iter().any(|f| f == field), "{field} not in {found:?}");
        }
    }

    #[test]
    fn a_tunnel_policy_needs_login_and_an_agent_upstream_needs_a_known_agent_and_plain_http() {
        let text = site("tunnels:\n  - {host: b.ssh.example.com, policy: staff, target: 'h:22'}\n")
            .replace("identity: {auth_host: auth.example.com}\n", "")
            .replace(", policy: staff}", "}");
        let found: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(found.contains(&"tunnels[0].policy".to_owned()), "{found:?}");

        let text = site("").replace(
            "  app: {endpoints: ['http://127.0.0.1:3000']}",
            "  app: {agent: ghost, endpoints: ['https://127.0.0.1:3000']}",
        );
        let found: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(
            found.contains(&"upstreams.app.agent".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"upstreams.app.endpoints".to_owned()),
            "{found:?}"
        );
    }

    #[test]
    fn targets_are_host_and_port() {
        for good in ["127.0.0.1:22", "db.internal:5432", "[::1]:22"] {
            assert_eq!(check_target(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:70000",
            ":22",
            "a b:22",
            "u@h:22",
            "[::1]",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }
}
