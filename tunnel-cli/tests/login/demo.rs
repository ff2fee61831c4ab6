//! `sekisho` against the local demo: the configuration `scripts/run-local.sh` serves
//! (`deploy/examples/local.yaml`, read from the repository) with only its ports, devidp's issuer
//! and the tunnel's target changed, the proxy keeping its development CA in a temporary
//! directory. As a newcomer would: no `--connect-to` (the CLI resolves `localhost` and
//! `*.localhost` itself), the CA given once, to `login`, and then the `ProxyCommand` that
//! `ssh-config` prints, unchanged. And each way the demo can be out of reach, in words and with
//! its own exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, ensure};
use base64::Engine as _;
use sekisho_cli::net::{Net, Origin};
use sekisho_testkit::{Browser, BrowserOptions, Idp, TcpEcho, free_port, spki_sha256_base64};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{ALICE, Finished, LIMIT, Run, binary, browse_and_log_in, sekisho};

/// The demo's hosts, as `deploy/examples/local.yaml` names them.
const AUTH: &str = "auth.localhost";
const SSH: &str = "ssh.localhost";

/// The demo's configuration with the proxy's HTTPS port, an ephemeral HTTP and admin port,
/// devidp's `issuer` and the tunnel's `target` in place of the fixed ones. Each replaced text
/// must be there exactly once: when the example changes, this says what to look at.
fn demo_config(port: u16, issuer: &str, target: SocketAddr) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/local.yaml");
    let mut config =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (from, to) in [
        ("https: 127.0.0.1:8443", format!("https: 127.0.0.1:{port}")),
        ("http: 127.0.0.1:8080", "http: 127.0.0.1:0".to_owned()),
        ("admin: 127.0.0.1:9901", "admin: 127.0.0.1:0".to_owned()),
        ("issuer: http://127.0.0.1:9000", format!("issuer: {issuer}")),
        ("target: \"127.0.0.1:22\"", format!("target: \"{target}\"")),
    ] {
        ensure!(
            config.matches(from).count() == 1,
            "{} no longer has `{from}` once; update this test",
            path.display()
        );
        config = config.replacen(from, &to, 1);
    }
    Ok(config)
}

/// `sekisho-proxy` in this process, shut down (without waiting) when dropped.
struct DemoProxy(Option<sekisho_proxy::Running>);

impl DemoProxy {
    fn running(&self) -> &sekisho_proxy::Running {
        self.0.as_ref().expect("runs until dropped")
    }
}

impl Drop for DemoProxy {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}

/// The demo, running.
struct Demo {
    // Dropped first, before the parts behind it stop.
    _proxy: DemoProxy,
    /// The HTTPS port (8443 in the demo).
    port: u16,
    /// The plain-HTTP port that redirects to HTTPS (8080 in the demo).
    http_port: u16,
    idp: Idp,
    /// The development CA's certificate, which the proxy says it keeps.
    ca_file: PathBuf,
    /// Where the proxy keeps it (`SEKISHO_DEV_CA_DIR` for the CLI, to find it).
    dev_ca_dir: PathBuf,
    /// The tunnel's target, in place of this machine's sshd.
    echo: TcpEcho,
    /// `XDG_CONFIG_HOME` of the `sekisho` runs.
    config_home: PathBuf,
    dir: tempfile::TempDir,
}

