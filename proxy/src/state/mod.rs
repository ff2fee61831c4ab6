//! What requests share: the process's state ([`Shared`]: the current snapshot, certificates,
//! metrics, the access log and the tunnel hub) and one client connection's ([`client`]).
//! Every phase of a request may read these; this module depends only on what they hold
//! (routing, TLS, observability, the hub's registry) and never on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::sync::{Semaphore, watch};

pub(crate) mod client;

use crate::config::HttpMode;
use crate::frontdoor::tls::CertStore;
use crate::hub::registry::Hub;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::routing::snapshot::Snapshot;

/// State shared by every worker and the control thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub certs: Arc<CertStore>,
    pub tls: Arc<ServerConfig>,
    pub metrics: Metrics,
    pub access_log: Arc<AccessLog>,
    /// Metrics for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Connected agents; outlives reloads.
    pub hub: Hub,
    /// Where the agents other replicas hold are, to relay tunnel streams to them.
    pub(crate) relay: crate::hub::relay::Relay,
    /// Places under `limits.max_connections`.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) draining: AtomicBool,
    /// Whether the routes have been built once: at start in file mode, after the first sync
    /// with the API in Kubernetes mode. `/readyz` waits for it.
    pub(crate) synced: AtomicBool,
    /// The HTTPS port written into redirects.
    pub(crate) redirect_port: u16,
    pub(crate) http_mode: HttpMode,
}

impl Shared {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the plain-HTTP listener only redirects to HTTPS.
    pub(crate) fn redirects_plain_http(&self) -> bool {
        self.http_mode == HttpMode::Redirect
    }
}

/// Resolves once the flag turns true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stopped| *stopped).await;
}
