//! `sekisho`: the command line. See the crate's library for the parts.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sekisho_cli::browser::{self, Flow};
use sekisho_cli::cache::{self, Cache, Reach};
use sekisho_cli::grant::AuthServer;
use sekisho_cli::grant::unix_now;
use sekisho_cli::login::{self, LoginError};
use sekisho_cli::net::{self, Net, NetError, Origin, Trust};
use sekisho_cli::secret::Secret;
use sekisho_cli::{exit, tunnel};
use sekisho_wire::tunnel::TunnelError;

/// Sekisho's command line: log in to a Sekisho proxy and reach the hosts behind it.
///
/// `sekisho login` signs you in through the proxy's usual browser login and keeps short-lived
/// tokens in ~/.config/sekisho/tokens.json (or $XDG_CONFIG_HOME/sekisho/). `sekisho tunnel`
/// is what ssh runs (`sekisho ssh-config` prints the lines for ~/.ssh/config); it logs in by
/// itself when it has to. Everything but a command's output goes to stderr.
///
/// `localhost` and every name under it (`auth.localhost`, `ssh.localhost`) are this machine,
/// as in browsers. The --ca and --connect-to a login was given are remembered for the hosts of
/// that proxy (those it serves, and the names in its auth host's domain on the same port), so
/// `ProxyCommand sekisho tunnel %h` needs neither; given again, they win.
#[derive(Debug, Parser)]
#[command(name = "sekisho", version, max_term_width = 100, after_help = exit::help())]
struct Cli {
    /// Trust only the certificates in this PEM file for the proxy, not the system's roots.
    /// A login remembers it for the proxy's hosts (and trusts it besides the system's roots).
    #[arg(long, global = true, env = "SEKISHO_CA_FILE", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Dial this address for every proxy host instead of resolving the name (like curl's
    /// --connect-to), for proxies that DNS does not know yet. A login remembers it for the
    /// proxy's hosts.
    #[arg(long, global = true, env = "SEKISHO_CONNECT_TO", value_name = "ADDR")]
    connect_to: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

/// How to log in, for the commands that may.
#[derive(Debug, Args)]
struct LoginFlags {
    /// Use the device flow: print a URL and a code to approve in any browser, on any machine.
    /// The default on a box without a display or reached over ssh.
    #[arg(long)]
    no_browser: bool,
    /// Do not try to open a browser; print the login URL for a browser on this machine (also
    /// SEKISHO_BROWSER=none).
    #[arg(long, conflicts_with = "no_browser")]
    print_url_only: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in to a proxy (any host it serves, or its auth host; default: the one used last).
    ///
    /// In a browser on this machine when there is one (it comes back to a listener on
    /// 127.0.0.1), else with the device flow. The browser is $SEKISHO_BROWSER (`none`: only print
    /// the URL), else $BROWSER, else xdg-open.
    Login {
        /// A host the proxy serves, or its auth host (`host`, `host:port` or an https URL).
        #[arg(value_name = "PROXY")]
        proxy: Option<String>,
        #[command(flatten)]
        flags: LoginFlags,
    },
    /// Show each proxy logged in to: the user and when the tokens expire.
    ///
    /// Exits with 10 when logged in nowhere.
    Status,
    /// Log out of a proxy (default: the one used last): the proxy forgets the login, and so
    /// does this machine.
    Logout {
        /// A host the proxy serves, or its auth host.
        #[arg(value_name = "PROXY")]
        proxy: Option<String>,
    },
    /// Print the lines for ~/.ssh/config that make ssh reach hosts through the proxy.
    #[command(name = "ssh-config")]
    SshConfig {
        /// The ssh host pattern (default: every host in the proxy's domain, `*.DOMAIN`).
        #[arg(long = "host", value_name = "PATTERN")]
        pattern: Option<String>,
        /// A host the proxy serves (default: the one used last); its port goes into the lines.
        #[arg(value_name = "PROXY")]
        proxy: Option<String>,
    },
    /// Open a byte stream to HOST through its proxy and join it to stdin/stdout, for
    /// `ProxyCommand sekisho tunnel %h` in ~/.ssh/config. PORT is the proxy's HTTPS port
    /// (default 443). Logs in first when needed (messages on stderr).
    ///
    /// $SEKISHO_TOKEN, when set, is sent as it is (CI jobs, scripts): no cache (neither tokens
    /// nor what a login remembered), no login; a refused one exits with 20.
    ///
    /// Exit codes: 10 not logged in, 11 denied by policy, 12 the host's agent is offline,
    /// 13 the target cannot be reached, 14 the proxy cannot be reached, 15 no tunnel for HOST,
    /// 16-19 the proxy's certificate, protocol, name or address, 21 the proxy and 22 the agent
    /// went away under the open tunnel (see `sekisho --help`). SEKISHO_DEBUG=1 adds the
    /// details behind a lost tunnel's message.
    Tunnel {
        /// The host to reach, as ssh names it (`%h`), and the proxy's HTTPS port.
        #[arg(value_name = "HOST[:PORT]")]
        host: String,
        /// Instead of stdin/stdout, listen on this local address and open a tunnel for every
        /// connection accepted (for tools that speak TCP), until interrupted.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Never log in: without a usable token, fail with exit code 10 (for scripts).
        #[arg(long)]
        no_login: bool,
        #[command(flatten)]
        flags: LoginFlags,
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

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Everything a command needs.
struct Context {
    /// The command line's --ca and --connect-to (or their variables): they win over what a
    /// login remembered.
    ca: Option<PathBuf>,
    connect_to: Option<SocketAddr>,
    cache_dir: PathBuf,
}

impl Context {
    /// The cache, or an empty one after a warning.
    fn load(&self) -> Cache {
        let (cache, warning) = Cache::load(&self.cache_dir);
        if let Some(warning) = warning {
            warn(&warning, "starting a new one");
        }
        cache
    }

    fn save(&self, cache: &Cache) -> Result<(), u8> {
        cache
            .save(&self.cache_dir)
            .map_err(|e| fail(&e, exit::FAILURE))
    }

    /// How to reach `origin`: the command line's --ca and --connect-to, each else what the
    /// login of its proxy remembered (a remembered CA is trusted besides the system's roots).
    fn net_for(&self, cache: &Cache, origin: &Origin) -> Result<Net, u8> {
        let remembered = cache.reach_for(origin).cloned().unwrap_or_default();
        let trust = match (&self.ca, remembered.ca_file) {
            (Some(file), _) => Trust::Only(file.clone()),
            (None, Some(file)) => Trust::AlsoFile(file),
            (None, None) => Trust::System,
        };
        self.net(trust, self.connect_to.or(remembered.connect_to))
    }

    /// How to reach a proxy by the command line alone.
    fn net_from_flags(&self) -> Result<Net, u8> {
        let trust = match &self.ca {
            Some(file) => Trust::Only(file.clone()),
            None => Trust::System,
        };
        self.net(trust, self.connect_to)
    }

    fn net(&self, trust: Trust, connect_to: Option<SocketAddr>) -> Result<Net, u8> {
        let remembered = matches!(trust, Trust::AlsoFile(_));
        match Net::with_trust(trust, connect_to) {
            Ok(net) => Ok(net.with_dev_ca(net::dev_ca_file(&env))),
            Err(error) => {
                let code = fail_net(&error, &error);
                if remembered {
                    eprintln!(
                        "sekisho: a login remembered that CA file; give the proxy's CA with \
                         --ca FILE (a new login remembers it)"
                    );
                }
                Err(code)
            }
        }
    }
}

/// What a login used to reach its proxy, to remember (the CA file as an absolute path).
fn reach_of(net: &Net) -> Reach {
    Reach {
        ca_file: net
            .trust()
            .ca_file()
            .and_then(|file| std::fs::canonicalize(file).ok()),
        connect_to: net.connect_to(),
    }
}

async fn run(cli: Cli) -> u8 {
    let cache_dir = match cache::default_dir(&env) {
        Ok(dir) => dir,
        Err(error) => return fail(&error, exit::FAILURE),
    };
    let ctx = Context {
        ca: cli.ca,
        connect_to: cli.connect_to,
        cache_dir,
    };
    let result = match cli.command {
        Command::Login { proxy, flags } => login(&ctx, proxy.as_deref(), &flags).await,
        Command::Status => status(&ctx),
        Command::Logout { proxy } => logout(&ctx, proxy.as_deref()).await,
        Command::SshConfig { pattern, proxy } => ssh_config(&ctx, pattern, proxy.as_deref()),
        Command::Tunnel {
            host,
            listen,
            no_login,
            flags,
        } => tunnel(&ctx, &host, listen, no_login, &flags).await,
    };
    result.unwrap_or_else(|code| code)
}

fn flow(flags: &LoginFlags) -> Flow {
    browser::choose_flow(flags.no_browser, flags.print_url_only, &env)
}

/// The proxy a command names, else the one used last.
fn proxy_or_last(cache: &Cache, proxy: Option<&str>, command: &str) -> Result<Origin, u8> {
    match proxy {
        Some(text) => Origin::parse(text).map_err(|e| fail(&e, exit::USAGE)),
        None => cache.last_proxy().ok_or_else(|| {
            eprintln!("sekisho: name the proxy: sekisho {command} HOST (none was used before)");
            exit::USAGE
        }),
    }
}

/// Prints a failed login and returns its exit code.
fn login_failed(error: &LoginError) -> u8 {
    if let Some(net) = error.net_error() {
        return fail_net(error, net);
    }
    let code = match error {
        LoginError::Loopback(sekisho_cli::loopback::LoopbackError::Bind(_))
        | LoginError::Random => exit::FAILURE,
        _ => exit::NOT_LOGGED_IN,
    };
    fail(error, code)
}

async fn login(ctx: &Context, proxy: Option<&str>, flags: &LoginFlags) -> Result<u8, u8> {
    let mut cache = ctx.load();
    let proxy = proxy_or_last(&cache, proxy, "login")?;
    let net = ctx.net_for(&cache, &proxy)?;
    let auth = login::discover(&net, &proxy)
        .await
        .map_err(|e| login_failed(&e))?;
    let tokens = login::run(&net, &auth, flow(flags), &env)
        .await
        .map_err(|e| login_failed(&e))?;
    let user = tokens.user.clone();
    cache.set_login(&auth, tokens);
    cache.set_reach(&auth, reach_of(&net));
    if proxy != auth {
        cache.remember_host(&proxy, &auth);
    }
    cache.set_last_proxy(&proxy);
    ctx.save(&cache)?;
    eprintln!("Logged in to {auth} as {user}.");
    Ok(exit::OK)
}

fn status(ctx: &Context) -> Result<u8, u8> {
    let cache = ctx.load();
    let now = unix_now();
    let mut logged_in = false;
    for (auth, tokens) in cache.logins() {
        logged_in |= tokens.refresh_expires_at > now;
        println!("{auth}");
        println!("  user:          {}", tokens.user);
        println!("  access token:  {}", expiry(tokens.access_expires_at, now));
        println!(
            "  refresh token: {}",
            expiry(tokens.refresh_expires_at, now)
        );
        for host in cache.hosts_of(&auth) {
            println!("  proxy host:    {host}");
        }
        if let Some(reach) = cache.reach_for(&auth) {
            if let Some(file) = &reach.ca_file {
                println!("  trusts:        {} (from the login)", file.display());
            }
            if let Some(addr) = reach.connect_to {
                println!("  dials:         {addr} (from the login)");
            }
        }
    }
    if logged_in {
        Ok(exit::OK)
    } else {
        println!("not logged in");
        Err(exit::NOT_LOGGED_IN)
    }
}

/// "valid for 14 minutes (until 2030-01-01T12:00:00Z)", or "expired 3 minutes ago (…)".
fn expiry(at: u64, now: u64) -> String {
    let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at));
    if at > now {
        format!("valid for {} (until {when})", human(at - now))
    } else {
        format!("expired {} ago ({when})", human(now - at))
    }
}

/// A duration for people, in its largest sensible unit.
fn human(secs: u64) -> String {
    let (n, unit) = match secs {
        0..90 => (secs, "second"),
        90..5400 => ((secs + 30) / 60, "minute"),
        5400..172_800 => ((secs + 1800) / 3600, "hour"),
        _ => ((secs + 43_200) / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

async fn logout(ctx: &Context, proxy: Option<&str>) -> Result<u8, u8> {
    let mut cache = ctx.load();
    let proxy = proxy_or_last(&cache, proxy, "logout")?;
    let Some(auth) = cache
        .auth_for(&proxy)
        .filter(|auth| cache.login(auth).is_some())
    else {
        eprintln!("sekisho: not logged in to {proxy}");
        return Err(exit::NOT_LOGGED_IN);
    };
    let net = ctx.net_for(&cache, &auth)?;
    let tokens = cache.remove_login(&auth).expect("checked above");
    let revoked = AuthServer {
        net: &net,
        origin: &auth,
    }
    .revoke(&tokens.refresh_token)
    .await;
    ctx.save(&cache)?;
    match revoked {
        Ok(()) => {
            eprintln!("Logged out of {auth}.");
            Ok(exit::OK)
        }
        Err(error) => {
            warn(
                &error,
                "this machine forgot the login, but the proxy may not have",
            );
            Err(error
                .net_error()
                .map_or(exit::PROXY_UNREACHABLE, exit::for_net_error))
        }
    }
}

/// `PATTERN` for `Host`: one word without whitespace or control characters.
fn is_host_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && !pattern
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#' || c == '"')
}

/// `*.DOMAIN` for `host.DOMAIN`, and `*.HOST` for a name of one or two labels (`localhost`,
/// `example.com`); none for an IP address.
fn default_pattern(host: &str) -> Option<String> {
    if host.is_empty() || host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    match labels.len() {
        1 | 2 => Some(format!("*.{host}")),
        _ => Some(format!("*.{}", labels[1..].join("."))),
    }
}

/// `word` as one shell word, and with `%` doubled (ssh expands `%` in ProxyCommand).
fn ssh_word(word: &str) -> String {
    let word = word.replace('%', "%%");
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=".contains(&b))
    {
        word
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))
}

fn ssh_config(ctx: &Context, pattern: Option<String>, proxy: Option<&str>) -> Result<u8, u8> {
    let cache = ctx.load();
    let proxy = match proxy {
        Some(text) => Some(Origin::parse(text).map_err(|e| fail(&e, exit::USAGE))?),
        None => cache.last_proxy(),
    };
    let Some(pattern) = pattern.or_else(|| proxy.as_ref().and_then(|p| default_pattern(&p.host)))
    else {
        eprintln!("sekisho: name the hosts: sekisho ssh-config --host PATTERN [PROXY]");
        return Err(exit::USAGE);
    };
    if !is_host_pattern(&pattern) {
        eprintln!("sekisho: `{pattern}` is not an ssh host pattern");
        return Err(exit::USAGE);
    }
    let failed = |error: anyhow::Error| {
        eprintln!("sekisho: {error:#}");
        exit::FAILURE
    };
    let exe = std::env::current_exe()
        .context("cannot tell where this program is")
        .and_then(|exe| absolute(&exe))
        .map_err(failed)?;
    let mut command = vec![ssh_word(&exe.to_string_lossy())];
    if let Some(ca) = &ctx.ca {
        let ca = absolute(ca).map_err(failed)?;
        command.extend(["--ca".to_owned(), ssh_word(&ca.to_string_lossy())]);
    }
    if let Some(addr) = ctx.connect_to {
        command.extend(["--connect-to".to_owned(), ssh_word(&addr.to_string())]);
    }
    command.push("tunnel".to_owned());
    command.push(match proxy.as_ref().map(|p| p.port) {
        Some(port) if port != 443 => format!("%h:{port}"),
        _ => "%h".to_owned(),
    });
    let remembered = proxy
        .as_ref()
        .and_then(|p| cache.reach_for(p))
        .map(|reach| {
            let mut what = Vec::new();
            if let Some(file) = reach.ca_file.as_ref().filter(|_| ctx.ca.is_none()) {
                what.push(format!("trusts {}", file.display()));
            }
            if let Some(addr) = reach.connect_to.filter(|_| ctx.connect_to.is_none()) {
                what.push(format!("dials {addr}"));
            }
            what
        })
        .unwrap_or_default();
    let behind = proxy.map_or_else(|| "the proxy".to_owned(), |p| p.to_string());
    println!("# Paste this into ~/.ssh/config to reach the hosts behind {behind} with sekisho:");
    if !remembered.is_empty() {
        println!(
            "# (for them sekisho {}, as the login did)",
            remembered.join(" and ")
        );
    }
    println!("Host {pattern}");
    println!("    ProxyCommand {}", command.join(" "));
    Ok(exit::OK)
}

/// The origin of the `login_url` in a refusal, if it names one.
fn login_origin(error: &tunnel::OpenError) -> Option<Origin> {
    let tunnel::OpenError::Refused {
        body: Some(body), ..
    } = error
    else {
        return None;
    };
    let url = url::Url::parse(body.login_url.as_deref()?).ok()?;
    Origin::parse(&url.origin().ascii_serialization()).ok()
}

/// Logs in (or refreshes) for `host`'s auth origin `auth` after the proxy refused `rejected`
/// (or no token), and remembers the host and how it was reached. Returns the new access token.
async fn login_for_tunnel(
    ctx: &Context,
    net: &Net,
    cache: &mut Cache,
    host: &Origin,
    auth: &Origin,
    rejected: Option<&Secret>,
    flags: &LoginFlags,
) -> Result<Secret, u8> {
    login::confirm(net, host, auth)
        .await
        .map_err(|e| login_failed(&e))?;
    let token = match login::fresh_token(net, cache, auth, rejected).await {
        Ok(Some(token)) => token,
        Ok(None) => {
            eprintln!("sekisho: {host} needs a login at {auth}");
            let tokens = login::run(net, auth, flow(flags), &env)
                .await
                .map_err(|e| login_failed(&e))?;
            eprintln!("Logged in to {auth} as {}.", tokens.user);
            let token = tokens.access_token.clone();
            cache.set_login(auth, tokens);
            cache.set_reach(auth, reach_of(net));
            token
        }
        Err(error) => {
            return Err(login_failed(&LoginError::Grant(error)));
        }
    };
    cache.remember_host(host, auth);
    ctx.save(cache)?;
    Ok(token)
}

async fn tunnel(
    ctx: &Context,
    host: &str,
    listen: Option<SocketAddr>,
    no_login: bool,
    flags: &LoginFlags,
) -> Result<u8, u8> {
    let host = Origin::parse(host).map_err(|e| fail(&e, exit::USAGE))?;
    // A token from the environment (CI jobs, scripts) goes as it is: no cache, no login.
    if let Some(token) = std::env::var("SEKISHO_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        let net = ctx.net_from_flags()?;
        let token = Secret::new(token);
        return match listen {
            Some(addr) => serve_listener(&net, &host, &token, addr).await,
            None => {
                let opened = tunnel::open(&net, &host, Some(token.expose()), None).await;
                if let Err(error) = &opened
                    && error.tunnel_error() == Some(TunnelError::NotLoggedIn)
                {
                    let why = error
                        .reason()
                        .unwrap_or_else(|| "the proxy gave no reason".to_owned());
                    eprintln!(
                        "sekisho: tunnel to {host}: the proxy refused the token in \
                         SEKISHO_TOKEN: {why}"
                    );
                    return Err(exit::TOKEN_REFUSED);
                }
                stdio(&net, &host, opened, Some(token), None).await
            }
        };
    }
    let mut cache = ctx.load();
    let net = ctx.net_for(&cache, &host)?;
    let known = cache.auth_for(&host);
    let mut token = None;
    if let Some(auth) = &known {
        let before = cache.clone();
        match login::fresh_token(&net, &mut cache, auth, None).await {
            Ok(fresh) => token = fresh,
            // The tunnel request says more about an unreachable proxy.
            Err(error) => warn(&error, "trying without a token"),
        }
        if cache != before {
            ctx.save(&cache)?;
        }
    }
    if let Some(addr) = listen {
        // Every connection opens its own tunnel with the token of now: log in first if needed.
        let token = match (token, &known) {
            (Some(token), _) => token,
            (None, _) if no_login => {
                eprintln!("sekisho: not logged in for {host} (run `sekisho login {host}`)");
                return Err(exit::NOT_LOGGED_IN);
            }
            (None, known) => {
                let auth = match known {
                    Some(auth) => auth.clone(),
                    None => login::discover(&net, &host)
                        .await
                        .map_err(|e| login_failed(&e))?,
                };
                login_for_tunnel(ctx, &net, &mut cache, &host, &auth, None, flags).await?
            }
        };
        return serve_listener(&net, &host, &token, addr).await;
    }
    let mut opened = tunnel::open(&net, &host, token.as_ref().map(Secret::expose), None).await;
    let mut auth = known;
    if let Err(error) = &opened
        && error.tunnel_error() == Some(TunnelError::NotLoggedIn)
        && !no_login
    {
        let origin = match login_origin(error).or(auth.clone()) {
            Some(origin) => origin,
            None => login::discover(&net, &host)
                .await
                .map_err(|e| login_failed(&e))?,
        };
        let fresh =
            login_for_tunnel(ctx, &net, &mut cache, &host, &origin, token.as_ref(), flags).await?;
        opened = tunnel::open(&net, &host, Some(fresh.expose()), None).await;
        token = Some(fresh);
        auth = Some(origin);
    }
    let login = auth.map(|auth| (ctx, auth, cache));
    stdio(&net, &host, opened, token, login).await
}

/// Joins an opened tunnel to stdin/stdout. With the login it came from, the stream's token is
/// renewed before it expires (an ssh session outlives a token). When the connection to the
/// proxy is lost under it (the replica it came by restarted), the stream is asked for again
/// through whatever replica answers. When it ends other than normally (cut by the proxy, the
/// proxy or the agent gone), says how in one sentence.
async fn stdio(
    net: &Net,
    host: &Origin,
    opened: Result<tunnel::Tunnel, tunnel::OpenError>,
    token: Option<Secret>,
    login: Option<(&Context, Origin, Cache)>,
) -> Result<u8, u8> {
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("sekisho: tunnel to {host}: {}", chain(&error));
            return Err(match (error.tunnel_error(), error.net_error()) {
                (Some(refusal), _) => exit::for_tunnel_error(refusal),
                (None, Some(cause)) => net_hint(cause),
                (None, None) => exit::PROXY_UNREACHABLE,
            });
        }
    };
    // The newest token, for asking for the stream again.
    let latest = std::sync::Mutex::new(token);
    let id = opened.stream_id.as_deref();
    let renewing = async {
        if let (Some(id), Some((ctx, auth, cache))) = (id, login) {
            renew_until_refused(ctx, net, host, id, &auth, cache, &latest).await;
        }
        std::future::pending::<()>().await
    };
    let mut splice = tunnel::Splice::new(tokio::io::stdin(), tokio::io::stdout());
    let session = async {
        let (mut io, mut resend, mut resumable) = (opened.io, Vec::new(), opened.resumable);
        loop {
            let spliced = splice.run(io, resend).await;
            if let Err(error) = &spliced
                && debugging()
            {
                eprintln!("sekisho: debug: the stream ended with: {}", chain(error));
            }
            // Ended from the far side: one sentence for how, from the proxy when it can be
            // asked.
            let token = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let token = token.as_ref().map(Secret::expose);
            let outcome = tunnel::ended(net, host, id, token, spliced).await;
            let lost = outcome == tunnel::Outcome::ProxyWentAway;
            let Some(id) = id.filter(|_| resumable && lost && splice.resumable()) else {
                return outcome;
            };
            match tunnel::resume(net, host, token, id, &splice).await {
                Ok((tunnel, again)) => {
                    if debugging() {
                        eprintln!(
                            "sekisho: debug: the connection to the proxy was lost; the stream was resumed"
                        );
                    }
                    (io, resend, resumable) = (tunnel.io, again, tunnel.resumable);
                }
                Err(error) => {
                    eprintln!(
                        "sekisho: the stream could not be resumed: {}",
                        chain(&error)
                    );
                    return outcome;
                }
            }
        }
    };
    let outcome = tokio::select! {
        outcome = session => outcome,
        () = renewing => unreachable!("renewing never ends"),
    };
    if let Some(message) = outcome.message() {
        eprintln!("sekisho: {message}");
    }
    match exit::for_outcome(&outcome) {
        exit::OK => Ok(exit::OK),
        code => Err(code),
    }
}