/// Whether the proxy could not start because its port was taken.
fn port_taken(error: &sekisho_proxy::StartError) -> bool {
    matches!(
        error,
        sekisho_proxy::StartError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

impl Demo {
    /// Starts the demo. The proxy's port is chosen before devidp starts (devidp must know the
    /// callback URL), so something else can take it in between: then it starts again, on
    /// another port.
    async fn start() -> anyhow::Result<Self> {
        // Bound first, so that the port chosen for the proxy cannot be the target's.
        let echo = TcpEcho::start().await?;
        for _ in 0..3 {
            let port = free_port()?;
            let idp = Idp::builder()
                .redirect_uri(format!("https://{AUTH}:{port}/.sekisho/callback"))
                .start()
                .await
                .context("devidp starts")?;
            let dir = tempfile::tempdir()?;
            let config = demo_config(port, idp.issuer(), echo.addr)?;
            let config_path = dir.path().join("local.yaml");
            std::fs::write(&config_path, &config)?;
            // The example names its client secret file relative to itself.
            let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
            std::os::unix::fs::symlink(
                examples.join("devidp-client-secret"),
                dir.path().join("devidp-client-secret"),
            )?;
            let dev_ca_dir = dir.path().join("dev-ca");
            let started = sekisho_proxy::start(sekisho_proxy::Options {
                config_path: Some(config_path),
                access_log: Some(Box::new(std::io::sink())),
                handle_signals: false,
                dev_ca_dir: Some(dev_ca_dir.clone()),
                kubernetes: None,
            });
            let running = match started {
                Err(error) if port_taken(&error) => continue,
                started => started
                    .map_err(|error| anyhow!("{}", sekisho_proxy::error_chain(&error)))
                    .with_context(|| {
                        format!("the proxy starts with this configuration:\n{config}")
                    })?,
            };
            let proxy = DemoProxy(Some(running));
            let running = proxy.running();
            ensure!(running.https_addr.port() == port, "{}", running.https_addr);
            let http_port = running
                .http_addr
                .context("the demo listens on http")?
                .port();
            let ca_file = running
                .dev_ca_file
                .clone()
                .context("the proxy says where its development CA is")?;
            ensure!(
                ca_file.starts_with(&dev_ca_dir),
                "{} is not in {}",
                ca_file.display(),
                dev_ca_dir.display()
            );
            return Ok(Self {
                _proxy: proxy,
                port,
                http_port,
                idp,
                ca_file,
                dev_ca_dir,
                echo,
                config_home: dir.path().join("config"),
                dir,
            });
        }
        anyhow::bail!("something else took the port chosen for the proxy, three times")
    }

    /// `https://<host>:<port>`.
    fn origin(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// `sekisho ARGS`, exactly as given (no `--ca`, no `--connect-to`).
    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut command = sekisho(&self.config_home)?;
        command.args(args);
        Ok(command)
    }

    fn spawn(
        &self,
        command: Command,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> anyhow::Result<Run> {
        Run::start(command, &args.join(" "), input)
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<Finished> {
        self.spawn(self.command(args)?, args, None)?.finish().await
    }

    /// The certificate the proxy serves now (a new one each start), as PEM.
    async fn leaf_pem(&self) -> anyhow::Result<String> {
        let net = Net::new(Some(&self.ca_file), None)?;
        let stream = net
            .dial(&Origin::parse(&format!("localhost:{}", self.port))?)
            .await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the proxy sent a certificate")?;
        let base64 = base64::engine::general_purpose::STANDARD.encode(leaf.as_ref());
        let lines: Vec<&str> = base64
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        Ok(format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ))
    }

    /// A headless Chromium that trusts the proxy's certificate and has `*.localhost` on
    /// loopback.
    async fn browser(&self) -> anyhow::Result<Browser> {
        Ok(Browser::start(BrowserOptions {
            spki_hashes: vec![spki_sha256_base64(&self.leaf_pem().await?)?],
            host_rules: vec!["*.localhost".to_owned()],
        })
        .await?)
    }
}

/// No library's or protocol's own words in what a person reads.
fn assert_in_words(finished: &Finished) {
    for jargon in [
        "rustls",
        "InvalidContentType",
        "corrupt message",
        "UnknownIssuer",
        "InvalidCertificate",
        "docs.rs",
        "could not be reached",
    ] {
        assert!(!finished.stderr.contains(jargon), "{jargon}: {finished}");
    }
    assert!(finished.stdout.is_empty(), "{finished}");
}

#[tokio::test]
async fn the_run_local_configuration_logs_in_once_with_the_ca_and_ssh_config_reaches_ssh_localhost()
-> anyhow::Result<()> {
    let demo = Demo::start().await?;
    let proxy = format!("localhost:{}", demo.port);
    let ca = demo.ca_file.to_string_lossy().into_owned();

    // The login the banner prints, with the CA the proxy logged: in a browser (this one only
    // prints the URL), through the dev IdP, back to the CLI's loopback listener.
    let args = ["login", "--ca", ca.as_str(), proxy.as_str()];
    let mut login = demo.spawn(demo.command(&args)?, &args, None)?;
    let url = login.url_after("/.sekisho/cli/authorize?").await?;
    assert!(
        url.starts_with(&format!("{}/.sekisho/cli/authorize?", demo.origin(AUTH))),
        "the browser goes to the demo's auth host: {url}"
    );
    let browser = demo.browser().await?;
    browse_and_log_in(&browser, &demo.idp, &url, |u| {
        u.host_str() == Some("127.0.0.1") && u.path() == "/callback"
    })
    .await?;
    let finished = login.finish().await?;
    assert!(finished.status.success(), "{finished}");
    assert!(
        finished
            .stderr
            .contains(&format!("Logged in to {} as {ALICE}", demo.origin(AUTH))),
        "{finished}"
    );

    // The cache remembers the CA for the proxy; nothing to dial instead of localhost.
    let cache: serde_json::Value = serde_json::from_slice(&std::fs::read(
        demo.config_home.join("sekisho/tokens.json"),
    )?)?;
    let canonical_ca = std::fs::canonicalize(&demo.ca_file)?;
    assert_eq!(
        cache["reach"][demo.origin(AUTH)],
        serde_json::json!({ "ca_file": canonical_ca }),
        "{cache:#}"
    );
    let status = demo.run(&["status"]).await?;
    assert!(
        status.status.success() && status.stdout.contains(ALICE),
        "{status}"
    );

    // `ssh-config` without options: every *.localhost host, through this binary, with the
    // proxy's port and nothing else.
    let block = demo.run(&["ssh-config"]).await?;
    assert!(block.status.success(), "{block}");
    let lines: Vec<&str> = block.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a comment, what is remembered, Host, ProxyCommand: {block}"
    );
    assert!(
        lines[0].starts_with("# Paste this into ~/.ssh/config"),
        "{block}"
    );
    assert!(
        lines[1].contains(&format!("trusts {}", canonical_ca.display())),
        "{block}"
    );
    assert_eq!(lines[2], "Host *.localhost", "{block}");
    let words: Vec<&str> = lines[3].split_whitespace().collect();
    let exe = std::fs::canonicalize(binary()?)?;
    assert_eq!(
        words,
        [
            "ProxyCommand",
            &exe.to_string_lossy(),
            "tunnel",
            &format!("%h:{}", demo.port)
        ],
        "{block}"
    );

    // ssh runs the ProxyCommand with %h = ssh.localhost: the stream reaches the tunnel's target
    // and comes back whole, longer than one copy buffer, with nothing on stderr.
    let args: Vec<String> = words[2..]
        .iter()
        .map(|word| word.replace("%h", SSH))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stream: String = std::iter::once("SSH-2.0-OpenSSH_9.2\r\n".to_owned())
        .chain((0..20_000).map(|i| format!("line {i}\n")))
        .collect();
    let tunnel = demo
        .spawn(
            demo.command(&args)?,
            &args,
            Some(stream.clone().into_bytes()),
        )?
        .finish()
        .await?;
    assert!(tunnel.status.success(), "{tunnel}");
    assert!(
        tunnel.stdout == stream,
        "the stream comes back whole: {} of {} bytes, stderr: {}",
        tunnel.stdout.len(),
        stream.len(),
        tunnel.stderr
    );
    assert!(tunnel.stderr.is_empty(), "{tunnel}");
    assert_eq!(demo.echo.connections(), 1);

    // The same host for a tool that speaks TCP: `--listen` on a port the kernel picks.
    let host = format!("{SSH}:{}", demo.port);
    let args = ["tunnel", "--listen", "127.0.0.1:0", host.as_str()];
    let mut listening = demo.spawn(demo.command(&args)?, &args, None)?;
    let line = listening.line_with("forwarding connections to").await?;
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .with_context(|| format!("no address in {line:?}"))?;
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.write_all(b"both ways\n").await?;
    socket.shutdown().await?;
    let mut echoed = Vec::new();
    tokio::time::timeout(LIMIT, socket.read_to_end(&mut echoed)).await??;
    assert_eq!(echoed, b"both ways\n", "{}", listening.stderr());
    assert_eq!(demo.echo.connections(), 2);
    Ok(())
}

#[tokio::test]
async fn each_way_the_demo_is_out_of_reach_is_said_in_words_with_its_own_exit_code()
-> anyhow::Result<()> {
    let demo = Demo::start().await?;
    let proxy = format!("localhost:{}", demo.port);
    let ca = demo.ca_file.to_string_lossy().into_owned();

    // No --ca: the certificate is signed by the development CA, and the CLI finds it where
    // the proxy keeps it and says how to trust it.
    let mut command = demo.command(&["login", &proxy])?;
    command.env("SEKISHO_DEV_CA_DIR", &demo.dev_ca_dir);
    let untrusted = demo
        .spawn(command, &["login", &proxy], None)?
        .finish()
        .await?;
    assert_eq!(untrusted.status.code(), Some(16), "{untrusted}");
    for words in [
        "the certificate of localhost is signed by the local demo's development CA",
        &format!("--ca {ca}"),
        &format!("SEKISHO_CA_FILE={ca}"),
    ] {
        assert!(untrusted.stderr.contains(words), "{words}: {untrusted}");
    }
    assert_in_words(&untrusted);

    // Where this machine keeps no development CA: which name, and what fixes it.
    let elsewhere = demo.dir.path().join("elsewhere");
    let mut command = demo.command(&["login", &proxy])?;
    command
        .env("SEKISHO_DEV_CA_DIR", &elsewhere)
        .env("USER", "sekisho-cli-test-nobody");
    let untrusted = demo
        .spawn(command, &["login", &proxy], None)?
        .finish()
        .await?;
    assert_eq!(untrusted.status.code(), Some(16), "{untrusted}");
    for words in [
        "the certificate of localhost is not signed by a certificate authority this machine \
         trusts",
        "--ca FILE (or SEKISHO_CA_FILE=FILE)",
        "~/.local/state/sekisho/dev-ca/ca.pem",
    ] {
        assert!(untrusted.stderr.contains(words), "{words}: {untrusted}");
    }
    assert_in_words(&untrusted);

    // The demo's plain-HTTP port (8080 in run-local.sh).
    let http = format!("localhost:{}", demo.http_port);
    let plain = demo.run(&["login", "--ca", &ca, &http]).await?;
    assert_eq!(plain.status.code(), Some(17), "{plain}");
    assert!(
        plain.stderr.contains(&format!(
            "port {} speaks plain HTTP, not HTTPS",
            demo.http_port
        )),
        "{plain}"
    );
    assert_in_words(&plain);

    // A name that does not resolve (`.invalid` never does).
    let nowhere = format!("sekisho.invalid:{}", demo.port);
    let unresolved = demo.run(&["login", "--ca", &ca, &nowhere]).await?;
    assert_eq!(unresolved.status.code(), Some(18), "{unresolved}");
    assert!(
        unresolved
            .stderr
            .contains("the name sekisho.invalid does not resolve"),
        "{unresolved}"
    );
    assert_in_words(&unresolved);

    // A port nothing listens on: both loopback addresses of localhost are named.
    let closed = free_port()?;
    let refused = demo
        .run(&["login", "--ca", &ca, &format!("localhost:{closed}")])
        .await?;
    assert_eq!(refused.status.code(), Some(19), "{refused}");
    assert!(
        refused.stderr.contains(&format!("127.0.0.1:{closed}"))
            && refused.stderr.contains("connection refused"),
        "{refused}"
    );
    assert_in_words(&refused);

    // A token from the environment that the proxy refuses: named as such, with the proxy's
    // reason, and no login tried.
    let host = format!("{SSH}:{}", demo.port);
    let args = ["tunnel", "--ca", ca.as_str(), host.as_str()];
    let mut command = demo.command(&args)?;
    command.env("SEKISHO_TOKEN", "not-a-token");
    let token = demo
        .spawn(command, &args, Some(b"hello\n".to_vec()))?
        .finish()
        .await?;
    assert_eq!(token.status.code(), Some(20), "{token}");
    let said = format!(
        "sekisho: tunnel to https://{host}: the proxy refused the token in SEKISHO_TOKEN: "
    );
    let reason = token
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix(&said))
        .with_context(|| format!("no `{said}` in {token}"))?;
    assert!(!reason.trim().is_empty(), "{token}");
    assert!(!token.stderr.contains("needs a login"), "{token}");
    assert_in_words(&token);
    assert_eq!(demo.echo.connections(), 0);
    Ok(())
}
