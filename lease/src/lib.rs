//! `sekisho-lease`: one process of several holds a Kubernetes Lease (`coordination.k8s.io`),
//! renews it while it lives, lets it go when it stops, and another takes it over when it
//! expires. The proxy's replicas use it to choose the one that writes the Ingresses' status;
//! the operator's replicas to choose the one that reconciles.
//!
//! Time-based, as client-go's leader election: a holder that cannot renew for [`LEASE`] is
//! replaced, so for up to that long two processes may both believe they hold it if one is cut
//! off from the API. What the holders do (server-side apply of the same objects, status
//! patches) must tolerate that.
//!
//! The crates of the workspace that talk to the API depend on it; it depends on none of them.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How long a Lease holds without renewal.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews it (and the others look whether it expired).
pub const RENEW: Duration = Duration::from_secs(5);

/// Holds the Lease `name` of `api` for `identity` while it can, until `stop` turns true, then
/// lets it go. `holds` says at every moment whether this process holds it.
pub async fn hold(
    api: Api<Lease>,
    name: String,
    identity: String,
    holds: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = match try_hold(&api, &name, &identity).await {
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(lease = %name, %error, "cannot read or renew the Lease");
                false
            }
        };
        if holds.send_replace(now) != now {
            tracing::info!(lease = %name, %identity, holds = now, "Lease");
        }
        tokio::select! {
            () = tokio::time::sleep(RENEW) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    if holds.send_replace(false) {
        release(&api, &name, &identity).await;
    }
}

/// One round: create, renew or take over the Lease. Whether this process holds it.
async fn try_hold(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration = i32::try_from(LEASE.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_default();
    let mine = spec.holder_identity.as_deref() == Some(identity);
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let lasts =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(duration)));
        renewed.0.checked_add(lasts).is_ok_and(|end| end < now.0)
    }) || spec.holder_identity.is_none();
    if !mine && !expired {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(now);
    // The resourceVersion read makes this a compare-and-swap: two takers cannot both win.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Lets the Lease go at shutdown, so another process takes over at once.
async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    let _ = api.replace(name, &PostParams::default(), &lease).await;
}
