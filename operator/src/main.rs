//! `sekisho-operator`: deploys and keeps Sekisho gates described by `Proxy` objects.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sekisho_operator::{Options, run};

/// Deploys and keeps Sekisho gates: for each Proxy object (sekisho.dev/v1alpha1) it makes the
/// proxy's Deployment, Services, RBAC, IngressClass, certificate, keys, PodDisruptionBudget
/// and ServiceMonitor, and reports in the Proxy's status. Run two replicas: one leads
/// (through the Lease `sekisho-operator` in --lease-namespace), the other takes over when it
/// stops. See docs/install.md.
///
/// Exit codes: 0 stopped cleanly (SIGTERM or Ctrl-C); 1 failed at runtime; 2 bad command
/// line.
#[derive(Debug, Parser)]
#[command(name = "sekisho-operator", version)]
struct Cli {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "SEKISHO_OPERATOR_METRICS_ADDRESS",
        default_value = "0.0.0.0:9090"
    )]
    metrics_address: SocketAddr,

    /// The namespace of the leader Lease: the operator's own (the downward API gives it).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sekisho-system")]
    lease_namespace: String,

    /// This replica's name in the Lease and in Events (the downward API gives the pod's).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// The proxy version deployed for Proxies that name none.
    #[arg(long, env = "SEKISHO_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    proxy_version: String,

    /// Reconcile only the Proxies of this namespace (default: every namespace).
    #[arg(long, env = "SEKISHO_WATCH_NAMESPACE", value_name = "NAMESPACE")]
    watch_namespace: Option<String>,

    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)");
                return ExitCode::from(1);
            }
        };
        let identity = cli.identity.unwrap_or_else(|| {
            format!("sekisho-operator-{}", std::process::id())
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
            let _ = stop.send(true);
        });
        let options = Options {
            metrics_address: cli.metrics_address,
            lease_namespace: cli.lease_namespace,
            identity,
            proxy_version: cli.proxy_version,
            watch_namespace: cli.watch_namespace,
        };
        match run(client, options, stopped).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "sekisho-operator failed");
                ExitCode::from(1)
            }
        }
    })
}
