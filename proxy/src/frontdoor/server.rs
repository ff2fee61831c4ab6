//! Listeners, worker threads and client connections.
//!
//! Each worker is a thread with a single-threaded runtime and its own listening sockets
//! (`SO_REUSEPORT` shares the port, and the kernel spreads connections). A control thread runs
//! the admin listener, the reloader and signal handling. Shutdown stops the accept loops, asks
//! every connection to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response) and
//! waits up to the configured grace period.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::frontdoor::connection;
use crate::frontdoor::dev_ca::{self, DevCa};
use crate::frontdoor::reload::{self, Reloader};
use crate::frontdoor::tls::{self, CertStore, TlsError};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{ListenerLabels, Metrics, Name, RouteMetrics};
use crate::routing::snapshot::Snapshot;
use crate::source::kube::{KubeSource, KubernetesOptions};
use crate::state::client::{Admission, ConnState};
use crate::state::{Shared, stopped};
use crate::{frontdoor::admin, frontdoor::worker};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("TLS setup failed")]
    Tls(#[from] TlsError),
    #[error("cannot set up the configuration's routes")]
    Snapshot(#[from] crate::routing::snapshot::SnapshotError),
    #[error("none of the configured certificates could be loaded")]
    NoCertificate,
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a runtime thread")]
    Runtime(#[source] io::Error),
}

/// How the server is started.
pub struct Options {
    /// The configuration file, watched for changes. `None` uses the embedded local example.
    pub config_path: Option<PathBuf>,
    /// Where access-log lines go (standard output by default).
    pub access_log: Option<Box<dyn Write + Send>>,
    /// Handle SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload). Off for embedded use.
    pub handle_signals: bool,
    /// Where the development CA is kept when no certificate is configured (by default
    /// `SEKISHO_DEV_CA_DIR`, else the user's state directory).
    pub dev_ca_dir: Option<PathBuf>,
    /// Kubernetes mode: routes, certificates and policies come from the API; the file (or,
    /// without one, listeners on every address) gives only the static settings.
    pub kubernetes: Option<KubernetesOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_path: None,
            access_log: None,
            handle_signals: true,
            dev_ca_dir: None,
            kubernetes: None,
        }
    }
}

/// A started server.
pub struct Running {
    pub https_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The metrics-only listener's address, when `listen.metrics` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The development CA certificate (PEM file, kept across restarts) when no certificate
    /// was configured.
    pub dev_ca_file: Option<PathBuf>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    stop_control: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts a graceful shutdown; [`Running::wait`] returns when it is over.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }

    /// How many links the agent `name` has to this process.
    pub fn agent_links(&self, name: &str) -> usize {
        self.shared.hub.connected(name)
    }

    /// Ends the session `id` on this process, as a logout does, and remembers that until
    /// `until` (Unix seconds). False when no login is configured.
    pub fn revoke_session(&self, id: [u8; 16], until: u64) -> bool {
        let snapshot = self.shared.snapshot.load();
        let Some(identity) = snapshot.identity.as_deref() else {
            return false;
        };
        identity.state.revoke_session(id, until);
        true
    }

    /// The issuer of the user tokens this process accepts (what `sekisho login` obtains),
    /// when login is configured.
    pub fn user_tokens(&self) -> Option<sekisho_identity::user_token::UserTokens> {
        let snapshot = self.shared.snapshot.load();
        snapshot
            .identity
            .as_deref()
            .map(|identity| identity.user_tokens.clone())
    }

    /// Blocks until every worker has stopped.
    pub fn wait(mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let _ = self.stop_control.send(true);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
        let _ = self.stop_control.send(true);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerKind {
    Https,
    Http,
}

impl ListenerKind {
    fn label(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
        }
    }
}

/// Loads the configuration and certificates, binds every listener and starts the threads.
pub fn start(mut options: Options) -> Result<Running, StartError> {
    let kubernetes = options.kubernetes.take();
    let config = initial_config(&options, kubernetes.as_ref())?;
    serve(config, options, kubernetes)
}

