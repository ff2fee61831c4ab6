//! Which replica holds which agents, for relaying tunnel streams between them
//! ([`crate::hub::relay`]).
//!
//! Each replica keeps one Lease in the proxy's namespace, `sekisho-replica-<hash of its
//! name>`, labelled [`LABEL`]: the address the other replicas reach its HTTPS listener at, and
//! the names of the agents it holds links of. It writes the Lease (server-side apply) when the
//! agents it holds change and every [`RENEW_EVERY`] besides; the Lease says it lasts
//! [`LASTS`] from the last write, so a replica that died (SIGKILL, a lost node) stops being
//! asked within that time, and its Lease is deleted by the sweep of expired Leases
//! (`once.rs`). A replica that stops cleanly deletes its own. Every replica watches the
//! Leases; one Lease per replica (not per agent) keeps a thousand agents to one write per
//! change.
//!
//! The Leases also keep the agents spread: a replica holding more than its share (the agents
//! of all live replicas over their number, plus one) asks that many of its agents, picked at
//! random, to move; each dials again through the Service and lands on a replica at random, so
//! the spread evens out over rounds ([`SPREAD_EVERY`] apart) instead of staying where a rollout
//! left it (all on the replica that restarted first).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use super::leases::short_lived;
use crate::auth::session::unix_now;
use crate::hub::relay::{Directory, Holder};
use crate::state::Shared;

/// The label of the replicas' Leases (the value is always `true`).
pub(super) const LABEL: &str = "sekisho.dev/replica";
/// The annotation with the address of the replica's HTTPS listener (`IP:PORT`).
const ADDRESS: &str = "sekisho.dev/relay-address";
/// The annotation with the names of the agents the replica holds, comma-separated.
const AGENTS: &str = "sekisho.dev/agents";
/// How often a replica writes its Lease when nothing changed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long a Lease counts after its last write.
const LASTS: Duration = Duration::from_secs(30);
/// How long a change waits for others before it is written (agents reconnecting together).
const GATHER: Duration = Duration::from_millis(100);
/// How often a replica looks at the spread, and the least time between two moves.
const SPREAD_EVERY: Duration = Duration::from_secs(60);
/// How long stopping waits for the Lease's deletion.
const DELETE_WITHIN: Duration = Duration::from_secs(2);

/// Where the other replicas reach this one: the pod's IP (`POD_IP`, from the downward API) at
/// the HTTPS port, else the HTTPS listener's own address when it is a specific one.
pub(crate) fn default_address(https: SocketAddr) -> Option<SocketAddr> {
    let pod_ip = std::env::var("POD_IP")
        .ok()
        .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
    match pod_ip {
        Some(ip) => Some(SocketAddr::new(ip, https.port())),
        None => (!https.ip().is_unspecified()).then_some(https),
    }
}

/// The Lease name of a replica (its name hashed: any process name makes a valid object name).
fn lease_name(replica: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, replica.as_bytes());
    format!("sekisho-replica-{}", hex::encode(&digest.as_ref()[..8]))
}

/// The replicas' Leases, as the relay asks them.
struct LeaseDirectory {
    leases: Store<Lease>,
    own: String,
}

impl LeaseDirectory {
    /// The Leases of the other replicas that are live now.
    fn others(&self) -> Vec<Arc<Lease>> {
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        self.leases
            .state()
            .into_iter()
            .filter(|lease| lease.metadata.name.as_deref() != Some(self.own.as_str()))
            .filter(|lease| {
                let spec = lease.spec.clone().unwrap_or_default();
                let written = spec.acquire_time.map_or(0, |t| t.0.as_second());
                written + i64::from(spec.lease_duration_seconds.unwrap_or(0)) > now
            })
            .collect()
    }

    /// How many of the `held` agents this replica holds beyond its share: the agents the live
    /// replicas hold, over their number, plus one (so that an odd agent moves nobody).
    fn excess(&self, held: usize) -> usize {
        let others: Vec<usize> = self
            .others()
            .iter()
            .filter_map(|lease| {
                let agents = lease.metadata.annotations.as_ref()?.get(AGENTS)?;
                Some(agents.split(',').filter(|name| !name.is_empty()).count())
            })
            .collect();
        let replicas = others.len() + 1;
        let share = (others.iter().sum::<usize>() + held).div_ceil(replicas);
        match replicas {
            1 => 0,
            _ => held.saturating_sub(share + 1),
        }
    }
}

impl LeaseDirectory {
    /// The other live replicas that hold what `holds` says, by their Leases' annotations.
    fn matching(&self, holds: impl Fn(&str) -> bool) -> Vec<Holder> {
        let mut holders: Vec<Holder> = self
            .others()
            .iter()
            .filter_map(|lease| {
                let annotations = lease.metadata.annotations.as_ref()?;
                let agents = annotations.get(AGENTS).map_or("", String::as_str);
                let address = annotations.get(ADDRESS)?.parse().ok()?;
                let replica = lease.spec.as_ref()?.holder_identity.clone()?;
                holds(agents).then_some(Holder { replica, address })
            })
            .collect();
        crate::hub::relay::spread(&mut holders);
        holders
    }
}

impl Directory for LeaseDirectory {
    fn holders(&self, agent: &str) -> Vec<Holder> {
        self.matching(|agents| agents.split(',').any(|name| name == agent))
    }

    fn replicas(&self) -> Vec<Holder> {
        self.matching(|_| true)
    }
}

