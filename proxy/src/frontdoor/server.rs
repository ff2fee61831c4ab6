//! Listeners, worker threads and client connections.
//!
//! Each worker is a thread with a single-threaded runtime and its own listening sockets
//! (`SO_REUSEPORT` shares the port, and the kernel spreads connections). A control thread runs
//! the admin listener, the reloader and signal handling. Shutdown stops the accept loops, asks
//! every connection to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response) and
//! waits up to the configured grace period.
//!
//! The listening sockets may come from outside (systemd's socket activation, or the process
//! this one replaces) and go to a new process on SIGUSR2 ([`handover`]): then this one stops
//! accepting once the new one is ready, and drains for `limits.upgrade_grace`.

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
use crate::frontdoor::handover::{self, InheritError, Inherited, Listeners, Role};
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
    #[error("cannot use the listening sockets passed to the process (LISTEN_FDS)")]
    Inherited(#[from] InheritError),
}

/// How the server is started.
pub struct Options {
    /// The configuration file, watched for changes. `None` uses the embedded local example.
    pub config_path: Option<PathBuf>,
    /// Where access-log lines go (standard output by default).
    pub access_log: Option<Box<dyn Write + Send>>,
    /// Act as the process: handle SIGTERM/SIGINT (graceful shutdown), SIGHUP (reload) and
    /// SIGUSR2 (in-place upgrade), take the listening sockets passed in `LISTEN_FDS`, and say
    /// when it is ready (systemd's `NOTIFY_SOCKET`, or the process being upgraded). Off for
    /// embedded use.
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
        identity
            .state
            .revocations
            .revoke(crate::auth::revocation::Revoked::Session { id, until });
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
    // First, before any thread: the reader of LISTEN_FDS unsets it.
    let inherited = if options.handle_signals {
        Inherited::from_env()?
    } else {
        Inherited::default()
    };
    let kubernetes = options.kubernetes.take();
    let config = initial_config(&options, kubernetes.as_ref())?;
    serve(config, options, kubernetes, inherited)
}

/// Starts serving `config` as it is, with no file to watch: for the crate's own tests, which
/// can give what no file can (the ACME challenge routes a route source adds).
#[cfg(test)]
pub(crate) fn start_with_config(config: Config, options: Options) -> Result<Running, StartError> {
    serve(config, options, None, Inherited::default())
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
    mut inherited: Inherited,
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

    let mut listeners = Listeners::default();
    let https = listener_group(
        Role::Https,
        config.listen.https,
        workers,
        &mut inherited,
        &mut listeners,
    )?;
    let http = config
        .listen
        .http
        .map(|addr| listener_group(Role::Http, addr, workers, &mut inherited, &mut listeners))
        .transpose()?;
    let admin = listener_group(
        Role::Admin,
        config.listen.admin,
        1,
        &mut inherited,
        &mut listeners,
    )?;
    let metrics_listener = config
        .listen
        .metrics
        .map(|addr| listener_group(Role::Metrics, addr, 1, &mut inherited, &mut listeners))
        .transpose()?;
    inherited.close_leftovers();
    let first_addr = |group: &[Vec<std::net::TcpListener>]| {
        group[0][0].local_addr().map_err(StartError::Runtime)
    };
    let https_addr = first_addr(&https)?;
    let http_addr = http.as_deref().map(first_addr).transpose()?;
    let admin_addr = first_addr(&admin)?;
    let metrics_addr = metrics_listener.as_deref().map(first_addr).transpose()?;
    let accept_loops = https
        .iter()
        .chain(http.iter().flatten())
        .map(Vec::len)
        .sum();

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
        relay: crate::hub::relay::Relay::default(),
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        draining: AtomicBool::new(false),
        synced: AtomicBool::new(kubernetes.is_none()),
        redirect_port: config.listen.redirect_port.unwrap_or(https_addr.port()),
        http_mode: config.listen.http_mode,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (stop_control, stop_control_rx) = watch::channel(false);
    let (accepting, _) = watch::channel(accept_loops);
    let accepting = Arc::new(accepting);
    let (cut_short, cut_short_rx) = watch::channel(None);

    let reloader = match &kubernetes {
        None => options
            .config_path
            .clone()
            .map(|path| Reloader::new(shared.clone(), path, config.clone())),
        // The static settings are read once; the API gives everything that changes.
        Some(_) => None,
    };
    let kube_source = kubernetes.map(|mut kubernetes| {
        kubernetes.relay_address = kubernetes
            .relay_address
            .or_else(|| crate::source::kube::replicas::default_address(https_addr));
        KubeSource::new(shared.clone(), config.clone(), kubernetes, fallback)
    });
    let signals = options.handle_signals.then(|| SignalContext {
        shutdown: shutdown.clone(),
        cut_short,
        accepting: accepting.clone(),
        listeners,
        executable: handover::own_executable(),
        kubernetes: kube_source.is_some(),
    });
    // Readiness is announced only once the signal handlers are installed: SIGUSR2 or SIGHUP
    // before that would end the process (their default action).
    let (handlers_installed, handlers_ready) = std::sync::mpsc::sync_channel(1);
    let control = {
        let shared = shared.clone();
        let internal = admin
            .into_iter()
            .flatten()
            .map(|listener| (listener, admin::Scope::Admin))
            .chain(
                metrics_listener
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|listener| (listener, admin::Scope::Metrics)),
            )
            .collect();
        std::thread::Builder::new()
            .name("sekisho-control".into())
            .spawn(move || {
                run_control(
                    shared,
                    internal,
                    reloader,
                    kube_source,
                    stop_control_rx,
                    signals,
                    handlers_installed,
                )
            })
            .map_err(StartError::Runtime)?
    };

    let mut http_group = http.map(Vec::into_iter);
    let mut handles = Vec::with_capacity(workers);
    for (index, https_listeners) in https.into_iter().enumerate() {
        let mut listeners: Vec<_> = https_listeners
            .into_iter()
            .map(|listener| (listener, ListenerKind::Https))
            .collect();
        if let Some(group) = &mut http_group
            && let Some(http_listeners) = group.next()
        {
            listeners.extend(
                http_listeners
                    .into_iter()
                    .map(|listener| (listener, ListenerKind::Http)),
            );
        }
        let shared = shared.clone();
        let stop = WorkerStop {
            shutdown: shutdown_rx.clone(),
            accepting: accepting.clone(),
            cut_short: cut_short_rx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("sekisho-worker-{index}"))
            .spawn(move || run_worker(index, shared, listeners, stop))
            .map_err(StartError::Runtime)?;
        handles.push(handle);
    }

    // Serving is announced (logged, and told to systemd or the process being upgraded) once
    // the signal handlers are installed. The sender is dropped unsent when the control thread
    // could not install them.
    let handlers = !options.handle_signals || handlers_ready.recv().is_ok();
    if !handlers {
        tracing::error!("the signal handlers are not installed: not announcing readiness");
    }
    tracing::info!(
        https = %https_addr,
        http = http_addr.map(|a| a.to_string()),
        admin = %admin_addr,
        metrics = metrics_addr.map(|a| a.to_string()),
        workers,
        pid = std::process::id(),
        "sekisho-proxy is serving"
    );
    if options.handle_signals && handlers {
        handover::announce_ready();
    }
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

