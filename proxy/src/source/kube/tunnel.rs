//! Agent and Tunnel objects as the file's `agents:` and `tunnels:` sections. Pure.
//!
//! - An agent proves only its name, so an Agent's name is one for the whole cluster: the
//!   oldest Agent of a name (then by namespace) is the one; the others are reported.
//! - A Tunnel names an Agent of its own namespace and a policy as an Ingress does (the
//!   namespace's AccessPolicy, else the ClusterAccessPolicy); one Tunnel per host, the oldest
//!   wins; a host that another namespace's Ingress owns cannot be taken by a Tunnel.
//! - An Agent's `targets`, when listed, bound what its Tunnels may ask it to dial.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use sekisho_api::{Agent, Tunnel};

use super::object::Key;
use crate::config::problem::check_host_pattern;
use crate::config::tunnel::check_target;
use crate::config::{AgentConfig, TunnelConfig};
use crate::policy::AccessPolicy;

/// Which object a [`Finding`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Agent,
    Tunnel,
}

/// Something to tell on an Agent or a Tunnel, and whether it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub kind: Kind,
    pub key: Key,
    /// Served as written; otherwise `reason` and `message` say why not.
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the Agents and Tunnels ask for.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    pub agents: BTreeMap<String, AgentConfig>,
    pub tunnels: Vec<TunnelConfig>,
    /// Policies the tunnels name, by the same keys the Ingresses' policies use.
    pub policies: BTreeMap<String, AccessPolicy>,
    pub findings: Vec<Finding>,
}

/// The inputs: the objects, the policies by key, and which namespace owns each Ingress host.
pub(crate) struct Inputs<'a> {
    pub agents: &'a [Arc<Agent>],
    pub tunnels: &'a [Arc<Tunnel>],
    pub policies: &'a HashMap<Key, Arc<AccessPolicy>>,
    pub cluster_policies: &'a HashMap<String, Arc<AccessPolicy>>,
    pub host_owners: &'a BTreeMap<String, String>,
}

