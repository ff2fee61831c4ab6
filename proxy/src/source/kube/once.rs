//! The replicas' short-lived shared state, as Leases in the proxy's namespace.
//!
//! One-time codes spent once across the replicas (`auth/once.rs`): spending a code creates a
//! Lease named after it, and the API server lets only one create of a name succeed, so the
//! first replica wins and the others get a conflict. Device logins (`device.rs`) are Leases
//! too, and so is each replica's record of the agents it holds (`replicas.rs`). Each Lease
//! says until when it matters (`acquireTime` + `leaseDurationSeconds`); the replicas delete
//! the ones that have expired.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use super::leases::{created, post_params, short_lived};
use crate::auth::cli_login::device::GrantStore;
use crate::auth::once::{SharedSpends, Unshared};
use crate::auth::session::unix_now;
use crate::state::Shared;

/// The label of the Leases that stand for spent codes (the value is always `true`).
const LABEL: &str = "sekisho.dev/one-time-code";
/// How often the Leases of expired codes and device logins are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Spends codes as Leases in one namespace.
struct LeaseSpends {
    api: Api<Lease>,
    replica: String,
}

impl SharedSpends for LeaseSpends {
    fn spend(&self, key: [u8; 16], until: u64) -> BoxFuture<'_, Result<bool, Unshared>> {
        Box::pin(async move {
            let lease = short_lived(name(&key), LABEL, &self.replica, until);
            created(self.api.create(&post_params(), &lease)).await
        })
    }
}

/// The Lease of a code: a prefix and the key in hexadecimal (the key is a random nonce or a
/// hash, so the name tells nothing of the code).
fn name(key: &[u8; 16]) -> String {
    format!("sekisho-once-{}", hex::encode(key))
}

/// Makes the replicas' one-time codes and device logins shared through Leases in
/// `namespace`, and deletes the expired ones every [`SWEEP_EVERY`], until `stop`.
pub(super) async fn run(
    client: Client,
    namespace: String,
    replica: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let spends: Arc<dyn SharedSpends> = Arc::new(LeaseSpends {
        api: api.clone(),
        replica: replica.clone(),
    });
    let grants: Arc<dyn GrantStore> =
        Arc::new(super::device::LeaseGrants::new(api.clone(), replica));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        // Again on every round: a reload that adds `identity:` makes a new state.
        if let Some(identity) = shared.snapshot.load().identity.as_deref() {
            identity.state.replay.share_with(spends.clone());
            identity.state.logout_tokens.share_with(spends.clone());
            identity.state.device_grants.share_with(grants.clone());
        }
        tokio::select! {
            _ = sweep.tick() => {
                delete_expired(&api, LABEL).await;
                delete_expired(&api, super::device::LABEL).await;
                delete_expired(&api, super::replicas::LABEL).await;
            }
            () = crate::state::stopped(&mut stop) => return,
        }
    }
}

/// Deletes the Leases labelled `label` that no longer matter.
async fn delete_expired(api: &Api<Lease>, label: &str) {
    let leases = match api.list(&ListParams::default().labels(label)).await {
        Ok(leases) => leases,
        Err(error) => {
            tracing::warn!(label, error = %crate::error_chain(&error), "cannot list the replicas' expired shared state");
            return;
        }
    };
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    for lease in leases {
        let spec = lease.spec.clone().unwrap_or_default();
        let ends = spec.acquire_time.map_or(0, |t| t.0.as_second())
            + i64::from(spec.lease_duration_seconds.unwrap_or(0));
        if ends > now {
            continue;
        }
        match api
            .delete(&lease.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            // Another replica was first.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(lease = %lease.name_any(), error = %crate::error_chain(&error), "cannot delete an expired Lease of the replicas' shared state");
            }
        }
    }
}
