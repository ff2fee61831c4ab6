//! Leases as the replicas' short-lived shared state (`once.rs`, `device.rs`): how one is made,
//! and the API calls on them, each with a deadline. A leaf module of the Kubernetes source.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;

use crate::auth::once::Unshared;
use crate::auth::session::unix_now;

/// How long a call for the shared state may wait for the API before it fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// A Lease labelled `label` that matters until `until` (Unix seconds), held by `replica`.
pub(super) fn short_lived(name: String, label: &str, replica: &str, until: u64) -> Lease {
    let now = unix_now();
    Lease {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([(label.to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(replica.to_owned()),
            acquire_time: Some(MicroTime(
                Timestamp::from_second(i64::try_from(now).unwrap_or(i64::MAX))
                    .unwrap_or(Timestamp::MAX),
            )),
            lease_duration_seconds: Some(
                i32::try_from(until.saturating_sub(now).max(1)).unwrap_or(i32::MAX),
            ),
            ..LeaseSpec::default()
        }),
    }
}

pub(super) fn post_params() -> PostParams {
    PostParams {
        field_manager: Some("sekisho-proxy".into()),
        ..PostParams::default()
    }
}

/// Runs an API call for the shared state, failing after [`ANSWER_WITHIN`].
pub(super) async fn within<T>(
    call: impl Future<Output = kube::Result<T>>,
) -> Result<kube::Result<T>, Unshared> {
    tokio::time::timeout(ANSWER_WITHIN, call)
        .await
        .map_err(|_| {
            Unshared(format!(
                "the Kubernetes API did not answer within {ANSWER_WITHIN:?}"
            ))
        })
}

/// Runs a create that another replica may have made first: `Ok(false)` when the name is
/// taken (409).
pub(super) async fn created<T>(
    call: impl Future<Output = kube::Result<T>>,
) -> Result<bool, Unshared> {
    won(call, &[409]).await
}

/// Runs a write at a `resourceVersion` that another replica may have changed or deleted
/// since: `Ok(false)` when it did (409 or 404).
pub(super) async fn written_at_version<T>(
    call: impl Future<Output = kube::Result<T>>,
) -> Result<bool, Unshared> {
    won(call, &[409, 404]).await
}

async fn won<T>(
    call: impl Future<Output = kube::Result<T>>,
    lost: &[u16],
) -> Result<bool, Unshared> {
    match within(call).await? {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if lost.contains(&status.code) => Ok(false),
        Err(error) => Err(unshared(&error)),
    }
}

pub(super) fn unshared(error: &kube::Error) -> Unshared {
    Unshared(crate::error_chain(error))
}