/// The listening sockets of `role` for each of `workers`: the inherited ones when there are,
/// else one bound per worker on the same address. A copy of each goes into `kept`, for an
/// upgrade.
///
/// Inherited sockets are spread over the workers: several per worker when there are more
/// sockets than workers (a group the old process bound with more workers), a descriptor of
/// the same socket for several workers when there are fewer (systemd passes one socket per
/// address; each worker's runtime then waits on it, and one of them accepts each connection).
/// Nothing is bound beside them: a socket this process bound would close with it, and the
/// connections in its queue with it.
fn listener_group(
    role: Role,
    addr: SocketAddr,
    workers: usize,
    inherited: &mut Inherited,
    kept: &mut Listeners,
) -> Result<Vec<Vec<std::net::TcpListener>>, StartError> {
    let taken = inherited.take(role, addr);
    let group = if taken.is_empty() {
        let reuse_port = workers > 1;
        let first = bind(addr, reuse_port)?;
        let actual = first
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let mut group = vec![vec![first]];
        for _ in 1..workers {
            group.push(vec![bind(actual, reuse_port)?]);
        }
        for listener in group.iter().flatten() {
            kept.keep(role, listener).map_err(StartError::Runtime)?;
        }
        group
    } else {
        // Each socket once, however many workers share it.
        for listener in &taken {
            kept.keep(role, listener).map_err(StartError::Runtime)?;
        }
        spread(taken, workers).map_err(StartError::Runtime)?
    };
    Ok(group)
}

