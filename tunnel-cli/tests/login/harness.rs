//! The site every login test runs against: devidp, an echo upstream behind a `bearer: true`
//! route, a TCP echo server behind a tunnel route (the proxy dials it), the proxy in-process
//! with identity on a port chosen before start (devidp must know the callback URL first), a
//! throwaway CA, and the built `sekisho` binary with its own config directory, run with `--ca`
//! and `--connect-to` and `SEKISHO_BROWSER=none`, its stderr read line by line so a test can
//! take the URL it prints to the browser.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use sekisho_cli::net::{Net, Origin};
use sekisho_site::Setup;
pub(crate) use sekisho_testkit::echoed;
use sekisho_testkit::{Browser, EchoUpstream, Idp, TcpEcho, login_with_browser};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// Every wait of a test ends within this.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

pub(crate) const APP: &str = "app.sekisho.test";
pub(crate) const AUTH: &str = "auth.sekisho.test";
/// The host of the proxy's tunnel route (to [`Site::echo`]); no HTTP route serves it.
pub(crate) const SSH: &str = "ssh.sekisho.test";
pub(crate) const ALICE: &str = "alice@uniqe.example";
const PASSWORD: &str = "password";

/// Everything a test talks to. Dropping it stops the proxy, the upstream and devidp.
pub(crate) struct Site {
    // Dropped first (its shutdown starts before the parts behind it stop), and before the
    // directory its files are in.
    _proxy: sekisho_site::Proxy,
    pub(crate) port: u16,
    pub(crate) idp: Idp,
    leaf_pem: String,
    ca_file: PathBuf,
    /// The proxy's HTTPS address.
    pub(crate) proxy_addr: SocketAddr,
    /// `XDG_CONFIG_HOME` of the `sekisho` runs.
    pub(crate) config_home: PathBuf,
    net: Net,
    /// The target of the tunnel route for [`SSH`].
    pub(crate) echo: TcpEcho,
    _upstream: EchoUpstream,
    _dir: tempfile::TempDir,
}

impl Site {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let setup =
            Setup::new("sekisho CLI test CA", AUTH, &[APP, AUTH, SSH], |idp, _| idp).await?;
        let upstream = EchoUpstream::start("app").await?;
        let echo = TcpEcho::start().await?;
        let config = format!(
            "{head}upstreams:
  app: {{endpoints: ['http://{upstream}']}}
identity:
  auth_host: {AUTH}
  dangerous_allow_http_issuers: true
  providers:
{devidp}policies:
  staff:
    allow: [{{group: staff}}]
hosts:
  - host: {APP}
    policy: staff
    default: app
    paths:
      - {{path: /api, type: Prefix, upstream: app, bearer: true}}
tunnels:
  - {{host: {SSH}, policy: staff, target: '{echo}'}}
",
            head = setup.head(1),
            devidp = setup.devidp_provider(),
            upstream = upstream.addr,
            echo = echo.addr,
        );
        let proxy = setup.start_proxy(&config)?;
        let net = Net::new(Some(&setup.ca_file), Some(proxy.addr()))?;
        let config_home = setup.dir.path().join("config");
        Ok(Self {
            port: setup.port,
            idp: setup.idp,
            leaf_pem: setup.leaf_pem,
            ca_file: setup.ca_file,
            proxy_addr: proxy.addr(),
            config_home,
            net,
            echo,
            _upstream: upstream,
            _proxy: proxy,
            _dir: setup.dir,
        })
    }

    /// `https://<host>:<port>`.
    pub(crate) fn origin(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// `https://<host>:<port><path>`.
    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        format!("{}{path}", self.origin(host))
    }

    /// The token cache's directory.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.config_home.join("sekisho")
    }

    /// The cache file, as JSON.
    pub(crate) fn cache(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.cache_dir().join("tokens.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// The cached tokens of the login at the auth host.
    pub(crate) fn cached_login(&self) -> anyhow::Result<serde_json::Value> {
        let cache = self.cache()?;
        let login = &cache["logins"][self.origin(AUTH)];
        ensure!(
            login.is_object(),
            "no login for {} in {cache:#}",
            self.origin(AUTH)
        );
        Ok(login.clone())
    }

    /// `sekisho ARGS` as the tests run it, dialing the proxy for every host.
    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut command = sekisho(&self.config_home)?;
        command
            .arg("--ca")
            .arg(&self.ca_file)
            .arg("--connect-to")
            .arg(self.proxy_addr.to_string())
            .args(args);
        Ok(command)
    }

    /// Starts `sekisho ARGS`; its stderr can be read line by line while it runs.
    pub(crate) fn spawn(&self, args: &[&str]) -> anyhow::Result<Run> {
        self.spawn_with_input(args, None)
    }

    /// Starts `sekisho ARGS` with `input` (then end of file) on its stdin.
    pub(crate) fn spawn_with_input(
        &self,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> anyhow::Result<Run> {
        Run::start(self.command(args)?, &args.join(" "), input)
    }

    /// Runs `sekisho ARGS` to its end.
    pub(crate) async fn run(&self, args: &[&str]) -> anyhow::Result<Finished> {
        self.spawn(args)?.finish().await
    }

    /// A headless Chromium that trusts the site's certificate and resolves the test hosts.
    pub(crate) async fn browser(&self) -> anyhow::Result<Browser> {
        Ok(Browser::trusting(&self.leaf_pem).await?)
    }

    /// Opens `url`, logs in as alice at devidp if it asks (a browser with a session at devidp
    /// or on the auth host goes straight on), and waits until the browser is where `arrived`
    /// says.
    pub(crate) async fn browse_and_log_in(
        &self,
        browser: &Browser,
        url: &str,
        arrived: impl Fn(&sekisho_testkit::Url) -> bool,
    ) -> anyhow::Result<sekisho_testkit::Url> {
        browse_and_log_in(browser, &self.idp, url, arrived).await
    }

    /// One HTTPS request to the proxy (redirects are not followed).
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let url = url::Url::parse(url)?;
        let origin = Origin::parse(&url.origin().ascii_serialization())?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut request = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned())))?;
        let response = self.net.exchange(&origin, request).await?;
        Ok(Reply {
            status: response.status(),
            location: response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: String::from_utf8_lossy(response.body()).into_owned(),
        })
    }

    /// `POST` of a form to the auth host's token endpoint.
    pub(crate) async fn token(&self, form: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            Method::POST,
            &self.url(AUTH, "/.sekisho/cli/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            &body,
        )
        .await
    }
}

