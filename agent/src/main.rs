//! The `sekisho-agent` command.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use sekisho_agent::config::{Config, Overrides, Proxy, ProxyUrl, Settings};
use sekisho_agent::target::Target;
use sekisho_agent::{Agent, error_chain};

/// mimalloc instead of glibc's malloc: the relay's buffers come and go with every stream, and
/// glibc handed them back to the kernel and faulted them in again (6–7 % of the agent's core
/// at full throughput, benches/RESULTS.md). `main` has it give emptied pages back at once, so
/// the buffers of closed streams stop counting against an idle agent (sekisho-alloc).
#[global_allocator]
static ALLOCATOR: sekisho_alloc::Allocator = sekisho_alloc::Allocator;

/// Sekisho's agent: dials out to Sekisho proxies over HTTPS and lets them reach the local
/// services it allows (TCP targets such as ssh, and HTTP servers), with no inbound port.
///
/// Start with `init` to make a key, register the public key it prints with the proxy, then
/// `run` with a configuration file or flags.
///
/// Exit codes: 0 done (or stopped cleanly by SIGTERM/SIGINT); 1 failed at runtime; 2 bad
/// command line; 3 invalid configuration or key file.
#[derive(Debug, Parser)]
#[command(name = "sekisho-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new key file (mode 0600) and print its public key and the proxy configuration
    /// that registers it.
    Init {
        /// Where to write the key; missing directories are created with mode 0700.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The agent's name, for the printed proxy configuration snippet.
        #[arg(long, value_parser = parse_name)]
        name: Option<String>,
        /// Replace an existing key file (the proxy must then be given the new public key).
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of a key file.
    PublicKey {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Connect to the proxies and serve them until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Validate a configuration file, the key and the CA file it names, then exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (YAML). Optional when --name, --key and --proxy are given.
    #[arg(short, long, value_name = "FILE", env = "SEKISHO_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The agent's name, as registered under `agents:` in the proxy's configuration
    /// (replaces `name`).
    #[arg(long, value_parser = parse_name)]
    name: Option<String>,
    /// The private key file from `init` (replaces `key_file`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A proxy to connect to, https://host[:port] (repeatable; added to `proxies`).
    #[arg(long = "proxy", value_name = "URL")]
    proxies: Vec<ProxyUrl>,
    /// Dial this address instead of resolving the --proxy URL's host (needs exactly one
    /// --proxy; TLS still checks the URL's host).
    #[arg(long, value_name = "HOST:PORT", requires = "proxies")]
    proxy_address: Option<Target>,
    /// Trust this CA certificate file (PEM) for the proxies instead of the system roots
    /// (replaces `ca_file`).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Allow CONNECT streams to this exact target (repeatable; added to `allow.tcp`).
    #[arg(long = "allow-tcp", value_name = "HOST:PORT")]
    allow_tcp: Vec<Target>,
    /// Allow HTTP requests to this exact target (repeatable; added to `allow.http`).
    #[arg(long = "allow-http", value_name = "HOST:PORT")]
    allow_http: Vec<Target>,
}

fn parse_name(text: &str) -> Result<String, String> {
    if sekisho_wire::is_name(text) {
        Ok(text.to_owned())
    } else {
        Err("a name is 1 to 63 of a-z, 0-9, `-`, `_` and `.`".to_owned())
    }
}

/// Exit code for an invalid configuration or key file.
const EXIT_INVALID: u8 = 3;

fn main() -> ExitCode {
    sekisho_alloc::return_empty_pages_at_once();
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Init { key, name, force } => init(&key, name.as_deref(), force),
        Command::PublicKey { key } => match sekisho_agent::key::load(&key) {
            Ok(key) => {
                println!("{}", key.public_key());
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, EXIT_INVALID),
        },
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(args) => run(args),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn fail(error: &(dyn std::error::Error + 'static), code: u8) -> ExitCode {
    eprintln!("sekisho-agent: {}", error_chain(error));
    ExitCode::from(code)
}

fn init(path: &Path, name: Option<&str>, force: bool) -> ExitCode {
    let key = match sekisho_agent::key::create(path, force) {
        Ok(key) => key,
        Err(error) => return fail(&error, 1),
    };
    let public_key = key.public_key();
    eprintln!("wrote a new key to {}", path.display());
    println!("{public_key}");
    println!();
    println!("Register it in the proxy's configuration:");
    println!();
    println!("agents:");
    println!("  {}:", name.unwrap_or("NAME"));
    println!("    public_keys: [\"{public_key}\"]");
    if name.is_none() {
        println!();
        println!("(replace NAME with the agent's name, the `name:` of its configuration)");
    }
    ExitCode::SUCCESS
}

fn check_config(file: &Path) -> ExitCode {
    let settings =
        match Config::load(file).and_then(|c| c.settings(Some(file), Overrides::default())) {
            Ok(settings) => settings,
            Err(error) => return fail(&error, EXIT_INVALID),
        };
    let agent = match Agent::new(settings) {
        Ok(agent) => agent,
        Err(error) => return fail(&error, EXIT_INVALID),
    };
    let settings = agent.settings();
    println!(
        "{}: ok (agent {}, public key {}, {} proxies × {} connections, {} TCP and {} HTTP targets)",
        file.display(),
        settings.name,
        agent.public_key(),
        settings.proxies.len(),
        settings.connections,
        settings.allow.tcp().len(),
        settings.allow.http().len(),
    );
    ExitCode::SUCCESS
}

fn settings(args: RunArgs) -> Result<Settings, sekisho_agent::config::ConfigError> {
    if args.proxy_address.is_some() && args.proxies.len() != 1 {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--proxy-address needs exactly one --proxy",
            )
            .exit();
    }
    let overrides = Overrides {
        name: args.name,
        key_file: args.key,
        proxies: args
            .proxies
            .into_iter()
            .map(|url| Proxy {
                url,
                address: args.proxy_address.clone(),
            })
            .collect(),
        ca_file: args.ca,
        allow_tcp: args.allow_tcp,
        allow_http: args.allow_http,
    };
    match &args.config {
        Some(path) => Config::load(path)?.settings(Some(path), overrides),
        None => Config::empty().settings(None, overrides),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let settings = match settings(args) {
        Ok(settings) => settings,
        Err(error) => return fail(&error, EXIT_INVALID),
    };
    let agent = match Agent::new(settings) {
        Ok(agent) => agent,
        Err(error) => return fail(&error, EXIT_INVALID),
    };
    // One thread: measured faster than a multi-thread runtime for the tunnel (which roughly
    // doubled its latency), and the agent's work is all I/O.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error, 1),
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut terminate, mut interrupt) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(error), _) | (_, Err(error)) => return fail(&error, 1),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let signals = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
                _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
            }
            let _ = stop_tx.send(());
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::warn!("a second signal: exiting without waiting for open streams");
        };
        tokio::select! {
            () = agent.run(async { let _ = stop_rx.await; }) => {}
            () = signals => {}
        }
        ExitCode::SUCCESS
    })
}