/// Starts serving `config` as it is, with no file to watch: for the crate's own tests, which
/// can give what no file can (the ACME challenge routes a route source adds).
#[cfg(test)]
pub(crate) fn start_with_config(config: Config, options: Options) -> Result<Running, StartError> {
    serve(config, options, None)
}

/// The configuration to start with: the file, else the embedded default of the mode. In
/// Kubernetes mode the file may not give what the API gives.
fn initial_config(
    options: &Options,
    kubernetes: Option<&KubernetesOptions>,
) -> Result<Config, StartError> {
    let config = match (&options.config_path, kubernetes) {
        (Some(path), _) => Config::load(path)?,
        (None, None) => Config::parse(
            crate::config::EMBEDDED_DEFAULT,
            std::path::Path::new("<embedded deploy/examples/local.yaml>"),
            // Relative paths resolve as for the file itself, from the repository root.
            std::path::Path::new("deploy/examples"),
        )?,
        (None, Some(_)) => Config::parse(
            crate::config::KUBERNETES_DEFAULT,
            std::path::Path::new("<embedded Kubernetes-mode default>"),
            std::path::Path::new("."),
        )?,
    };
    if kubernetes.is_some() {
        let routed = config.route_sections();
        if !routed.is_empty() {
            return Err(StartError::Config(crate::config::ConfigError::Invalid {
                path: options.config_path.clone().unwrap_or_default(),
                problems: routed,
            }));
        }
    }
    Ok(config)
}