fn age(meta: &ObjectMeta) -> (Option<Time>, String, String) {
    (
        meta.creation_timestamp.clone(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

pub(crate) fn tunnels(inputs: &Inputs<'_>) -> Tunnels {
    let mut out = Tunnels::default();
    let mut agents: Vec<&Agent> = inputs.agents.iter().map(AsRef::as_ref).collect();
    agents.sort_by_key(|a| age(&a.metadata));
    // Agent name -> (its namespace, its allowed targets).
    let mut chosen: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for agent in agents {
        let Some(key) = Key::of(&agent.metadata) else {
            continue;
        };
        let finding = |ready, reason, message: String| Finding {
            kind: Kind::Agent,
            key: key.clone(),
            ready,
            reason,
            message,
        };
        if let Some((namespace, _)) = chosen.get(&key.name) {
            out.findings.push(finding(
                false,
                "NameTaken",
                format!(
                    "an older Agent named {} is in namespace {namespace}; agents prove only \
                     their name, so it must be unique in the cluster",
                    key.name
                ),
            ));
            continue;
        }
        let config = AgentConfig {
            public_keys: agent.spec.public_keys.clone(),
        };
        let parsed = config.public_keys();
        if parsed.len() != config.public_keys.len() || parsed.is_empty() {
            out.findings.push(finding(
                false,
                sekisho_api::condition::reason::INVALID,
                "a public key is not an agent key (ed25519:BASE64URL)".to_owned(),
            ));
            continue;
        }
        chosen.insert(
            key.name.clone(),
            (key.namespace.clone(), agent.spec.targets.clone()),
        );
        out.agents.insert(key.name.clone(), config);
        out.findings.push(finding(
            true,
            sekisho_api::condition::reason::ACCEPTED,
            "agents with these keys may connect".to_owned(),
        ));
    }

    let mut tunnels: Vec<&Tunnel> = inputs.tunnels.iter().map(AsRef::as_ref).collect();
    tunnels.sort_by_key(|t| age(&t.metadata));
    let mut hosts: HashMap<String, Key> = HashMap::new();
    for tunnel in tunnels {
        let Some(key) = Key::of(&tunnel.metadata) else {
            continue;
        };
        let refuse = |reason, message: String| Finding {
            kind: Kind::Tunnel,
            key: key.clone(),
            ready: false,
            reason,
            message,
        };
        let spec = &tunnel.spec;
        let host = spec.host.to_ascii_lowercase();
        if let Err(message) = check_host_pattern(&host).and_then(|()| check_target(&spec.target)) {
            out.findings
                .push(refuse(sekisho_api::condition::reason::INVALID, message));
            continue;
        }
        if let Some(winner) = hosts.get(&host) {
            let message = format!("the older Tunnel {winner} serves {host}");
            out.findings
                .push(refuse(sekisho_api::condition::reason::HOST_TAKEN, message));
            continue;
        }
        if let Some(owner) = inputs.host_owners.get(&host)
            && *owner != key.namespace
        {
            let message = format!("the host {host} belongs to namespace {owner}");
            out.findings
                .push(refuse(sekisho_api::condition::reason::HOST_TAKEN, message));
            continue;
        }
        if let Some(agent) = &spec.agent {
            match chosen.get(agent) {
                Some((namespace, _)) if *namespace != key.namespace => {
                    let message = format!("no Agent {agent} in namespace {}", key.namespace);
                    out.findings.push(refuse(
                        sekisho_api::condition::reason::AGENT_NOT_FOUND,
                        message,
                    ));
                    continue;
                }
                None => {
                    let message = format!("no Agent {agent} in namespace {}", key.namespace);
                    out.findings.push(refuse(
                        sekisho_api::condition::reason::AGENT_NOT_FOUND,
                        message,
                    ));
                    continue;
                }
                Some((_, targets)) if !targets.is_empty() && !targets.contains(&spec.target) => {
                    let message = format!(
                        "the Agent {agent} may not be asked to dial {} (its targets: {})",
                        spec.target,
                        targets.join(", ")
                    );
                    out.findings
                        .push(refuse(sekisho_api::condition::reason::INVALID, message));
                    continue;
                }
                Some(_) => {}
            }
        }
        let own = Key::new(&key.namespace, &spec.policy);
        let policy_key = if let Some(policy) = inputs.policies.get(&own) {
            let id = own.to_string();
            out.policies.insert(id.clone(), (**policy).clone());
            id
        } else if let Some(policy) = inputs.cluster_policies.get(&spec.policy) {
            out.policies.insert(spec.policy.clone(), (**policy).clone());
            spec.policy.clone()
        } else {
            let message = format!(
                "no AccessPolicy {} in namespace {} and no ClusterAccessPolicy of that name",
                spec.policy, key.namespace
            );
            out.findings.push(refuse(
                sekisho_api::condition::reason::POLICY_NOT_FOUND,
                message,
            ));
            continue;
        };
        hosts.insert(host.clone(), key.clone());
        out.tunnels.push(TunnelConfig {
            host,
            target: spec.target.clone(),
            agent: spec.agent.clone(),
            policy: Some(policy_key),
            connect_timeout: spec
                .connect_timeout
                .map_or(Duration::from_secs(5), Duration::from),
        });
        out.findings.push(Finding {
            kind: Kind::Tunnel,
            key,
            ready: true,
            reason: sekisho_api::condition::reason::ACCEPTED,
            message: "the proxy serves this tunnel".to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use sekisho_api::{AgentSpec, TunnelSpec};

    use super::*;

    const KEY: &str = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn meta(namespace: &str, name: &str, age: i64) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(Timestamp::from_second(age).unwrap())),
            ..ObjectMeta::default()
        }
    }

    fn agent(namespace: &str, name: &str, age: i64, targets: &[&str]) -> Arc<Agent> {
        let mut agent = Agent::new(
            name,
            AgentSpec {
                public_keys: vec![KEY.into()],
                targets: targets.iter().map(|t| t.to_string()).collect(),
            },
        );
        agent.metadata = meta(namespace, name, age);
        Arc::new(agent)
    }

    fn tunnel(
        namespace: &str,
        name: &str,
        age: i64,
        host: &str,
        agent: Option<&str>,
    ) -> Arc<Tunnel> {
        let mut tunnel = Tunnel::new(
            name,
            TunnelSpec {
                host: host.into(),
                target: "127.0.0.1:22".into(),
                agent: agent.map(str::to_owned),
                policy: "staff".into(),
                connect_timeout: None,
            },
        );
        tunnel.metadata = meta(namespace, name, age);
        Arc::new(tunnel)
    }

    fn reasons(out: &Tunnels) -> Vec<(String, &'static str)> {
        out.findings
            .iter()
            .filter(|f| !f.ready)
            .map(|f| (f.key.to_string(), f.reason))
            .collect()
    }

    #[test]
    fn agents_and_tunnels_become_the_files_sections_and_what_cannot_be_served_is_told() {
        let policies =
            HashMap::from([(Key::new("lab", "staff"), Arc::new(AccessPolicy::default()))]);
        let cluster_policies = HashMap::new();
        let host_owners = BTreeMap::from([("web.example.com".to_owned(), "shop".to_owned())]);
        let out = tunnels(&Inputs {
            agents: &[
                agent("lab", "nas", 1, &["127.0.0.1:22"]),
                agent("other", "nas", 2, &[]),
            ],
            tunnels: &[
                tunnel("lab", "nas", 1, "NAS.ssh.example.com", Some("nas")),
                tunnel("lab", "again", 2, "nas.ssh.example.com", None),
                tunnel("other", "borrowed", 3, "b.ssh.example.com", Some("nas")),
                tunnel("lab", "taken", 4, "web.example.com", None),
                tunnel("blog", "no-policy", 5, "c.ssh.example.com", None),
            ],
            policies: &policies,
            cluster_policies: &cluster_policies,
            host_owners: &host_owners,
        });
        assert_eq!(out.agents.keys().collect::<Vec<_>>(), ["nas"]);
        assert_eq!(out.tunnels.len(), 1);
        let served = &out.tunnels[0];
        assert_eq!(
            (
                served.host.as_str(),
                served.agent.as_deref(),
                served.policy.as_deref()
            ),
            ("nas.ssh.example.com", Some("nas"), Some("lab/staff"))
        );
        assert_eq!(
            reasons(&out),
            [
                ("other/nas".to_owned(), "NameTaken"),
                ("lab/again".to_owned(), "HostTaken"),
                ("other/borrowed".to_owned(), "AgentNotFound"),
                ("lab/taken".to_owned(), "HostTaken"),
                ("blog/no-policy".to_owned(), "PolicyNotFound"),
            ]
        );
    }
}