/// Whether `SEKISHO_DEBUG` asks for the details behind the sentences (error chains, as the
/// libraries word them).
fn debugging() -> bool {
    env("SEKISHO_DEBUG").is_some_and(|value| !value.is_empty() && value != "0")
}

/// Presents a fresh token for the stream shortly before the current one expires, for as long
/// as the login can be refreshed and the proxy takes it.
async fn renew_until_refused(
    ctx: &Context,
    net: &Net,
    host: &Origin,
    id: &str,
    auth: &Origin,
    mut cache: Cache,
    latest: &std::sync::Mutex<Option<Secret>>,
) {
    loop {
        let Some(expires_at) = cache.login(auth).map(|t| t.access_expires_at) else {
            return;
        };
        let renew_at = expires_at.saturating_sub(login::REFRESH_MARGIN.as_secs());
        let wait = Duration::from_secs(renew_at.saturating_sub(unix_now()).max(1));
        tokio::time::sleep(wait).await;
        let token = match login::fresh_token(net, &mut cache, auth, None).await {
            Ok(Some(token)) => token,
            Ok(None) | Err(_) => return,
        };
        let _ = ctx.save(&cache);
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        if let Err(error) = tunnel::renew(net, host, id, token.expose()).await {
            eprintln!(
                "sekisho: could not renew the tunnel's token: {}",
                chain(&error)
            );
            return;
        }
    }
}

