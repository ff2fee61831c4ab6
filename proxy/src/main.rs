//! The `sekisho-proxy` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sekisho_proxy::Config;
use sekisho_proxy::{KubernetesOptions, Options, StartError, error_chain};

/// mimalloc instead of glibc's malloc: per-thread free lists suit the one-runtime-per-worker
/// design. `main` has it give emptied pages back at once, so the buffers of connections that
/// went idle stop counting against the process even when nothing else happens (sekisho-alloc).
/// Built without transparent huge pages (`no_thp`): with them, a 2 MiB page stays resident as
/// long as one small allocation lives in it, which made an idle keep-alive connection cost
/// 21 KiB instead of 13 (benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: sekisho_alloc::Allocator = sekisho_alloc::Allocator;

/// Sekisho's TLS front door and reverse proxy.
///
/// Serves HTTPS on the addresses in the configuration file, routes requests by host and path
/// to upstreams, and reloads the file and its certificates when they change. Health and
/// Prometheus metrics are on the separate admin listener (/healthz, /readyz, /metrics).
///
/// With --kubernetes it is the cluster's Ingress controller: routes, certificates and access
/// policies come from the Kubernetes API (in the cluster, or through KUBECONFIG), and the file
/// gives only the static settings (listeners, identity, limits); see docs/kubernetes.md.
///
/// Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads; SIGUSR2 upgrades in place (the
/// binary at the same path takes over the listening sockets, then this process drains; see
/// docs/upgrade.md). Listening sockets passed by systemd (LISTEN_FDS) are used, not bound again.
///
/// Exit codes: 0 stopped cleanly (also after handing over in an upgrade); 1 failed at runtime;
/// 2 bad command line; 3 invalid configuration or certificates.
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

    /// Kubernetes mode: serve the Ingresses of this controller's IngressClasses, with
    /// certificates from their Secrets and Sekisho's AccessPolicy objects.
    #[arg(long, env = "SEKISHO_KUBERNETES")]
    kubernetes: bool,

    /// The controller name of the IngressClasses to serve (Kubernetes mode).
    #[arg(
        long,
        env = "SEKISHO_INGRESS_CONTROLLER",
        value_name = "NAME",
        default_value = "sekisho.dev/ingress-controller"
    )]
    ingress_controller: String,

    /// The ClusterAccessPolicy (or `public`) of Ingresses that name no policy and whose class
    /// has none (Kubernetes mode). Without it they let no one through, after sign-in.
    #[arg(
        long,
        env = "SEKISHO_DEFAULT_POLICY",
        value_name = "NAME",
        requires = "kubernetes"
    )]
    default_policy: Option<String>,

    /// `NAMESPACE/NAME` of the Service whose load balancer addresses go into the served
    /// Ingresses' status (Kubernetes mode; one replica writes it, holding a Lease).
    #[arg(
        long,
        env = "SEKISHO_PUBLISH_SERVICE",
        value_name = "NAMESPACE/NAME",
        requires = "kubernetes"
    )]
    publish_service: Option<String>,

    /// Addresses (IPs or host names) to write into the served Ingresses' status instead of a
    /// Service's (Kubernetes mode; repeat or separate with commas).
    #[arg(
        long,
        env = "SEKISHO_PUBLISH_ADDRESS",
        value_name = "ADDRESS",
        value_delimiter = ',',
        requires = "kubernetes",
        conflicts_with = "publish_service"
    )]
    publish_address: Vec<String>,

    /// `NAMESPACE/NAME` of a kubernetes.io/tls Secret served for names no Ingress's
    /// certificate covers (Kubernetes mode; without it, a development certificate).
    #[arg(
        long,
        env = "SEKISHO_DEFAULT_CERTIFICATE",
        value_name = "NAMESPACE/NAME",
        requires = "kubernetes"
    )]
    default_certificate: Option<String>,

    /// The proxy's own namespace (Kubernetes mode; the downward API gives it): where the Lease
    /// of the replica that writes the Ingresses' status lives, and the Revocations (sign-outs
    /// and logouts) its replicas share.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    lease_namespace: Option<String>,

    /// `IP:PORT` at which the other replicas reach this one's HTTPS listener, to relay tunnel
    /// streams to the agents connected here (Kubernetes mode; by default `POD_IP`, from the
    /// downward API, at the HTTPS port).
    #[arg(
        long,
        env = "SEKISHO_RELAY_ADDRESS",
        value_name = "IP:PORT",
        requires = "kubernetes"
    )]
    relay_address: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Serve,
    /// Check a configuration file as start-up would, without serving, and print every problem.
    ///
    /// Reads the file and each file it names (certificates, keys, client secrets, webhook
    /// secrets, upstream CAs) and builds the routes. Each problem is printed on its own line as
    /// `file:line: field: message`. Exit 0 when the file would start, 3 when it would not.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Also fetch each identity provider's discovery document and keys, as the first
        /// login would (needs the network).
        #[arg(long)]
        online: bool,
    },
    /// Create or rotate key files (identity.session_keys_file, identity.signing_keys_file).
    ///
    /// An existing file gets the new key on top: new cookies and assertions use it at the next
    /// reload, and the old keys keep opening what they made until you delete them. A file that
    /// cannot be read or holds anything but keys is left unchanged (exit 1 when it cannot be
    /// read or written, 3 when its contents are invalid or all 256 session key ids are used).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a session cookie value sealed with the configuration's session keys (for tests
    /// and benchmarks; anyone holding the key file can do the same).
    DevSession {
        /// The host the cookie is for.
        #[arg(long)]
        host: String,
        /// The IdP subject (`sub`).
        #[arg(long)]
        subject: String,
        /// A verified email.
        #[arg(long, default_value = "")]
        email: String,
        /// Groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime of the session.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: std::time::Duration,
    },
    /// Print a Sekisho user token (what `sekisho login` obtains) signed with the
    /// configuration's identity.signing_keys_file, for tests, benchmarks and CI jobs that
    /// cannot log in (anyone holding the key file can do the same).
    DevToken {
        /// The IdP subject (`sub`).
        #[arg(long)]
        subject: String,
        /// A verified email.
        #[arg(long, default_value = "")]
        email: String,
        /// Groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime of the token.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        lifetime: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a session sealing key (AES-256-GCM) to FILE, creating it with mode 0600.
    Session { file: PathBuf },
    /// Add an ES256 signing key for identity assertions to FILE, creating it with mode 0600.
    Signing { file: PathBuf },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    sekisho_alloc::return_empty_pages_at_once();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::CheckConfig { .. }) {
        init_check_logging();
    } else {
        init_logging(cli.log_format);
    }
    match command {
        Command::CheckConfig { file, online } => check_config(&file, online),
        Command::Serve => serve(
            cli.config,
            cli.kubernetes.then(|| KubernetesOptions {
                config: None,
                controller: cli.ingress_controller,
                default_policy: cli.default_policy,
                publish_service: cli.publish_service,
                publish_addresses: cli.publish_address,
                lease_namespace: cli.lease_namespace,
                relay_address: cli.relay_address,
                default_certificate: cli.default_certificate,
            }),
        ),
        Command::Keys(command) => add_key(command),
        Command::DevSession {
            host,
            subject,
            email,
            groups,
            lifetime,
        } => dev_session(cli.config, host, subject, email, groups, lifetime),
        Command::DevToken {
            subject,
            email,
            groups,
            lifetime,
        } => dev_token(cli.config, subject, email, groups, lifetime),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into files and pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `check-config` talks to a person: warnings as short ` WARN …` lines, nothing else.
fn init_check_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
}