/// Opens `url`, logs in as alice at `idp` if it asks (a browser with a session at devidp or on
/// the auth host goes straight on), and waits until the browser is where `arrived` says.
pub(crate) async fn browse_and_log_in(
    browser: &Browser,
    idp: &Idp,
    url: &str,
    arrived: impl Fn(&sekisho_testkit::Url) -> bool,
) -> anyhow::Result<sekisho_testkit::Url> {
    browser.goto(url).await?;
    let idp_port = idp.port();
    let at = browser
        .wait_for_url(|u| u.port() == Some(idp_port) || arrived(u), LIMIT)
        .await?;
    if at.port() == Some(idp_port) {
        login_with_browser(browser, ALICE, PASSWORD).await?;
    }
    Ok(browser.wait_for_url(&arrived, LIMIT).await?)
}

/// A proxy answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (location {:?}): {}",
            self.status, self.location, self.body
        )
    }
}

impl Reply {
    pub(crate) fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {self}"))
    }
}

/// A running `sekisho`.
pub(crate) struct Run {
    args: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    /// The threads that read stdout and stderr; each ends when its pipe closes.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a `sekisho` run ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Starts `command` (a [`sekisho`] with its arguments, `args` for messages) with `input`
    /// (then end of file) on its stdin; its stderr can be read line by line while it runs.
    pub(crate) fn start(
        mut command: Command,
        args: &str,
        input: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        command.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().context("sekisho starts")?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            std::thread::spawn(move || {
                use std::io::Write as _;
                let _ = stdin.write_all(&input);
            });
        }
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("piped");
        let all = Arc::new(Mutex::new(String::new()));
        let seen = all.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                seen.lock()
                    .expect("not poisoned")
                    .push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut stdout = child.stdout.take().expect("piped");
        let out = Arc::new(Mutex::new(String::new()));
        let written = out.clone();
        let stdout_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            written.lock().expect("not poisoned").push_str(&text);
        });
        Ok(Run {
            args: args.to_owned(),
            child,
            lines,
            stderr: all,
            stdout: out,
            readers: vec![stderr_reader, stdout_reader],
        })
    }

    /// Waits for a line on stderr that contains `text`; returns the first `https://` URL in it.
    pub(crate) async fn url_after(&mut self, text: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let line = match timeout(deadline - Instant::now(), self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => bail!(
                    "`sekisho {}` ended without printing `{text}`:\n{}",
                    self.args,
                    self.stderr.lock().expect("not poisoned")
                ),
                Err(_) => bail!(
                    "`sekisho {}` printed no `{text}` within {LIMIT:?}:\n{}",
                    self.args,
                    self.stderr.lock().expect("not poisoned")
                ),
            };
            if line.contains(text)
                && let Some(url) = line
                    .split_whitespace()
                    .find(|word| word.starts_with("https://"))
            {
                return Ok(url.to_owned());
            }
        }
    }

    /// Waits for a line on stderr that contains `text`, and returns it.
    pub(crate) async fn line_with(&mut self, text: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            match timeout(deadline - Instant::now(), self.lines.recv()).await {
                Ok(Some(line)) if line.contains(text) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "`sekisho {}` ended without printing `{text}`:\n{}",
                    self.args,
                    self.stderr()
                ),
                Err(_) => bail!(
                    "`sekisho {}` printed no `{text}` within {LIMIT:?}:\n{}",
                    self.args,
                    self.stderr()
                ),
            }
        }
    }

    /// What stderr said so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    /// Waits (bounded) for the process to end.
    pub(crate) async fn finish(mut self) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "`sekisho {}` did not end within {LIMIT:?}:\n{}",
                    self.args,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The reader threads end with the pipes, which close with the process: once they
        // have, everything it wrote has been read.
        let readers = std::mem::take(&mut self.readers);
        timeout(
            LIMIT,
            tokio::task::spawn_blocking(move || {
                for reader in readers {
                    let _ = reader.join();
                }
            }),
        )
        .await
        .with_context(|| format!("`sekisho {}` left its output pipes open", self.args))??;
        Ok(Finished {
            status,
            stdout: self.stdout.lock().expect("not poisoned").clone(),
            stderr: self.stderr(),
        })
    }
}

