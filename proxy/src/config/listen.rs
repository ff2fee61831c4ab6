//! The `listen:`, `workers:` and `limits:` sections: where the proxy listens and how much it
//! takes.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::problem::Problems;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The public TLS listener.
    pub https: SocketAddr,
    /// An optional plain-HTTP listener.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// What the plain-HTTP listener does: redirect to HTTPS (default) or serve routes.
    #[serde(default)]
    pub http_mode: HttpMode,
    /// The internal listener for health and metrics; never the public one.
    pub admin: SocketAddr,
    /// An optional listener that serves `/metrics` alone: what a Service may expose to a
    /// metrics scraper, while the admin listener (health) stays unexposed.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// The HTTPS port written into redirects, when clients reach the proxy on another port
    /// than it listens on (443 in front of 8443). Default: the HTTPS listener's port.
    #[serde(default)]
    pub redirect_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    #[default]
    Redirect,
    Serve,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time allowed for a client to send a complete request head (slowloris defence), for
    /// the TLS handshake, and for a new connection's first request to start (HTTP/2 too).
    /// The idle timeout counts only after that.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger heads get 431.
    pub max_header_bytes: usize,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections across all workers; further clients wait in the accept queue.
    pub max_connections: usize,
    /// HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// How long in-flight requests may run after SIGTERM before connections are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long after SIGTERM the proxy still accepts connections and serves as before, with
    /// `/readyz` saying it is draining (and HTTP/1.1 answers `Connection: close`), so that the
    /// Service stops sending it new connections before it stops listening; the shutdown grace
    /// starts after it. Default: 5 s in Kubernetes mode, none from files.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Option<Duration>,
    /// After an in-place upgrade (SIGUSR2), how long the old process keeps what it still
    /// serves: requests in flight, tunnel streams (ssh sessions) and the agent links they use.
    /// Each ends by itself before that, and the old process exits when all have. SIGTERM cuts
    /// it to `shutdown_grace`.
    #[serde(with = "humantime_serde")]
    pub upgrade_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(75),
            max_connections: 50_000,
            max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: None,
            upgrade_grace: Duration::from_secs(3600),
        }
    }
}

impl Listen {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        let fixed: Vec<SocketAddr> = [Some(self.https), self.http, Some(self.admin), self.metrics]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        if fixed.iter().collect::<std::collections::HashSet<_>>().len() != fixed.len() {
            problems.add(
                "listen",
                "https, http, admin and metrics need different addresses",
            );
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        if self.max_header_bytes < 1024 || self.max_header_bytes > 1024 * 1024 {
            problems.add(
                "limits.max_header_bytes",
                "must be between 1024 and 1048576",
            );
        }
        if self.max_connections == 0 {
            problems.add("limits.max_connections", "must be at least 1");
        }
        if self.max_concurrent_streams == 0 {
            problems.add("limits.max_concurrent_streams", "must be at least 1");
        }
        for (field, value) in [
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                problems.add(field, "must be longer than zero");
            }
        }
    }
}

/// As many workers as the machine has cores.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub(crate) fn validate_workers(workers: usize, problems: &mut Problems) {
    if workers == 0 || workers > 256 {
        problems.add("workers", "must be between 1 and 256");
    }
}