/// `sockets` spread over `workers`, every worker with at least one and every socket used.
fn spread(
    sockets: Vec<std::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let count = sockets.len();
    let mut group: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    if count >= workers {
        for (index, socket) in sockets.into_iter().enumerate() {
            group[index % workers].push(socket);
        }
    } else {
        for (index, slot) in group.iter_mut().enumerate() {
            slot.push(sockets[index % count].try_clone()?);
        }
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

/// What the signal handler needs: the flags it raises, and what an upgrade hands over.
struct SignalContext {
    shutdown: watch::Sender<bool>,
    /// `Some(grace)`: a signal during the drain after an upgrade; what is left gets `grace`.
    cut_short: watch::Sender<Option<Duration>>,
    /// How many public accept loops still run.
    accepting: Arc<watch::Sender<usize>>,
    /// Copies of the listening sockets for a new process; closed when this process stops.
    listeners: Listeners,
    /// This binary's path, read at start (what SIGUSR2 starts).
    executable: io::Result<PathBuf>,
    kubernetes: bool,
}

/// How a worker stops: the shutdown flag, the count of running accept loops it lowers, and
/// whether the drain was cut short (by SIGTERM after an upgrade).
struct WorkerStop {
    shutdown: watch::Receiver<bool>,
    accepting: Arc<watch::Sender<usize>>,
    cut_short: watch::Receiver<Option<Duration>>,
}

fn run_control(
    shared: Arc<Shared>,
    internal: Vec<(std::net::TcpListener, admin::Scope)>,
    reloader: Option<Reloader>,
    kube_source: Option<KubeSource>,
    stop: watch::Receiver<bool>,
    signals: Option<SignalContext>,
    handlers_installed: std::sync::mpsc::SyncSender<()>,
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
        // The internal listeners stop with the control thread, or at once when the sockets
        // are handed to a new process (which then answers /readyz on them).
        let (stop_internal, internal_stop) = watch::channel(false);
        let mut internal_loops = Vec::new();
        for (listener, scope) in internal {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    internal_loops.push(tokio::spawn(admin::serve(
                        listener,
                        scope,
                        shared.clone(),
                        internal_stop.clone(),
                    )));
                }
                Err(error) => {
                    tracing::error!(%error, ?scope, "cannot use an internal listener");
                    return;
                }
            }
        }
        let (reload_now, reload_rx) = tokio::sync::mpsc::channel(1);
        // True while a hand-over is under way: the thread stops only after it has been logged
        // (the workers may all be done before the signal task has seen their loops end).
        let (handing_over, mut handover_done) = watch::channel(false);
        let reload_task =
            reloader.map(|reloader| tokio::spawn(reloader.run(reload_rx, stop.clone())));
        let kube_task = kube_source.map(|source| tokio::spawn(source.run(stop.clone())));
        if let Some(signals) = signals {
            let internal = InternalListeners {
                stop: stop_internal,
                loops: internal_loops,
                reload_task,
            };
            match Handlers::install() {
                Ok(handlers) => {
                    let _ = handlers_installed.send(());
                    tokio::spawn(handle_signals_until_stop(
                        shared.clone(),
                        handlers,
                        signals,
                        reload_now,
                        internal,
                        handing_over,
                    ));
                }
                Err(error) => tracing::error!(%error, "cannot install signal handlers"),
            }
        } else {
            // No SIGHUP without signal handling: the reloader watches the files alone.
            drop(reload_now);
            let mut stop = stop.clone();
            tokio::spawn(async move {
                stopped(&mut stop).await;
                let _ = stop_internal.send(true);
            });
        }
        let mut stop = stop;
        stopped(&mut stop).await;
        let _ = handover_done.wait_for(|busy| !busy).await;
        // The Kubernetes source lets its Lease go before the runtime ends.
        if let Some(task) = kube_task {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    });
}

/// The control thread's own listeners and tasks, which an upgrade stops early.
struct InternalListeners {
    stop: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    reload_task: Option<tokio::task::JoinHandle<()>>,
}

