//! The `sekisho-proxy` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sekisho_proxy::config::Config;
use sekisho_proxy::{Options, StartError, error_chain};

/// mimalloc instead of glibc's malloc: per-thread free lists suit the one-runtime-per-worker
/// design, and freed pages go back to the system, so the buffers of connections that went
/// idle stop counting against the process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sekisho's TLS front door and reverse proxy.
///
/// Serves HTTPS on the addresses in the configuration file, routes requests by host and path
/// to upstreams, and reloads the file and its certificates when they change. Health and
/// Prometheus metrics are on the separate admin listener (/healthz, /readyz, /metrics).
///
/// Exit codes: 0 stopped cleanly; 1 failed at runtime; 2 bad command line; 3 invalid
/// configuration or certificates.
#[derive(Debug, Parser)]
#[command(name = "sekisho-proxy", version)]
struct Cli {
    /// Configuration file (YAML). Without it, the embedded local example is served
    /// (deploy/examples/local.yaml: https://localhost:8443 with a development certificate).
    #[arg(short, long, env = "SEKISHO_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format for diagnostics on standard error (access logs are always JSON on stdout).
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Serve,
    /// Validate a configuration file and the certificates it names, then exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve => serve(cli.config),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("invalid: {}", error_chain(&error));
            return ExitCode::from(3);
        }
    };
    let mut ok = true;
    for files in &config.tls.certificates {
        if let Err(error) = sekisho_proxy::tls::load_certificate(files) {
            eprintln!("invalid: {}", error_chain(&error));
            ok = false;
        }
    }
    if let Err(error) = sekisho_proxy::snapshot::Snapshot::build(
        &config,
        None,
        1,
        &sekisho_proxy::metrics::Metrics::default(),
    ) {
        eprintln!("invalid: {}", error_chain(&error));
        ok = false;
    }
    if !ok {
        return ExitCode::from(3);
    }
    println!(
        "{}: ok ({} hosts, {} upstreams, {} certificates)",
        file.display(),
        config.hosts.len(),
        config.upstreams.len(),
        config.tls.certificates.len()
    );
    ExitCode::SUCCESS
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let running = match sekisho_proxy::start(Options {
        config_path,
        ..Options::default()
    }) {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot start");
            eprintln!("sekisho-proxy: {}", error_chain(&error));
            return match error {
                StartError::Config(_) | StartError::Tls(_) | StartError::NoCertificate => {
                    ExitCode::from(3)
                }
                _ => ExitCode::FAILURE,
            };
        }
    };
    running.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