/// The replica's Lease: its address and the agents it holds, lasting [`LASTS`] from now.
fn lease(replica: &str, address: SocketAddr, agents: &[String]) -> Lease {
    let until = unix_now() + LASTS.as_secs();
    let mut lease = short_lived(lease_name(replica), LABEL, replica, until);
    lease.metadata.annotations = Some(
        [
            (ADDRESS.to_owned(), address.to_string()),
            (AGENTS.to_owned(), agents.join(",")),
        ]
        .into(),
    );
    lease
}

/// Relays through the replicas `leases` names, and keeps this replica's own Lease (when it
/// has an `address` the others can reach) until `stop`, then deletes it.
pub(super) async fn run(
    api: Api<Lease>,
    leases: Store<Lease>,
    replica: String,
    address: Option<SocketAddr>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let directory = Arc::new(LeaseDirectory {
        leases,
        own: lease_name(&replica),
    });
    shared.relay.set_directory(directory.clone());
    let Some(address) = address else {
        tracing::warn!(
            "no address for the other replicas to relay tunnel streams to this one (set POD_IP \
             or --relay-address): agents connected here are reachable only through this replica"
        );
        return;
    };
    let name = lease_name(&replica);
    let params = PatchParams::apply("sekisho-proxy").force();
    let mut written: Option<Vec<String>> = None;
    let mut renew = tokio::time::interval(RENEW_EVERY);
    let mut spread = tokio::time::interval(SPREAD_EVERY);
    // The first tick is now: the others' Leases are not read yet.
    spread.tick().await;
    loop {
        let held: Vec<String> = shared.hub.held().into_iter().collect();
        let lease = lease(&replica, address, &held);
        match api.patch(&name, &params, &Patch::Apply(&lease)).await {
            Ok(_) => {
                if written.as_ref() != Some(&held) {
                    tracing::debug!(
                        agents = held.len(),
                        "told the other replicas which agents this one holds"
                    );
                }
                written = Some(held);
            }
            Err(error) => {
                tracing::warn!(lease = %name, error = %crate::error_chain(&error), "cannot tell the other replicas which agents this one holds; trying again");
                written = None;
            }
        }
        tokio::select! {
            _ = renew.tick() => {}
            () = shared.hub.held_changed.notified() => tokio::time::sleep(GATHER).await,
            _ = spread.tick() => move_excess(&shared, &directory),
            () = crate::state::stopped(&mut stop) => break,
        }
    }
    let params = DeleteParams::default();
    let delete = api.delete(&name, &params);
    if let Ok(Err(error)) = tokio::time::timeout(DELETE_WITHIN, delete).await {
        tracing::debug!(lease = %name, error = %crate::error_chain(&error), "cannot delete this replica's Lease; it expires on its own");
    }
}

/// Asks the agents this replica holds beyond its share to move, picked at random.
fn move_excess(shared: &Shared, directory: &LeaseDirectory) {
    let held = shared.hub.held();
    let excess = directory.excess(held.len());
    if excess == 0 {
        return;
    }
    tracing::info!(
        held = held.len(),
        moving = excess,
        "this replica holds more agents than its share: asking some to move"
    );
    let moving = rand::seq::IteratorRandom::choose_multiple(held.iter(), &mut rand::rng(), excess);
    for agent in moving {
        shared.hub.ask_to_move(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn directory(leases: Vec<Lease>) -> LeaseDirectory {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for lease in leases {
            writer.apply_watcher_event(&Event::InitApply(lease));
        }
        writer.apply_watcher_event(&Event::InitDone);
        LeaseDirectory {
            leases: reader,
            own: lease_name("me"),
        }
    }

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn only_other_live_replicas_that_hold_the_agent_are_asked() {
        let mut expired = lease("dead", address(3), &["nas".into()]);
        expired.spec.as_mut().unwrap().lease_duration_seconds = Some(-1);
        let directory = directory(vec![
            lease("me", address(1), &["nas".into()]),
            lease("other", address(2), &["nas".into(), "web".into()]),
            expired,
            lease("third", address(4), &["nas-2".into()]),
        ]);
        assert_eq!(
            directory.holders("nas"),
            vec![Holder {
                replica: "other".into(),
                address: address(2)
            }]
        );
        assert!(directory.holders("na").is_empty());
        assert!(directory.holders("").is_empty());
    }

    fn holding(replica: &str, count: usize) -> Lease {
        let agents: Vec<String> = (0..count).map(|i| format!("{replica}-{i}")).collect();
        lease(replica, address(1), &agents)
    }

    #[test]
    fn a_replica_moves_what_it_holds_beyond_its_share_and_one() {
        // Alone, it keeps everything.
        assert_eq!(directory(vec![]).excess(1000), 0);
        // All of them after a rollout: half move.
        assert_eq!(directory(vec![holding("b", 0)]).excess(1000), 499);
        // An odd agent, or one more than the share, moves nobody.
        assert_eq!(directory(vec![holding("b", 1)]).excess(2), 0);
        assert_eq!(directory(vec![holding("b", 4)]).excess(6), 0);
        // Three replicas: the share is a third.
        assert_eq!(
            directory(vec![holding("b", 0), holding("c", 0)]).excess(300),
            199
        );
        // Below the share: nothing to move.
        assert_eq!(directory(vec![holding("b", 900)]).excess(100), 0);
    }

    #[test]
    fn a_lease_with_a_broken_address_is_passed_over() {
        let mut broken = lease("other", address(2), &["nas".into()]);
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ADDRESS.into(), "not an address".into());
        assert!(directory(vec![broken]).holders("nas").is_empty());
    }

    #[test]
    fn lease_names_are_valid_object_names_whatever_the_replica_is_called() {
        let name = lease_name("Some Host_Name.local-1a2b3c4d");
        assert!(name.len() <= 63);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}