/// This checkout's `sekisho`, with `config_home` as its `XDG_CONFIG_HOME`, its output piped,
/// `SEKISHO_BROWSER=none` (it prints the login URL), on a desktop (so that `login` picks the
/// browser flow unless told otherwise), and none of the variables that would change what the
/// test says.
pub(crate) fn sekisho(config_home: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(binary()?);
    command
        .env("XDG_CONFIG_HOME", config_home)
        .env("SEKISHO_BROWSER", "none")
        .env("DISPLAY", ":99")
        .env_remove("SSH_CONNECTION")
        .env_remove("SSH_TTY")
        .env_remove("SEKISHO_CA_FILE")
        .env_remove("SEKISHO_CONNECT_TO")
        .env_remove("SEKISHO_TOKEN")
        .env_remove("SEKISHO_DEV_CA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// This checkout's `sekisho`, copied once per test process out of the target directory.
///
/// `CARGO_BIN_EXE_sekisho` is `target/debug/sekisho`, and a target directory shared by several
/// checkouts (as this project's worktrees do) has one such file for all of them: a build in
/// another checkout replaces it while the tests run. The copy is taken at the first use and
/// checked to be a `sekisho` with the commands these tests run.
pub(crate) fn binary() -> anyhow::Result<&'static Path> {
    static COPY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let copy = COPY.get_or_init(|| {
        let copy = || -> anyhow::Result<PathBuf> {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sekisho-cli-login");
            std::fs::create_dir_all(&dir)?;
            let tag =
                ring::digest::digest(&ring::digest::SHA256, env!("CARGO_MANIFEST_DIR").as_bytes());
            let name = format!(
                "sekisho-{:02x}{:02x}{:02x}{:02x}",
                tag.as_ref()[0],
                tag.as_ref()[1],
                tag.as_ref()[2],
                tag.as_ref()[3]
            );
            let path = dir.join(&name);
            let partial = dir.join(format!("{name}.{}", std::process::id()));
            std::fs::copy(env!("CARGO_BIN_EXE_sekisho"), &partial)?;
            std::fs::rename(&partial, &path)?;
            let help = Command::new(&path).arg("--help").output()?;
            let help = String::from_utf8_lossy(&help.stdout);
            ensure!(
                help.contains("ssh-config") && help.contains("login"),
                "{} is not this checkout's sekisho (another checkout sharing the target \
                 directory rebuilt it?); build again and rerun:\n{help}",
                env!("CARGO_BIN_EXE_sekisho")
            );
            Ok(path)
        };
        copy().map_err(|e| format!("{e:#}"))
    });
    match copy {
        Ok(path) => Ok(path),
        Err(error) => bail!("{error}"),
    }
}

/// Whether `path` has exactly `mode` as its permission bits.
pub(crate) fn mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.mode() & 0o777)
}