fn check_config(file: &std::path::Path, online: bool) -> ExitCode {
    match sekisho_proxy::check_config(file, online) {
        Ok(checked) => {
            print!("{}", checked_summary(file, &checked, online));
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            let count = problems.len();
            eprintln!(
                "{}: {count} problem{} found; the proxy would not start with this file",
                file.display(),
                if count == 1 { "" } else { "s" }
            );
            ExitCode::from(3)
        }
    }
}

/// What a good file serves, for the person who wrote it.
fn checked_summary(
    file: &std::path::Path,
    checked: &sekisho_proxy::CheckedConfig,
    online: bool,
) -> String {
    use std::fmt::Write;
    let config = &checked.config;
    let mut out = format!("{}: ok\n", file.display());
    let hosts: Vec<&str> = config.hosts.iter().map(|h| h.host.as_str()).collect();
    let _ = writeln!(out, "  hosts:        {}", list_or_none(&hosts));
    let upstreams: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
    let _ = writeln!(out, "  upstreams:    {}", list_or_none(&upstreams));
    let tunnels: Vec<String> = config
        .tunnels
        .iter()
        .map(|t| format!("{} -> {}", t.host, t.target))
        .collect();
    if !tunnels.is_empty() {
        let _ = writeln!(out, "  tunnels:      {}", tunnels.join(", "));
    }
    if checked.certificates.is_empty() {
        let _ = writeln!(
            out,
            "  certificates: none; a development certificate is generated at start"
        );
    }
    for (name, expires) in &checked.certificates {
        let _ = writeln!(out, "  certificate:  {name}, expires {expires}");
    }
    if let Some(identity) = &config.identity {
        let issuers: Vec<&str> = identity
            .providers
            .iter()
            .map(|p| p.issuer.as_str())
            .collect();
        let reached = if online {
            "reached"
        } else {
            "not contacted; --online fetches them"
        };
        let _ = writeln!(
            out,
            "  providers:    {} ({reached})",
            list_or_none(&issuers)
        );
    }
    out
}

