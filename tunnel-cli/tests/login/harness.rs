//! The site every login test runs against: devidp, an echo upstream behind a `bearer: true`
//! route, a TCP echo server behind a tunnel route (the proxy dials it), the proxy in-process
//! with identity on a port chosen before start (devidp must know the callback URL first), a
//! throwaway CA, and the built `sekisho` binary with its own config directory, run with `--ca`
//! and `--connect-to` and `SEKISHO_BROWSER=none`, its stderr read line by line so a test can
//! take the URL it prints to the browser.

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sekisho_cli::net::{Net, Origin};
use sekisho_testkit::{Browser, BrowserOptions, Idp, free_port, login_with_browser};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
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
const CLIENT_SECRET: &str = "sekisho-dev-secret";

/// Everything a test talks to. Dropping it stops the proxy, the upstream and devidp.
pub(crate) struct Site {
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
    running: Option<sekisho_proxy::Running>,
    _dir: tempfile::TempDir,
}

impl Drop for Site {
    /// Starts the shutdown without waiting: the test's runtime may be the one on this thread.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}

impl Site {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let idp = Idp::builder()
            .redirect_uri(format!("https://{AUTH}:{port}/.sekisho/callback"))
            .start()
            .await
            .context("devidp starts")?;
        let dir = tempfile::tempdir()?;
        let file = |name: &str, contents: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, contents)?;
            Ok(path)
        };
        let (ca_pem, leaf_pem, key_pem) = pki(&[APP, AUTH, SSH])?;
        let ca_file = file("ca.pem", &ca_pem)?;
        let cert = file("site.crt", &leaf_pem)?;
        let key = file("site.key", &key_pem)?;
        let client_secret = file("client-secret", CLIENT_SECRET)?;
        let upstream = EchoUpstream::start().await?;
        let echo = TcpEcho::start().await?;
        let config = format!(
            "listen:
  https: 127.0.0.1:{port}
  admin: 127.0.0.1:0
workers: 1
tls:
  certificates:
    - {{cert: '{cert}', key: '{key}'}}
upstreams:
  app: {{endpoints: ['http://{upstream}']}}
identity:
  auth_host: {AUTH}
  dangerous_allow_http_issuers: true
  providers:
    - name: devidp
      display_name: devidp
      kind: generic
      issuer: '{issuer}'
      client_id: sekisho
      client_secret_file: '{client_secret}'
      scopes: [openid, email, profile, groups]
policies:
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
            cert = cert.display(),
            key = key.display(),
            upstream = upstream.addr,
            echo = echo.addr,
            issuer = idp.issuer(),
            client_secret = client_secret.display(),
        );
        let config_path = file("sekisho.yaml", &config)?;
        let running = sekisho_proxy::start(sekisho_proxy::Options {
            config_path: Some(config_path),
            access_log: Some(Box::new(std::io::sink())),
            handle_signals: false,
            dev_ca_dir: None,
        })
        .map_err(|error| anyhow!("{}", sekisho_proxy::error_chain(&error)))
        .with_context(|| format!("the proxy starts with this configuration:\n{config}"))?;
        ensure!(
            running.https_addr.port() == port,
            "the proxy listens on {} instead of the configured port {port}",
            running.https_addr
        );
        let net = Net::new(Some(&ca_file), Some(running.https_addr))?;
        let config_home = dir.path().join("config");
        Ok(Self {
            port,
            idp,
            leaf_pem,
            ca_file,
            proxy_addr: running.https_addr,
            config_home,
            net,
            echo,
            _upstream: upstream,
            running: Some(running),
            _dir: dir,
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
        let mut command = Command::new(binary()?);
        command
            .arg("--ca")
            .arg(&self.ca_file)
            .arg("--connect-to")
            .arg(self.proxy_addr.to_string())
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("SEKISHO_BROWSER", "none")
            // A desktop, so that `login` picks the browser flow unless told otherwise.
            .env("DISPLAY", ":99")
            .env_remove("SSH_CONNECTION")
            .env_remove("SSH_TTY")
            .env_remove("SEKISHO_CA_FILE")
            .env_remove("SEKISHO_CONNECT_TO")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        let mut command = self.command(args)?;
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
        std::thread::spawn(move || {
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
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            written.lock().expect("not poisoned").push_str(&text);
        });
        Ok(Run {
            args: args.join(" "),
            child,
            lines,
            stderr: all,
            stdout: out,
        })
    }

    /// Runs `sekisho ARGS` to its end.
    pub(crate) async fn run(&self, args: &[&str]) -> anyhow::Result<Finished> {
        self.spawn(args)?.finish().await
    }

    /// A headless Chromium that trusts the site's certificate and resolves the test hosts.
    pub(crate) async fn browser(&self) -> anyhow::Result<Browser> {
        Ok(Browser::start(BrowserOptions {
            spki_hashes: vec![sekisho_testkit::spki_sha256_base64(&self.leaf_pem)?],
            ..BrowserOptions::default()
        })
        .await?)
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
        browser.goto(url).await?;
        let idp_port = self.idp.port();
        let at = browser
            .wait_for_url(|u| u.port() == Some(idp_port) || arrived(u), LIMIT)
            .await?;
        if at.port() == Some(idp_port) {
            login_with_browser(browser, ALICE, PASSWORD).await?;
        }
        Ok(browser.wait_for_url(&arrived, LIMIT).await?)
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
        // The reader threads end with the pipes; give them a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(Finished {
            status,
            stdout: self.stdout.lock().expect("not poisoned").clone(),
            stderr: self.stderr(),
        })
    }
}

/// This checkout's `sekisho`, copied once per test process out of the target directory.
///
/// `CARGO_BIN_EXE_sekisho` is `target/debug/sekisho`, and a target directory shared by several
/// checkouts (as this project's worktrees do) has one such file for all of them: a build in
/// another checkout replaces it while the tests run. The copy is taken at the first use and
/// checked to be a `sekisho` with the commands these tests run.
fn binary() -> anyhow::Result<&'static Path> {
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

/// A CA, and a leaf for `names` signed by it: PEM (CA, leaf, leaf key).
fn pki(names: &[&str]) -> anyhow::Result<(String, String, String)> {
    let pki = sekisho_testkit::test_pki("sekisho CLI test CA", names)?;
    Ok((pki.ca_pem, pki.cert_pem, pki.key_pem))
}

/// An HTTP upstream on 127.0.0.1:0 that answers with the request's headers, one
/// `name: value` per line.
pub(crate) struct EchoUpstream {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(echo);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let mut text = format!("upstream: app\npath: {}\n", parts.uri.path());
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// A TCP server on 127.0.0.1:0 that sends back every byte it reads, and closes its side when
/// the other side has closed its own.
pub(crate) struct TcpEcho {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// How many connections it has accepted (each one a tunnel the proxy opened).
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The value of header `name` in an echoed answer.
pub(crate) fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

/// Whether `path` has exactly `mode` as its permission bits.
pub(crate) fn mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.mode() & 0o777)
}
