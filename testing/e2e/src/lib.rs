//! `sekisho-e2e`, test-only: the real parts the tunnel tests put together.
//!
//! - [`Segment`]: "another network segment", a Linux network namespace joined to this one by a
//!   veth pair. Processes in it reach the proxy on the host side of the pair; nothing in the
//!   host namespace reaches what listens on the segment's loopback.
//! - [`Sshd`]: Debian's OpenSSH server on the segment's loopback, with throwaway keys, and the
//!   `ssh`/`scp` command lines that reach it through `sekisho tunnel`.
//! - [`Proxy`]: `sekisho-proxy` in this process, on a configuration file the test can edit.
//! - [`binary`]: the built `sekisho-agent` and `sekisho` binaries.
//! - [`AccessEvents`]: the proxy's `sekisho::access` log events, as it writes them.
//! - [`load`]: steady HTTPS load that counts every request, and the upstream it asks.
//!
//! Everything started here dies with its handle or with the test process (see
//! `sekisho-watchdog`), namespaces included. Nothing here may be used outside tests.

pub mod load;

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use sekisho_watchdog::Watchdog;

/// The test domain: the certificate covers `*.ssh.sekisho.test` and `proxy.sekisho.test`.
pub const PROXY_HOST: &str = "proxy.sekisho.test";
pub const AUTH_HOST: &str = "auth.sekisho.test";

/// The path of a workspace binary built next to the test executable (`target/debug/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = debug.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --workspace --bins`; scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a command to completion; its output, or an error naming it and its stderr.
pub fn run(command: &mut Command) -> Result<std::process::Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A CA and one server certificate it signed, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    /// A CA and a leaf for `names`.
    pub fn new(names: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = sekisho_testkit::Pki::new("Sekisho e2e CA")?;
        let leaf = pki.leaf(names)?;
        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("proxy.crt");
        let key_file = dir.path().join("proxy.key");
        std::fs::write(&ca_file, &pki.ca_pem)?;
        std::fs::write(&cert_file, &leaf.cert_pem)?;
        std::fs::write(&key_file, &leaf.key_pem)?;
        Ok(Self {
            dir,
            ca_file,
            cert_file,
            key_file,
        })
    }

    /// A TLS client configuration that trusts this CA (ring, the default protocol versions).
    pub fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.ca_file)?;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }
}

static SEGMENTS: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair to this one: `host_ip` on this side, `ns_ip` inside.
pub struct Segment {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    /// A process that lives as long as the segment; everything started in the segment joins
    /// its process group, so the watchdog can kill them all.
    holder: Child,
    _watchdog: Watchdog,
    _dir: tempfile::TempDir,
}