/// Loads the certificates, binds every listener and starts the threads.
fn serve(
    config: Config,
    options: Options,
    kubernetes: Option<KubernetesOptions>,
) -> Result<Running, StartError> {
    let workers = config.workers;
    let mut metrics = Metrics::default();
    if kubernetes.is_some() {
        metrics.enable_kubernetes();
    }

    let mut dev_ca_file = None;
    let table = if config.tls.certificates.is_empty() {
        let dir = options
            .dev_ca_dir
            .clone()
            .unwrap_or_else(dev_ca::default_dir);
        let ca = match DevCa::open_or_create(&dir) {
            Ok(ca) => ca,
            Err(error) => {
                let fallback = dev_ca::fallback_dir();
                tracing::warn!(error = %crate::error_chain(&error), fallback = %fallback.display(), "using another directory for the development CA");
                DevCa::open_or_create(&fallback)?
            }
        };
        let names = dev_ca::names(&config);
        tracing::warn!(
            ca = %ca.ca_file.display(),
            names = %names.join(" "),
            "NO CERTIFICATE CONFIGURED: serving a development certificate for the configured \
             hosts, signed by the development CA in `ca` (kept across restarts). Trust that \
             CA file for local testing only: `sekisho login --ca <ca> ...` for the CLI."
        );
        let cert = ca.certificate_for(&names)?;
        dev_ca_file = Some(ca.ca_file);
        tls::CertTable::new(vec![cert])
    } else {
        let (table, _) = reload::load_certificates(&config, &tls::CertTable::default(), &metrics);
        if table.entries.is_empty() {
            return Err(StartError::NoCertificate);
        }
        table
    };
    let fallback = kubernetes
        .as_ref()
        .and_then(|_| table.entries.first().cloned());
    let certs = Arc::new(CertStore::new(table));
    let snapshot = Snapshot::build(&config, None, workers, &metrics)?;
    let unrouted = RouteMetrics::new(&metrics, Name(Arc::from("")));

    let https = bind_group(config.listen.https, workers)?;
    let http = config
        .listen
        .http
        .map(|addr| bind_group(addr, workers))
        .transpose()?;
    let admin = bind(config.listen.admin, false)?;
    let metrics_listener = config
        .listen
        .metrics
        .map(|addr| bind(addr, false))
        .transpose()?;
    let https_addr = https[0].local_addr().map_err(StartError::Runtime)?;
    let http_addr = match &http {
        Some(group) => Some(group[0].local_addr().map_err(StartError::Runtime)?),
        None => None,
    };
    let admin_addr = admin.local_addr().map_err(StartError::Runtime)?;
    let metrics_addr = match &metrics_listener {
        Some(listener) => Some(listener.local_addr().map_err(StartError::Runtime)?),
        None => None,
    };

    let hub = crate::hub::registry::Hub::new(metrics.tunnel.links_unresponsive.clone());
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        tls: tls::server_config(certs.clone())?,
        certs,
        metrics,
        access_log: Arc::new(AccessLog::new(
            options.access_log.unwrap_or_else(|| Box::new(io::stdout())),
        )),
        unrouted,
        hub,
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        draining: AtomicBool::new(false),
        synced: AtomicBool::new(kubernetes.is_none()),
        redirect_port: config.listen.redirect_port.unwrap_or(https_addr.port()),
        http_mode: config.listen.http_mode,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (stop_control, stop_control_rx) = watch::channel(false);

    let reloader = match &kubernetes {
        None => options
            .config_path
            .clone()
            .map(|path| Reloader::new(shared.clone(), path, config.clone())),
        // The static settings are read once; the API gives everything that changes.
        Some(_) => None,
    };
    let kube_source = kubernetes
        .map(|kubernetes| KubeSource::new(shared.clone(), config.clone(), kubernetes, fallback));
    let control = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let handle_signals = options.handle_signals;
        std::thread::Builder::new()
            .name("sekisho-control".into())
            .spawn(move || {
                run_control(
                    shared,
                    [
                        Some((admin, admin::Scope::Admin)),
                        metrics_listener.map(|m| (m, admin::Scope::Metrics)),
                    ],
                    reloader,
                    kube_source,
                    shutdown,
                    stop_control_rx,
                    handle_signals,
                )
            })
            .map_err(StartError::Runtime)?
    };

    let mut http_group = http.map(Vec::into_iter);
    let mut handles = Vec::with_capacity(workers);
    for (index, https_listener) in https.into_iter().enumerate() {
        let mut listeners = vec![(https_listener, ListenerKind::Https)];
        if let Some(group) = &mut http_group
            && let Some(listener) = group.next()
        {
            listeners.push((listener, ListenerKind::Http));
        }
        let shared = shared.clone();
        let shutdown = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sekisho-worker-{index}"))
            .spawn(move || run_worker(index, shared, listeners, shutdown))
            .map_err(StartError::Runtime)?;
        handles.push(handle);
    }

    tracing::info!(
        https = %https_addr,
        http = http_addr.map(|a| a.to_string()),
        admin = %admin_addr,
        metrics = metrics_addr.map(|a| a.to_string()),
        workers,
        "sekisho-proxy is serving"
    );
    Ok(Running {
        https_addr,
        http_addr,
        admin_addr,
        metrics_addr,
        dev_ca_file,
        shared,
        shutdown,
        stop_control,
        workers: handles,
        control: Some(control),
    })
}

/// One listening socket per worker on the same address.
fn bind_group(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let reuse_port = workers > 1;
    let first = bind(addr, reuse_port)?;
    let actual = first
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let mut group = vec![first];
    for _ in 1..workers {
        group.push(bind(actual, reuse_port)?);
    }
    Ok(group)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let attempt = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    attempt().map_err(|source| StartError::Bind { addr, source })
}

