//! `sekisho-operator`: deploys and keeps Sekisho gates described by `Proxy` objects
//! (`sekisho.dev/v1alpha1`, type in `sekisho-api`).
//!
//! | module | what it is |
//! |---|---|
//! | [`desired`] | the children a Proxy should have: a pure function, unit-tested, golden files |
//! | [`keys`] | the session and signing keys and their rotation: a pure state machine |
//! | `reconcile` | the Proxy controller: apply, prune, status, Events, finalizer |
//! | [`github`] | the GitHubWebhook controller: the repositories' webhooks, through a GitHub App |
//! | `backoff` | the growing delay between tries of an object that fails |
//! | `metrics` | the operator's metrics and health listener |
//!
//! Replicas elect a leader through a Lease (`sekisho-lease`); only the leader reconciles.
//! The module dependency: `reconcile` and `github` use `desired`, `keys`, `backoff` and
//! `metrics`, never each other.

mod backoff;
pub mod desired;
mod event;
pub mod github;
pub mod keys;
mod metrics;
mod reconcile;

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;

/// The Lease the operator's replicas elect their leader with.
pub const LEASE_NAME: &str = "sekisho-operator";

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// The namespace of the leader Lease.
    pub lease_namespace: String,
    /// This replica's name in the Lease and in Events (the pod's name).
    pub identity: String,
    /// The proxy version deployed when a Proxy names none.
    pub proxy_version: String,
    /// Only the Proxies of this namespace; all namespaces when `None`.
    pub watch_namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs until `stop` turns true: serves metrics, takes part in the leader election, and
/// reconciles Proxies while it leads.
pub async fn run(
    client: Client,
    options: Options,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    let listener = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .map_err(|source| Error::Listen {
            address: options.metrics_address,
            source,
        })?;
    tokio::spawn(metrics::serve(listener, metrics.clone(), stop.clone()));

    let (holds, mut leads) = watch::channel(false);
    let lease = tokio::spawn(sekisho_lease::hold(
        Api::<Lease>::namespaced(client.clone(), &options.lease_namespace),
        LEASE_NAME.to_owned(),
        options.identity.clone(),
        holds,
        stop.clone(),
    ));
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            () = until(&mut stopped, true) => break,
            () = until(&mut leads, true) => if leads.has_changed().is_err() { break },
        }
        metrics.set_leader(true);
        tracing::info!(identity = %options.identity, "leading: reconciling Proxies");
        // The controller runs until this replica stops leading or the operator stops.
        let (lost, lost_rx) = watch::channel(false);
        let mut controller = tokio::spawn(reconcile::run(
            client.clone(),
            metrics.clone(),
            options.clone(),
            lost_rx.clone(),
        ));
        let github = tokio::spawn(github::run_counted(
            client.clone(),
            github::Options {
                namespace: options.watch_namespace.clone(),
                instance: Some(options.identity.clone()),
                ..github::Options::default()
            },
            Some(metrics.clone()),
            lost_rx,
        ));
        tokio::select! {
            () = until(&mut stopped, true) => {}
            () = until(&mut leads, false) => {
                tracing::warn!("lost the leader Lease: no longer reconciling");
            }
            _ = &mut controller => {}
        }
        let _ = lost.send(true);
        let _ = controller.await;
        let _ = github.await;
        metrics.set_leader(false);
    }
    let _ = lease.await;
    Ok(())
}

/// Waits until `flag` is `value` (or its sender is gone). The guard `wait_for` returns is not
/// held across another await.
pub(crate) async fn until(flag: &mut watch::Receiver<bool>, value: bool) {
    let _ = flag.wait_for(|now| *now == value).await;
}