impl Segment {
    pub fn new() -> Result<Self> {
        // A /30 of 169.254.0.0/16 (link-local: never routed off this machine) per segment.
        let index = (std::process::id().wrapping_mul(7) + SEGMENTS.fetch_add(1, Ordering::Relaxed))
            % 16_000;
        let name = format!("sekisho-e2e-{index}");
        let (third, fourth) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let host_ip = Ipv4Addr::new(169, 254, third, fourth + 1);
        let ns_ip = Ipv4Addr::new(169, 254, third, fourth + 2);
        let (outer, inner) = (format!("skh{index}"), format!("skn{index}"));
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &name])?;
        let dir = tempfile::tempdir()?;
        let holder = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "infinity"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the segment's holder process")?;
        let watchdog =
            Watchdog::spawn_with_netns("sekisho-e2e-watchdog", holder.id(), dir.path(), &name)?;
        let set_up = || -> Result<()> {
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &name])?;
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            let ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            ns(&["link", "set", "lo", "up"])?;
            ns(&["addr", "add", &format!("{ns_ip}/30"), "dev", &inner])?;
            ns(&["link", "set", &inner, "up"])?;
            Ok(())
        };
        let segment = Self {
            name: name.clone(),
            host_ip,
            ns_ip,
            holder,
            _watchdog: watchdog,
            _dir: dir,
        };
        set_up().context("setting up the segment's veth pair")?;
        Ok(segment)
    }

    /// `program` to be run inside the segment, in the segment's process group.
    /// `sekisho-agent run` named `name` in this segment, with `key`, dialing the proxy at
    /// `proxy` (as `PROXY_HOST`, trusting `ca`), allowed to reach sshd (`127.0.0.1:22`).
    pub fn agent(&self, name: &str, key: &Path, proxy: SocketAddr, ca: &Path) -> Result<Process> {
        let child = self
            .command(binary("sekisho-agent"))
            .arg("run")
            .args(["--name", name])
            .arg("--key")
            .arg(key)
            .args(["--proxy", &format!("https://{PROXY_HOST}:{}", proxy.port())])
            .args(["--proxy-address", &proxy.to_string()])
            .arg("--ca")
            .arg(ca)
            .args(["--allow-tcp", "127.0.0.1:22"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting sekisho-agent")?;
        Ok(Process {
            child,
            name: "sekisho-agent",
        })
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .process_group(self.holder.id() as i32);
        command
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: &'static str,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends it the signal `name` (`TERM`, `STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, name: &str) -> Result<()> {
        run(Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string()))?;
        Ok(())
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// OpenSSH's server on a segment's loopback, port 22, with throwaway host and client keys.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    _process: Process,
}

/// The name ssh checks the host key under (`HostKeyAlias`).
const HOST_KEY_ALIAS: &str = "sekisho-e2e-box";

impl Sshd {
    pub fn start(segment: &Segment) -> Result<Self> {
        let sshd = Path::new("/usr/sbin/sshd");
        ensure!(
            sshd.is_file(),
            "/usr/sbin/sshd is missing: apt-get install openssh-server (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(path(key)))?;
        }
        std::fs::copy(path("client_key.pub"), path("authorized_keys"))?;
        let host_public = std::fs::read_to_string(path("host_key.pub"))?;
        std::fs::write(
            path("known_hosts"),
            format!("{HOST_KEY_ALIAS} {host_public}"),
        )?;
        std::fs::write(
            path("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:22\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\nLogLevel INFO\n",
                path("host_key").display(),
                path("authorized_keys").display(),
                path("sshd.pid").display(),
            ),
        )?;
        // sshd's privilege-separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let mut child = segment
            .command(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sshd")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server listening") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if std::env::var_os("SEKISHO_E2E_VERBOSE").is_some() {
                    eprintln!("[sshd] {line}");
                }
            }
        });
        let process = Process {
            child,
            name: "sshd",
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("sshd did not say it was listening within 10 s")?;
        Ok(Self {
            client_key: path("client_key"),
            known_hosts: path("known_hosts"),
            dir,
            _process: process,
        })
    }

    /// The options every ssh and scp command line here shares: this server's keys, no user
    /// configuration, and `proxy_command` to get there.
    fn options(&self, proxy_command: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.client_key.display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("HostKeyAlias={HOST_KEY_ALIAS}"),
            "-o",
            "ConnectTimeout=20",
            "-o",
            &format!("ProxyCommand={proxy_command}"),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `ssh root@HOST COMMAND` through `proxy_command`.
    pub fn ssh(&self, proxy_command: &str, host: &str, remote: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.options(proxy_command))
            .arg(format!("root@{host}"))
            .arg(remote)
            .stdin(Stdio::null());
        command
    }

    /// `scp FROM root@HOST:TO` through `proxy_command`.
    pub fn scp_to(&self, proxy_command: &str, from: &Path, host: &str, to: &Path) -> Command {
        let mut command = Command::new("scp");
        command
            .args(self.options(proxy_command))
            .arg("-q")
            .arg(from)
            .arg(format!("root@{host}:{}", to.display()))
            .stdin(Stdio::null());
        command
    }
}

/// `sekisho-proxy` in this process, serving a configuration file the test may rewrite.
pub struct Proxy {
    pub running: Option<sekisho_proxy::Running>,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy with `listen` as its HTTPS address and `rest` after the `listen:` and
    /// `tls:` sections.
    pub fn start(pki: &Pki, listen: SocketAddr, rest: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("sekisho.yaml");
        std::fs::write(&config_path, config_text(pki, listen, rest))?;
        let running = sekisho_proxy::start(sekisho_proxy::Options {
            config_path: Some(config_path.clone()),
            access_log: Some(Box::new(std::io::sink())),
            handle_signals: false,
            dev_ca_dir: None,
            kubernetes: None,
        })
        .context("starting the proxy")?;
        let addr = running.https_addr;
        Ok(Self {
            running: Some(running),
            config_path,
            addr,
            _dir: dir,
        })
    }

    pub fn running(&self) -> &sekisho_proxy::Running {
        self.running.as_ref().expect("the proxy runs")
    }