fn list_or_none(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn serve(config_path: Option<PathBuf>, kubernetes: Option<KubernetesOptions>) -> ExitCode {
    let running = match sekisho_proxy::start(Options {
        config_path,
        kubernetes,
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

fn add_key(command: KeysCommand) -> ExitCode {
    use sekisho_identity::signing::SigningKeyError;
    use sekisho_proxy::KeyError;
    // Exit 3 when the file's contents are the problem, 1 when reading, writing or the random
    // source failed.
    let (file, added) = match command {
        KeysCommand::Session { file } => {
            let added = sekisho_proxy::add_session_key(&file);
            let added = added
                .map(|id| format!("session key id {id}"))
                .map_err(|error| {
                    let code = match error {
                        KeyError::KeyFileInvalid { .. } | KeyError::NoFreeKeyId { .. } => 3,
                        _ => 1,
                    };
                    (error_chain(&error), code)
                });
            (file, added)
        }
        KeysCommand::Signing { file } => {
            let added = sekisho_identity::signing::add_key_to_file(&file);
            let added = added
                .map(|kid| format!("signing key {kid}"))
                .map_err(|error| {
                    let code = match error {
                        SigningKeyError::KeyFileInvalid { .. } => 3,
                        _ => 1,
                    };
                    (error_chain(&error), code)
                });
            (file, added)
        }
    };
    match added {
        Ok(key) => {
            eprintln!("added {key} on top of {}", file.display());
            ExitCode::SUCCESS
        }
        Err((error, code)) => {
            eprintln!("sekisho-proxy: {error}; the file is unchanged");
            ExitCode::from(code)
        }
    }
}

fn dev_session(
    config: Option<PathBuf>,
    host: String,
    subject: String,
    email: String,
    groups: Vec<String>,
    lifetime: std::time::Duration,
) -> ExitCode {
    use sekisho_proxy::{SessionId, SessionKeys, SessionRecord, unix_now};
    let keys_file = match identity_file(config, "dev-session", "session_keys_file", |i| {
        i.session_keys_file
    }) {
        Ok((_, file)) => file,
        Err(code) => return code,
    };
    let sealed = SessionKeys::load(&keys_file)
        .map_err(|e| error_chain(&e))
        .and_then(|keys| {
            let now = unix_now();
            let record = SessionRecord {
                id: SessionId::random().map_err(|e| e.to_string())?,
                subject,
                email,
                groups,
                issuer: "sekisho-dev-session".into(),
                auth_time: now,
                issued_at: now,
                expires_at: now + lifetime.as_secs(),
                last_seen: now,
                host: host.to_ascii_lowercase(),
                groups_trimmed: false,
            };
            keys.seal(&record, &|_| true)
                .map(|sealed| sealed.value().to_owned())
                .map_err(|e| error_chain(&e))
        });
    print_or_fail(sealed)
}

/// The `identity:` section of the `--config` file and one of its key files, for the `dev-*`
/// commands; the exit code (and a message) when there is none.
fn identity_file(
    config: Option<PathBuf>,
    command: &str,
    field: &str,
    file: impl FnOnce(sekisho_proxy::IdentityConfig) -> Option<PathBuf>,
) -> Result<(String, PathBuf), ExitCode> {
    let Some(config) = config else {
        eprintln!("sekisho-proxy: {command} needs --config with identity.{field}");
        return Err(ExitCode::from(2));
    };
    let identity = match Config::load(&config) {
        Ok(config) => config.identity,
        Err(error) => {
            eprintln!("invalid: {}", error_chain(&error));
            return Err(ExitCode::from(3));
        }
    };
    let found = identity.and_then(|i| {
        let host = i.auth_host.to_ascii_lowercase();
        file(i).map(|file| (host, file))
    });
    found.ok_or_else(|| {
        eprintln!("sekisho-proxy: the configuration has no identity.{field}");
        ExitCode::from(3)
    })
}

/// Prints what a `dev-*` command made, or its error.
fn print_or_fail(made: Result<String, String>) -> ExitCode {
    match made {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sekisho-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn dev_token(
    config: Option<PathBuf>,
    subject: String,
    email: String,
    groups: Vec<String>,
    lifetime: std::time::Duration,
) -> ExitCode {
    use sekisho_identity::signing::{Identity, SigningKeys};
    use sekisho_identity::user_token::UserTokens;
    let (auth_host, keys_file) =
        match identity_file(config, "dev-token", "signing_keys_file", |i| {
            i.signing_keys_file
        }) {
            Ok(found) => found,
            Err(code) => return code,
        };
    let issued = SigningKeys::load(&keys_file)
        .map_err(|e| error_chain(&e))
        .and_then(|keys| {
            let tokens = UserTokens::new(
                std::sync::Arc::new(keys),
                format!("https://{auth_host}"),
                auth_host,
            )
            .with_lifetime(lifetime);
            let mut session = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut session)
                .map_err(|_| "no random numbers".to_owned())?;
            let identity = Identity {
                subject: &subject,
                email: &email,
                groups: &groups,
            };
            tokens
                .issue(session, &identity, sekisho_proxy::unix_now())
                .map(|issued| issued.token.expose().to_owned())
                .map_err(|e| error_chain(&e))
        });
    print_or_fail(issued)
}
