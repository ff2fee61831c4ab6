//! `sekisho`: the command line. See the crate's library for the parts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sekisho_cli::exit;
use sekisho_cli::net::{Net, Origin};
use sekisho_cli::tunnel;

/// Sekisho's command line: reach hosts behind a Sekisho proxy.
#[derive(Debug, Parser)]
#[command(name = "sekisho", version)]
struct Cli {
    /// Trust only the certificates in this PEM file for the proxy, not the system's roots.
    #[arg(long, global = true, env = "SEKISHO_CA_FILE", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Dial this address for every proxy host instead of resolving the name (like curl's
    /// --connect-to), for proxies that DNS does not know yet.
    #[arg(long, global = true, env = "SEKISHO_CONNECT_TO", value_name = "ADDR")]
    connect_to: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open a byte stream to HOST through its proxy and join it to stdin/stdout, for
    /// `ProxyCommand sekisho tunnel %h` in ~/.ssh/config. PORT is the proxy's HTTPS port
    /// (default 443).
    Tunnel {
        #[arg(value_name = "HOST[:PORT]")]
        host: String,
        /// Instead of stdin/stdout, listen on this local address and open a tunnel for every
        /// connection accepted (for tools that speak TCP), until interrupted.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    let code = runtime.block_on(run(cli));
    // Standard input may still be read by a blocking thread: do not wait for it.
    runtime.shutdown_background();
    exit::code(code)
}

async fn run(cli: Cli) -> u8 {
    let net = match Net::new(cli.ca.as_deref(), cli.connect_to) {
        Ok(net) => net,
        Err(error) => return fail(&error, exit::FAILURE),
    };
    match cli.command {
        Command::Tunnel { host, listen } => {
            let origin = match Origin::parse(&host) {
                Ok(origin) => origin,
                Err(error) => return fail(&error, exit::USAGE),
            };
            // A token from the environment (CI jobs, scripts) goes as it is.
            let token = std::env::var("SEKISHO_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            if let Some(addr) = listen {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    Err(error) => return fail(&error, exit::FAILURE),
                };
                eprintln!("sekisho: forwarding connections to {addr} through {origin}");
                let served = tunnel::serve_listener(&net, &origin, token.as_deref(), listener);
                return match served.await {
                    Ok(()) => exit::OK,
                    Err(error) => fail(&error, exit::FAILURE),
                };
            }
            match tunnel::open(&net, &origin, token.as_deref()).await {
                Ok(opened) => {
                    let spliced =
                        tunnel::splice(tokio::io::stdin(), tokio::io::stdout(), opened.io).await;
                    // Ended from the far side: if it was the proxy that cut it, say why.
                    if !matches!(spliced, Ok(tunnel::Ended::Both))
                        && let Some(id) = &opened.stream_id
                        && let Some(status) = tunnel::closed_reason(&net, &origin, id).await
                    {
                        let error = status.error.expect("closed_reason keeps only cut streams");
                        eprintln!(
                            "sekisho: the proxy closed the tunnel: {}",
                            status.reason.as_deref().unwrap_or(error.message())
                        );
                        return exit::for_tunnel_error(error);
                    }
                    match spliced {
                        Ok(_) => exit::OK,
                        Err(error) => fail(&error, exit::FAILURE),
                    }
                }
                Err(error) => {
                    let code = error
                        .tunnel_error()
                        .map_or(exit::PROXY_UNREACHABLE, exit::for_tunnel_error);
                    fail(&error, code)
                }
            }
        }
    }
}

/// Prints the error and its causes on stderr (never stdout: that is ssh's), returns `code`.
fn fail(error: &(dyn std::error::Error + 'static), code: u8) -> u8 {
    let mut text = format!("sekisho: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{text}");
    code
}
