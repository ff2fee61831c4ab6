//! Proof that the harness starts a real, working control plane. Every test here but
//! `lifecycle` talks to the one kube-apiserver (with etcd and kube-controller-manager) that
//! this test binary shares, each in a namespace or with names of its own; `lifecycle`
//! starts and drops a private one. Every wait is bounded.

mod controller;
mod custom_resource;
mod lifecycle;
mod object;
mod rbac;
mod watch;

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use kube_testenv::TestEnv;

/// Time the controller manager gets to react, and the apiserver to catch up with a change.
const REACTION: Duration = Duration::from_secs(60);

async fn env() -> anyhow::Result<&'static TestEnv> {
    Ok(TestEnv::shared().await?)
}

/// Runs `future`, failing with `what` if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .with_context(|| format!("timed out after {limit:?} waiting for {what}"))?
}

/// Calls `attempt` until it succeeds, for at most `limit`; fails with the last error.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if start.elapsed() > limit => {
                return Err(error.context(format!("still failing after {limit:?}: {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The HTTP status of a failed API call, if the server answered.
fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