    /// Rewrites the part after `listen:` and `tls:`; the proxy reloads it.
    pub fn rewrite(&self, pki: &Pki, rest: &str) -> Result<()> {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config_text(pki, self.addr, rest))?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Shuts down gracefully and waits until it has stopped.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.wait();
        }
    }

    /// A Sekisho user token for `email` (groups none), as `sekisho login` would get.
    pub fn user_token(&self, email: &str) -> Result<String> {
        self.token(email, sekisho_identity::user_token::DEFAULT_LIFETIME, 0)
    }

    /// A user token for `email` that stops being accepted `after` from now (its `iat` and `exp`
    /// are moved back by the verifier's clock-skew leeway).
    pub fn user_token_expiring(&self, email: &str, after: Duration) -> Result<String> {
        let leeway = sekisho_identity::signing::CLOCK_SKEW_LEEWAY_SECS;
        self.token(email, after, leeway)
    }

    /// Ends the session that [`Proxy::user_token`]'s tokens for `email` belong to, the way a
    /// logout or a back-channel logout does.
    pub fn revoke(&self, email: &str) -> Result<()> {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        ensure!(
            self.running().revoke_session(session_of(email), until),
            "the configuration has no identity section"
        );
        Ok(())
    }

    fn token(&self, email: &str, lifetime: Duration, backdate_secs: u64) -> Result<String> {
        let tokens = self
            .running()
            .user_tokens()
            .context("the configuration has no identity section")?
            .with_lifetime(lifetime);
        let session = session_of(email);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            - backdate_secs;
        let issued = tokens.issue(
            session,
            &sekisho_identity::signing::Identity {
                subject: email,
                email,
                groups: &[],
            },
            now,
        )?;
        Ok(issued.token.expose().to_owned())
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        admin_get(self.running().admin_addr, "/metrics")
    }

    /// How many links the agent `name` has now.
    pub fn agent_links(&self, name: &str) -> usize {
        self.running().agent_links(name)
    }

    /// Waits until the agent `name` has `count` links.
    pub fn wait_for_links(&self, name: &str, count: usize, within: Duration) -> Result<()> {
        wait_until(within, || self.agent_links(name) == count).with_context(|| {
            format!(
                "agent {name} has {} links, not {count}",
                self.agent_links(name)
            )
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The session id of a test person's tokens: the first 16 bytes of the email, zero-padded.
fn session_of(email: &str) -> [u8; 16] {
    let mut session = [0u8; 16];
    let n = email.len().min(16);
    session[..n].copy_from_slice(&email.as_bytes()[..n]);
    session
}

fn config_text(pki: &Pki, listen: SocketAddr, rest: &str) -> String {
    format!(
        "listen:\n  https: {listen}\n  admin: 127.0.0.1:0\nworkers: 1\naccess_log: false\n\
         tls:\n  certificates:\n    - cert: {}\n      key: {}\n{rest}",
        pki.cert_file.display(),
        pki.key_file.display()
    )
}

/// The proxy's diagnostic log events of target `sekisho::access` (access decisions, sign-ins,
/// tunnel ends), as JSON objects. The proxy runs in the test process, so this is every
/// proxy's of the process: tests pick theirs out by a field of their own (a user).
#[derive(Debug, Clone, Default)]
pub struct AccessEvents {
    written: Arc<Mutex<Vec<u8>>>,
}

/// A writer into [`AccessEvents`].
struct EventWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AccessEvents {
    /// The process's capture, started on first use (before the proxy's events happen).
    pub fn capture() -> &'static Self {
        static EVENTS: OnceLock<AccessEvents> = OnceLock::new();
        EVENTS.get_or_init(|| {
            let events = Self::default();
            let written = events.written.clone();
            let installed = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter(tracing_subscriber::EnvFilter::new("sekisho::access=info"))
                .with_writer(move || EventWriter(written.clone()))
                .try_init();
            assert!(
                installed.is_ok(),
                "another tracing subscriber was installed first"
            );
            events
        })
    }

    /// The events whose `message` is `message` and whose `field` is `value`.
    pub fn matching(&self, message: &str, field: &str, value: &str) -> Vec<serde_json::Value> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&written)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == message && event[field] == value)
            .collect()
    }
}

/// An ssh session running `cat`, started from an `ssh` command (its stdin and stdout are
/// piped here): what is written comes back, line by line. Killed when dropped.
pub struct EchoSession {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EchoSession {
    pub fn start(mut ssh: Command) -> Result<Self> {
        ssh.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ssh.spawn().context("starting ssh")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Writes `text` and waits (at most 20 s) for it to come back.
    pub fn echo(&mut self, text: &str) -> Result<()> {
        use std::io::Write as _;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .context("the session's stdin is open")?;
        writeln!(stdin, "{text}")?;
        stdin.flush()?;
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .context("the ssh session did not echo within 20 s")?;
        ensure!(line == text, "the session echoed {line:?}, not {text:?}");
        Ok(())
    }
}

impl EchoSession {
    /// Closes the session's input (so `cat`, then ssh, ends) and waits for ssh to exit.
    pub fn finish(&mut self) -> Result<std::process::ExitStatus> {
        drop(self.child.stdin.take());
        Ok(self.child.wait()?)
    }
}

impl Drop for EchoSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The answer (status line, headers and body) of an admin listener to `GET path`.
pub fn admin_get(admin: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Polls `done` every 50 ms until it is true or `within` has passed.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not done within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new agent key: (private PEM file, public key text).
pub fn agent_key(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let (key, pem) = sekisho_wire::agent_auth::AgentKey::generate()?;
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, pem)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((path, key.public_key().to_string()))
}