/// `--listen`: a tunnel for every local connection, with `token`, until interrupted.
async fn serve_listener(
    net: &Net,
    host: &Origin,
    token: &Secret,
    addr: SocketAddr,
) -> Result<u8, u8> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| fail(&e, exit::FAILURE))?;
    let addr = listener.local_addr().unwrap_or(addr);
    eprintln!("sekisho: forwarding connections to {addr} through {host}");
    tunnel::serve_listener(net, host, Some(token.expose()), listener)
        .await
        .map(|()| exit::OK)
        .map_err(|e| fail(&e, exit::FAILURE))
}

/// An error and its causes, one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Prints the error and its causes on stderr (never stdout: that is ssh's), returns `code`.
fn fail(error: &(dyn std::error::Error + 'static), code: u8) -> u8 {
    eprintln!("sekisho: {}", chain(error));
    code
}

/// Prints a failure to talk to the proxy (or what it was part of) and what to do about it;
/// returns the exit code for `cause`.
fn fail_net(error: &(dyn std::error::Error + 'static), cause: &NetError) -> u8 {
    eprintln!("sekisho: {}", chain(error));
    net_hint(cause)
}

/// Prints what to do about a failure to talk to the proxy, when there is something to say;
/// returns its exit code.
fn net_hint(cause: &NetError) -> u8 {
    if let Some(hint) = cause.hint() {
        eprintln!("sekisho: {hint}");
    }
    exit::for_net_error(cause)
}

/// Prints a warning that changes nothing fatal.
fn warn(error: &(dyn std::error::Error + 'static), what_now: &str) {
    eprintln!("sekisho: warning: {}; {what_now}", chain(error));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(human(1), "1 second");
        assert_eq!(human(59), "59 seconds");
        assert_eq!(human(14 * 60 + 50), "15 minutes");
        assert_eq!(human(60 * 60), "60 minutes");
        assert_eq!(human(12 * 3600), "12 hours");
        assert_eq!(human(3 * 86_400), "3 days");
        assert_eq!(
            expiry(1_900_000_600, 1_900_000_000),
            "valid for 10 minutes (until 2030-03-17T17:56:40Z)"
        );
        assert!(expiry(1_900_000_000, 1_900_000_120).starts_with("expired 2 minutes ago"));
    }

    #[test]
    fn the_default_pattern_is_every_host_of_the_proxys_domain() {
        assert_eq!(
            default_pattern("ssh.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            default_pattern("example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(default_pattern("localhost").as_deref(), Some("*.localhost"));
        assert_eq!(default_pattern("127.0.0.1"), None);
        assert_eq!(default_pattern("[::1]"), None);
        assert!(is_host_pattern("*.example.com"));
        assert!(!is_host_pattern("a b"));
        assert!(!is_host_pattern("a\nProxyCommand evil"));
        assert!(!is_host_pattern(""));
    }

    #[test]
    fn words_in_the_proxy_command_survive_the_shell_and_ssh_expansion() {
        assert_eq!(ssh_word("/usr/bin/sekisho"), "/usr/bin/sekisho");
        assert_eq!(ssh_word("/home/a b/sekisho"), "'/home/a b/sekisho'");
        assert_eq!(ssh_word("/x/it's"), "'/x/it'\\''s'");
        assert_eq!(ssh_word("/x/100%"), "'/x/100%%'");
        assert_eq!(ssh_word("127.0.0.1:8443"), "127.0.0.1:8443");
    }

    #[test]
    fn the_login_origin_is_taken_from_the_refusals_login_url() {
        let refused = |url: Option<&str>| tunnel::OpenError::Refused {
            error: TunnelError::NotLoggedIn,
            body: Some(sekisho_wire::tunnel::ErrorBody {
                error: "unauthorized".into(),
                message: "sign in first".into(),
                login_url: url.map(str::to_owned),
            }),
        };
        assert_eq!(
            login_origin(&refused(Some(
                "https://auth.example.com:8443/.sekisho/login?rd=https%3A%2F%2Fx"
            ))),
            Some(Origin::parse("auth.example.com:8443").unwrap())
        );
        assert_eq!(login_origin(&refused(None)), None);
        assert_eq!(
            login_origin(&refused(Some("http://auth.example.com/"))),
            None
        );
        assert_eq!(login_origin(&refused(Some("not a url"))), None);
    }
}