/// The signals the process answers.
struct Handlers {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Handlers {
    fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// How long a replica in Kubernetes mode keeps accepting after SIGTERM, not ready: the time
/// the endpoints controller and every node's Service rules take to stop sending it connections.
const KUBERNETES_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// How the signal loop ended.
enum Ending {
    /// SIGTERM or SIGINT: drain and stop.
    Stop(&'static str),
    /// A new process took over the listening sockets.
    HandedOver(handover::Successor),
}

async fn handle_signals_until_stop(
    shared: Arc<Shared>,
    handlers: Handlers,
    signals: SignalContext,
    reload_now: tokio::sync::mpsc::Sender<()>,
    internal: InternalListeners,
    handing_over: watch::Sender<bool>,
) {
    let Handlers {
        mut term,
        mut int,
        mut hup,
        mut usr2,
    } = handlers;
    let SignalContext {
        shutdown,
        cut_short,
        accepting,
        listeners,
        executable,
        kubernetes,
    } = signals;
    // At most one upgrade at a time; dropping it (SIGTERM meanwhile) kills the new process.
    let mut upgrading = None;
    let ending = loop {
        tokio::select! {
            _ = term.recv() => break Ending::Stop("SIGTERM"),
            _ = int.recv() => break Ending::Stop("SIGINT"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = reload_now.try_send(());
            }
            _ = usr2.recv() => {
                if kubernetes {
                    tracing::warn!("SIGUSR2: in-place upgrades are for a single host; in Kubernetes, roll the Deployment (ignored)");
                } else if upgrading.is_some() {
                    tracing::warn!("SIGUSR2: an upgrade is already under way (ignored)");
                } else {
                    match &executable {
                        Ok(path) => {
                            tracing::info!(executable = %path.display(), "SIGUSR2: upgrading in place");
                            upgrading = Some(Box::pin(handover::start_successor(path, &listeners)));
                        }
                        Err(error) => tracing::error!(%error, "SIGUSR2: cannot upgrade: this process's executable was not found at start; still serving"),
                    }
                }
            }
            result = async { upgrading.as_mut().expect("polled only while upgrading").await }, if upgrading.is_some() => {
                upgrading = None;
                match result {
                    Ok(successor) => break Ending::HandedOver(successor),
                    Err(error) => tracing::error!(
                        error = %crate::error_chain(&error),
                        "upgrade failed: this process keeps serving"
                    ),
                }
            }
        }
    };
    drop(upgrading);
    let snapshot = shared.snapshot.load_full();
    let shutdown_grace = snapshot.limits.shutdown_grace;
    match ending {
        Ending::Stop(signal) => {
            let delay = snapshot.limits.shutdown_delay.unwrap_or(match kubernetes {
                true => KUBERNETES_SHUTDOWN_DELAY,
                false => Duration::ZERO,
            });
            if !delay.is_zero() {
                shared.draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    signal,
                    delay = %humantime::format_duration(delay),
                    "stopping: not ready any more; still serving while the Service stops sending connections here"
                );
                // A second signal ends the wait.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            tracing::info!(
                signal,
                grace = %humantime::format_duration(shutdown_grace),
                "shutting down: no new connections, finishing requests in flight"
            );
            handover::announce_stopping();
            // Closed with the accept loops, so that new connections are refused at once.
            drop(listeners);
            shared.draining.store(true, Ordering::Relaxed);
            let _ = shutdown.send(true);
        }
        Ending::HandedOver(successor) => {
            handing_over.send_replace(true);
            let grace = snapshot.limits.upgrade_grace;
            tracing::info!(
                new_pid = successor.pid,
                grace = %humantime::format_duration(grace),
                "upgrade: the new process is ready; this one stops accepting and drains"
            );
            // Everything this process still holds gets the upgrade grace: the workers' wait
            // and the agent links read it from the snapshot when the shutdown flag turns.
            let mut draining = (*snapshot).clone();
            draining.limits.shutdown_grace = grace;
            shared.snapshot.store(Arc::new(draining));
            // The configuration is the new process's now.
            if let Some(task) = &internal.reload_task {
                task.abort();
            }
            shared.draining.store(true, Ordering::Relaxed);
            let _ = internal.stop.send(true);
            let _ = shutdown.send(true);
            drop(listeners);
            for task in internal.loops {
                let _ = task.await;
            }
            let mut accepting = accepting.subscribe();
            let _ = accepting.wait_for(|loops| *loops == 0).await;
            tracing::info!(
                new_pid = successor.pid,
                pid = std::process::id(),
                "upgrade: handed over; this process no longer accepts connections"
            );
            handing_over.send_replace(false);
        }
    }
    // A signal during the drain cuts it to the shutdown grace.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        grace = %humantime::format_duration(shutdown_grace),
        "signal during the drain: what is left gets the shutdown grace"
    );
    let _ = cut_short.send(Some(shutdown_grace));
    // Still here, so that further signals are not fatal.
    std::future::pending::<()>().await;
}

fn run_worker(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    stop: WorkerStop,
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
    let WorkerStop {
        shutdown,
        accepting,
        mut cut_short,
    } = stop;
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
                Err(error) => {
                    tracing::error!(%error, "cannot use a listener");
                    accepting.send_modify(|running| *running = running.saturating_sub(1));
                }
            }
        }
        for accept in loops {
            let _ = accept.await;
            accepting.send_modify(|running| *running = running.saturating_sub(1));
        }
        tracker.close();
        let grace = shared.snapshot.load().limits.shutdown_grace;
        let cut = async {
            let cut_to = match cut_short.wait_for(Option::is_some).await {
                Ok(grace) => *grace,
                Err(_) => None,
            };
            match cut_to {
                Some(grace) => tokio::time::sleep(grace).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tracker.wait() => {}
            () = tokio::time::sleep(grace) => tracing::warn!(
                worker = index,
                connections = tracker.len(),
                "grace period over: closing the remaining connections"
            ),
            () = cut => tracing::warn!(
                worker = index,
                connections = tracker.len(),
                "drain cut short: closing the remaining connections"
            ),
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
                    let mut state = ConnState::new(peer, true, admission, tracker);
                    state.binding = crate::hub::relay::binding(tls.get_ref().1);
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
