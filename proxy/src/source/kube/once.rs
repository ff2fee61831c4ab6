//! One-time codes spent once across the replicas (`auth/once.rs`): spending a code creates a
//! Lease named after it in the proxy's namespace, and the API server lets only one create of a
//! name succeed, so the first replica wins and the others get a conflict. Each Lease says until
//! when its code could be used (`acquireTime` + `leaseDurationSeconds`); the replicas delete
//! the Leases whose codes have expired.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use crate::auth::once::{SharedSpends, Unshared};
use crate::auth::session::unix_now;
use crate::state::Shared;

/// The label of the Leases that stand for spent codes (the value is always `true`).
const LABEL: &str = "sekisho.dev/one-time-code";
/// How long a spend may wait for the API before the code is refused.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How often the Leases of expired codes are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Spends codes as Leases in one namespace.
struct LeaseSpends {
    api: Api<Lease>,
    replica: String,
}

impl SharedSpends for LeaseSpends {
    fn spend(&self, key: [u8; 16], until: u64) -> BoxFuture<'_, Result<bool, Unshared>> {
        Box::pin(async move {
            let now = unix_now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name(&key)),
                    labels: Some(BTreeMap::from([(LABEL.to_owned(), "true".to_owned())])),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.replica.clone()),
                    acquire_time: Some(MicroTime(
                        Timestamp::from_second(i64::try_from(now).unwrap_or(i64::MAX))
                            .unwrap_or(Timestamp::MAX),
                    )),
                    lease_duration_seconds: Some(
                        i32::try_from(until.saturating_sub(now).max(1)).unwrap_or(i32::MAX),
                    ),
                    ..LeaseSpec::default()
                }),
            };
            let params = PostParams {
                field_manager: Some("sekisho-proxy".into()),
                ..PostParams::default()
            };
            match tokio::time::timeout(ANSWER_WITHIN, self.api.create(&params, &lease)).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(false),
                Ok(Err(error)) => Err(Unshared(crate::error_chain(&error))),
                Err(_) => Err(Unshared(format!(
                    "the Kubernetes API did not answer within {ANSWER_WITHIN:?}"
                ))),
            }
        })
    }
}

/// The Lease of a code: a prefix and the key in hexadecimal (the key is a random nonce or a
/// hash, so the name tells nothing of the code).
fn name(key: &[u8; 16]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("sekisho-once-{hex}")
}

/// Makes the replicas' one-time codes shared through Leases in `namespace`, and deletes the
/// expired ones every [`SWEEP_EVERY`], until `stop`.
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
        replica,
    });
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        // Again on every round: a reload that adds `identity:` makes a new state.
        if let Some(identity) = shared.snapshot.load().identity.as_deref() {
            identity.state.replay.share_with(spends.clone());
            identity.state.logout_tokens.share_with(spends.clone());
        }
        tokio::select! {
            _ = sweep.tick() => delete_expired(&api).await,
            () = crate::state::stopped(&mut stop) => return,
        }
    }
}

/// Deletes the Leases of codes that can no longer be used.
async fn delete_expired(api: &Api<Lease>) {
    let leases = match api.list(&ListParams::default().labels(LABEL)).await {
        Ok(leases) => leases,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot list the Leases of spent one-time codes");
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
                tracing::warn!(lease = %lease.name_any(), error = %crate::error_chain(&error), "cannot delete the Lease of an expired one-time code");
            }
        }
    }
}