fn run_control(
    shared: Arc<Shared>,
    internal: [Option<(std::net::TcpListener, admin::Scope)>; 2],
    reloader: Option<Reloader>,
    kube_source: Option<KubeSource>,
    shutdown: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    handle_signals: bool,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the control runtime");
            return;
        }
    };
    runtime.block_on(async move {
        for (listener, scope) in internal.into_iter().flatten() {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(admin::serve(listener, scope, shared.clone(), stop.clone()));
                }
                Err(error) => {
                    tracing::error!(%error, ?scope, "cannot use an internal listener");
                    return;
                }
            }
        }
        let (reload_now, reload_rx) = tokio::sync::mpsc::channel(1);
        if let Some(reloader) = reloader {
            tokio::spawn(reloader.run(reload_rx, stop.clone()));
        }
        let kube_task = kube_source.map(|source| tokio::spawn(source.run(stop.clone())));
        if handle_signals {
            tokio::spawn(handle_signals_until_stop(
                shared.clone(),
                shutdown,
                reload_now,
            ));
        }
        let mut stop = stop;
        stopped(&mut stop).await;
        // The Kubernetes source lets its Lease go before the runtime ends.
        if let Some(task) = kube_task {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    });
}

async fn handle_signals_until_stop(
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    reload_now: tokio::sync::mpsc::Sender<()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = reload_now.try_send(());
            }
        }
    }
    let grace = shared.snapshot.load().limits.shutdown_grace;
    tracing::info!(
        grace = %humantime::format_duration(grace),
        "shutting down: no new connections, finishing requests in flight"
    );
    shared.draining.store(true, Ordering::Relaxed);
    let _ = shutdown.send(true);
}

fn run_worker(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    shutdown: watch::Receiver<bool>,
) {
    worker::enter(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, worker = index, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let tracker = TaskTracker::new();
        let mut loops = Vec::new();
        for (listener, kind) in listeners {
            match TcpListener::from_std(listener) {
                Ok(listener) => loops.push(tokio::spawn(accept_loop(
                    listener,
                    kind,
                    shared.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                ))),
                Err(error) => tracing::error!(%error, "cannot use a listener"),
            }
        }
        for accept in loops {
            let _ = accept.await;
        }
        tracker.close();
        let grace = shared.snapshot.load().limits.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                worker = index,
                connections = tracker.len(),
                "grace period over: closing the remaining connections"
            );
        }
    });
}

/// Accepts until shutdown. Cancel-safe: `accept` and permit acquisition lose nothing when the
/// shutdown branch wins.
///
/// The connection limit is taken after `accept`: with one socket per worker, the kernel has
/// already chosen the worker for each queued connection, so a worker that waited for a permit
/// before accepting could hold it while the next client sits in another worker's queue. Each
/// worker holds at most one accepted connection beyond the limit while it waits.
async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, listener = kind.label(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_tcp(
            shared.clone(),
            kind,
            stream,
            peer,
            permit,
            tracker.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve_tcp(
    shared: Arc<Shared>,
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tracker: TaskTracker,
    shutdown: watch::Receiver<bool>,
) {
    let open = shared
        .metrics
        .open_connections
        .get_or_create(&ListenerLabels {
            listener: kind.label(),
        })
        .clone();
    open.inc();
    let admission = Admission { permit, open };
    let limits = shared.snapshot.load().limits.clone();
    match kind {
        ListenerKind::Https => {
            let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.clone());
            // Boxed, like the TLS stream after it: the task of every connection, plain ones
            // included, is as large as its largest state, and rustls's connection is 1 KiB.
            let handshake = Box::pin(tokio::time::timeout(
                limits.header_read_timeout,
                acceptor.accept(stream),
            ))
            .await;
            let ok = matches!(handshake, Ok(Ok(_)));
            shared
                .metrics
                .tls_handshakes
                .get_or_create(&Metrics::result(ok))
                .inc();
            match handshake {
                Ok(Ok(tls)) => {
                    let state = ConnState::new(peer, true, admission, tracker);
                    connection::serve_tls(shared, Box::new(tls), state, &limits, shutdown).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        ListenerKind::Http => {
            let state = ConnState::new(peer, false, admission, tracker);
            connection::serve_plain(shared, stream, state, &limits, shutdown).await;
        }
    }
}
