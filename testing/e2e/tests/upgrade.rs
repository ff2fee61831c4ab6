//! In-place upgrades of a real `sekisho-proxy` process (SIGUSR2) and systemd's socket
//! activation, with the binary cargo built: the listening sockets pass from one process to the
//! next while HTTP/1.1 and HTTP/2 clients keep asking and an ssh session through an agent in
//! another network segment stays open.
//!
//! Every generation of the proxy writes its JSON log to the same pipe (the first one's stderr,
//! inherited); the tests wait on its lines (`sekisho-proxy is serving` with the new pid, then
//! `upgrade: handed over` from the old one), never on sleeps.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use sekisho_e2e::load::{Load, Protocol, Sender, ok_upstream};
use sekisho_e2e::{
    EchoSession, PROXY_HOST, Pki, Segment, Sshd, agent_key, binary, run, wait_until,
};
use serde_json::Value;

const BOX: &str = "box.ssh.sekisho.test";
const ALICE: &str = "alice@sekisho.test";
const UPGRADES: usize = 10;
/// How long one event (a log line, a generation's exit) may take before the test fails.
const EVENT_WITHIN: Duration = Duration::from_secs(60);

/// The proxy's configuration file and the keys it names.
struct ProxyFiles {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl ProxyFiles {
    /// A configuration with HTTPS on `https`, the admin listener on loopback, two workers,
    /// `PROXY_HOST/` public to `upstream`, `limits` (YAML lines of the section), and, with
    /// `agent_public_key`, the agent `nas` and a tunnel to sshd behind it.
    fn new(
        pki: &Pki,
        https: SocketAddr,
        upstream: SocketAddr,
        limits: &[&str],
        agent_public_key: Option<&str>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let signing_keys = dir.path().join("signing-keys.pem");
        run(Command::new(binary("sekisho-proxy"))
            .args(["keys", "signing"])
            .arg(&signing_keys))?;
        let tunnel = match agent_public_key {
            Some(key) => format!(
                "agents:\n  nas: {{public_keys: [\"{key}\"]}}\n\
                 tunnels:\n  - {{host: {BOX}, policy: staff, agent: nas, target: \"127.0.0.1:22\"}}\n"
            ),
            None => String::new(),
        };
        let text = format!(
            "listen:\n  https: {https}\n  admin: 127.0.0.1:0\nworkers: 2\naccess_log: false\n\
             limits:\n  {limits}\n\
             tls:\n  certificates:\n    - cert: {cert}\n      key: {key}\n\
             identity:\n  auth_host: auth.sekisho.test\n  signing_keys_file: {signing}\n\
             policies:\n  staff:\n    allow: [{{email: {ALICE}}}]\n\
             upstreams:\n  app:\n    endpoints: [\"http://{upstream}\"]\n\
             hosts:\n  - host: {PROXY_HOST}\n    paths:\n      - {{path: /, upstream: app, public: true}}\n\
             {tunnel}",
            cert = pki.cert_file.display(),
            key = pki.key_file.display(),
            signing = signing_keys.display(),
            limits = limits.join("\n  "),
        );
        let config = dir.path().join("sekisho.yaml");
        std::fs::write(&config, text)?;
        Ok(Self { _dir: dir, config })
    }

    /// A Sekisho user token for alice, signed with the configuration's keys.
    fn token(&self) -> Result<String> {
        let output = run(Command::new(binary("sekisho-proxy"))
            .arg("--config")
            .arg(&self.config)
            .args(["dev-token", "--subject", ALICE, "--email", ALICE]))?;
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }
}

/// The proxy's log lines, from every generation, as JSON.
struct Log {
    lines: mpsc::Receiver<Value>,
    /// Every line read so far, for the message of a failed wait.
    seen: Vec<String>,
}

impl Log {
    fn read(stderr: impl std::io::Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SEKISHO_E2E_VERBOSE").is_some() {
                    eprintln!("[proxy] {line}");
                }
                let value =
                    serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose message is `message` and that passes `also`.
    fn wait_for(&mut self, message: &str, also: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + EVENT_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(error) => {
                    let why = match error {
                        mpsc::RecvTimeoutError::Timeout => format!("within {EVENT_WITHIN:?}"),
                        mpsc::RecvTimeoutError::Disconnected => {
                            "before the log ended (every process exited)".to_owned()
                        }
                    };
                    let tail = self.seen.iter().rev().take(30).rev().cloned();
                    bail!(
                        "no log line `{message}` {why}; the last lines:\n{}",
                        tail.collect::<Vec<_>>().join("\n")
                    );
                }
            };
            self.seen.push(line.to_string());
            if line["message"] == message && also(&line) {
                return Ok(line);
            }
        }
    }
}

fn field_addr(line: &Value, field: &str) -> Result<SocketAddr> {
    line[field]
        .as_str()
        .with_context(|| format!("no `{field}` in {line}"))?
        .parse()
        .with_context(|| format!("`{field}` in {line}"))
}

fn field_pid(line: &Value, field: &str) -> Result<i32> {
    let pid = line[field]
        .as_u64()
        .with_context(|| format!("no `{field}` in {line}"))?;
    Ok(i32::try_from(pid)?)
}

/// `sekisho-proxy` as a process of its own, and the generations that replace it. They all run
/// in the process group of the first, which is killed when this is dropped.
struct ProxyProcess {
    first: Child,
    log: Log,
    /// The generation that serves now.
    pid: i32,
    /// Those that handed over, oldest first.
    old: Vec<i32>,
    https: SocketAddr,
    admin: SocketAddr,
    /// Kills the group even if this test process dies without dropping it.
    _watchdog: sekisho_watchdog::Watchdog,
    _scratch: tempfile::TempDir,
}

impl ProxyProcess {
    fn start(config: &Path) -> Result<Self> {
        Self::start_with(Command::new(binary("sekisho-proxy")), config)
    }

    fn start_with(mut command: Command, config: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let mut first = command
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting sekisho-proxy")?;
        let scratch = tempfile::tempdir()?;
        let watchdog = sekisho_watchdog::Watchdog::spawn(
            "sekisho-e2e-proxy-watchdog",
            first.id(),
            scratch.path(),
        )?;
        let mut log = Log::read(first.stderr.take().expect("stderr is piped"));
        let serving = log.wait_for("sekisho-proxy is serving", |_| true)?;
        Ok(Self {
            pid: field_pid(&serving, "pid")?,
            https: field_addr(&serving, "https")?,
            admin: field_addr(&serving, "admin")?,
            first,
            log,
            old: Vec::new(),
            _watchdog: watchdog,
            _scratch: scratch,
        })
    }

    /// SIGUSR2, then waits until a new process serves and this one has stopped accepting.
    fn upgrade(&mut self) -> Result<()> {
        kill(Pid::from_raw(self.pid), Signal::SIGUSR2)?;
        let old = self.pid;
        let serving = self
            .log
            .wait_for("sekisho-proxy is serving", |line| line["pid"] != old)?;
        let new = field_pid(&serving, "pid")?;
        ensure!(
            field_addr(&serving, "https")? == self.https,
            "the new process serves HTTPS elsewhere: {serving}"
        );
        let handed = self.log.wait_for(
            "upgrade: handed over; this process no longer accepts connections",
            |line| line["pid"] == old,
        )?;
        ensure!(
            field_pid(&handed, "new_pid")? == new,
            "handed over to another process than the one serving: {handed}"
        );
        self.old.push(old);
        self.pid = new;
        Ok(())
    }

    /// The admin listener's answer to `GET path` (status line and body).
    fn admin_get(&self, path: &str) -> Result<String> {
        sekisho_e2e::admin_get(self.admin, path)
    }

    /// Waits until the process `pid` of this group has exited; its exit code when this test
    /// process could reap it (it is the first, or its parent exited before it).
    fn wait_exit(&mut self, pid: i32) -> Result<Option<i32>> {
        let deadline = Instant::now() + EVENT_WITHIN;
        loop {
            if pid == self.pid_of_first() {
                if let Some(status) = self.first.try_wait()? {
                    return Ok(status.code());
                }
            } else {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
                    Ok(WaitStatus::Signaled(_, signal, _)) => bail!("{pid} was killed by {signal}"),
                    Ok(_) => {}
                    // Not this process's child: its parent (an older generation) reaps it.
                    Err(nix::errno::Errno::ECHILD) if gone(pid) => return Ok(None),
                    Err(nix::errno::Errno::ECHILD) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            ensure!(
                Instant::now() < deadline,
                "process {pid} has not exited within {EVENT_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid_of_first(&self) -> i32 {
        self.first.id() as i32
    }
}

/// Whether `pid` is gone or a zombie (exited, not yet reaped by its parent).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) STATE …`; comm may hold spaces and parentheses, the state follows the last.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid_of_first()), Signal::SIGKILL);
        let _ = self.first.wait();
    }
}

/// Orphaned generations are reparented to this test process, which can then reap them.
fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

#[test]
fn ten_upgrades_under_http1_and_http2_load_drop_no_request_and_keep_an_ssh_session() -> Result<()> {
    become_subreaper()?;
    let pki = Pki::new(&["*.ssh.sekisho.test", PROXY_HOST, "auth.sekisho.test"])?;
    let segment = Segment::new()?;
    let sshd = Sshd::start(&segment)?;
    let keys = tempfile::tempdir()?;
    let (nas_key, nas_public) = agent_key(keys.path(), "nas")?;
    let (upstream, _) = ok_upstream(TcpListener::bind("127.0.0.1:0")?)?;
    let files = ProxyFiles::new(
        &pki,
        SocketAddr::from((segment.host_ip, 0)),
        upstream,
        &["shutdown_grace: 10s"],
        Some(&nas_public),
    )?;
    let mut proxy = ProxyProcess::start(&files.config)?;

    let _agent = segment.agent("nas", &nas_key, proxy.https, &pki.ca_file)?;
    proxy.log.wait_for("agent connected", |_| true)?;

    // `ssh root@box cat`, kept open through every upgrade.
    let proxy_command = format!(
        "{} --ca {} --connect-to {} tunnel %h:{}",
        binary("sekisho").display(),
        pki.ca_file.display(),
        proxy.https,
        proxy.https.port()
    );
    let mut ssh = sshd.ssh(&proxy_command, BOX, "cat");
    ssh.env("SEKISHO_TOKEN", files.token()?);
    let mut session = EchoSession::start(ssh)?;
    session.echo("before the upgrades")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load = Load::new(&pki, proxy.https)?;
    let clients: Vec<_> = [Protocol::Http1, Protocol::Http2]
        .into_iter()
        .flat_map(|protocol| std::iter::repeat_n(protocol, 4))
        .map(|protocol| runtime.spawn(load.clone().client(protocol)))
        .collect();

    let upgraded = (|| -> Result<()> {
        for _ in 0..UPGRADES {
            // Each generation serves both protocols before the next upgrade.
            let (http1, http2) = load.ok();
            wait_until(EVENT_WITHIN, || {
                let (now1, now2) = load.ok();
                now1 >= http1 + 50 && now2 >= http2 + 50
            })
            .with_context(|| {
                format!(
                    "the load stalled:\n{}\n{}",
                    load.http1.summary("HTTP/1.1"),
                    load.http2.summary("HTTP/2")
                )
            })?;
            proxy.upgrade()?;
        }
        Ok(())
    })();
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        runtime.block_on(client)?;
    }
    upgraded?;

    let summary = load.summary();
    eprintln!("{summary}");
    ensure!(
        load.failed() == 0,
        "requests failed across {UPGRADES} upgrades:\n{summary}"
    );
    let (http1, http2) = load.ok();
    ensure!(http1 > 0 && http2 > 0, "no load got through:\n{summary}");
    ensure!(
        load.http1.connections.load(Ordering::Relaxed) > 4
            && load.http2.connections.load(Ordering::Relaxed) > 4,
        "the clients never moved to a new process:\n{summary}"
    );

    // The session outlived ten upgrades: it still carries bytes both ways, through the first
    // generation, which is still draining.
    session.echo("after ten upgrades")?;
    ensure!(proxy.old.len() == UPGRADES);
    let first = proxy.old[0];
    ensure!(
        !gone(first),
        "the first generation exited with the session open"
    );

    // The generations between hold nothing and are gone, each having exited cleanly.
    let handed_over = proxy.old.clone();
    for &pid in &handed_over[1..] {
        let code = proxy.wait_exit(pid)?;
        ensure!(
            code.is_none_or(|code| code == 0),
            "generation {pid} exited with {code:?}"
        );
    }
    // The agent was told to move each time, and dials the serving process once its backoff
    // (drains soon after connecting count as failures) has passed; then a new session works.
    // Only the serving process answers on the admin socket now.
    wait_until(EVENT_WITHIN, || {
        proxy
            .admin_get("/metrics")
            .is_ok_and(|text| text.contains(r#"sekisho_agents_connected{agent="nas"} 1"#))
    })
    .context("the agent did not connect to the serving process")?;
    let output = run(sshd
        .ssh(&proxy_command, BOX, "echo through the last generation")
        .env("SEKISHO_TOKEN", files.token()?))?;
    ensure!(String::from_utf8_lossy(&output.stdout).trim() == "through the last generation");

    // When the session ends, the first generation has nothing left and exits 0.
    let status = session.finish()?;
    ensure!(status.success(), "ssh ended with {status}");
    let code = proxy.wait_exit(first)?;
    ensure!(code == Some(0), "the first generation exited with {code:?}");

    // And the serving one stops cleanly on SIGTERM.
    let last = proxy.pid;
    kill(Pid::from_raw(last), Signal::SIGTERM)?;
    let code = proxy.wait_exit(last)?;
    ensure!(
        code.is_none_or(|code| code == 0),
        "the last generation exited with {code:?}"
    );
    Ok(())
}

/// One HTTPS request to `PROXY_HOST/ping` on a new connection; the status code.
fn ping(pki: &Pki, addr: SocketAddr) -> Result<u16> {
    get(&*Load::new(pki, addr)?, "/ping")
}

/// One HTTP/1.1 request to `PROXY_HOST` `path` on a new connection; the status code.
fn get(load: &Load, path: &str) -> Result<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let Sender::Http1(mut sender) = load.connect(Protocol::Http1).await? else {
            bail!("asked for HTTP/1.1");
        };
        let response = sender
            .send_request(load.request_to(Protocol::Http1, path))
            .await?;
        Ok(response.status().as_u16())
    })
}

/// A proxy upgraded while its first process has a request in flight that its upstream never
/// answers; that request's thread (its result: the proxy cut it, or a status).
struct Hanging {
    proxy: ProxyProcess,
    request: std::thread::JoinHandle<Result<u16>>,
    _files: ProxyFiles,
}

fn upgraded_while_a_request_hangs(limits: &[&str]) -> Result<Hanging> {
    become_subreaper()?;
    let pki = Pki::new(&[PROXY_HOST, "auth.sekisho.test"])?;
    let (upstream, hanging) = ok_upstream(TcpListener::bind("127.0.0.1:0")?)?;
    let files = ProxyFiles::new(&pki, "127.0.0.1:0".parse()?, upstream, limits, None)?;
    let mut proxy = ProxyProcess::start(&files.config)?;
    let load = Load::new(&pki, proxy.https)?;
    let request = std::thread::spawn(move || get(&load, "/hang"));
    hanging
        .recv_timeout(EVENT_WITHIN)
        .context("the request did not reach the upstream")?;
    proxy.upgrade()?;
    ensure!(ping(&pki, proxy.https)? == 200, "the new process serves");
    ensure!(
        !gone(proxy.old[0]),
        "the old process exited with a request in flight"
    );
    Ok(Hanging {
        proxy,
        request,
        _files: files,
    })
}

#[test]
fn what_the_old_process_still_holds_is_cut_when_the_upgrade_grace_runs_out() -> Result<()> {
    let mut hanging = upgraded_while_a_request_hangs(&["upgrade_grace: 1s"])?;
    let first = hanging.proxy.old[0];
    let code = hanging.proxy.wait_exit(first)?;
    ensure!(code == Some(0), "the old process exited with {code:?}");
    let cut = hanging.request.join().expect("the request thread ends");
    ensure!(cut.is_err(), "the hanging request got {cut:?}");
    Ok(())
}

#[test]
fn a_sigterm_during_the_drain_after_an_upgrade_cuts_it_to_the_shutdown_grace() -> Result<()> {
    // The upgrade grace is the default hour; the shutdown grace a second.
    let mut hanging = upgraded_while_a_request_hangs(&["shutdown_grace: 1s"])?;
    let first = hanging.proxy.old[0];
    kill(Pid::from_raw(first), Signal::SIGTERM)?;
    let code = hanging.proxy.wait_exit(first)?;
    ensure!(code == Some(0), "the old process exited with {code:?}");
    let cut = hanging.request.join().expect("the request thread ends");
    ensure!(cut.is_err(), "the hanging request got {cut:?}");
    Ok(())
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() -> Result<()> {
    become_subreaper()?;
    let pki = Pki::new(&[PROXY_HOST, "auth.sekisho.test"])?;
    let (upstream, _) = ok_upstream(TcpListener::bind("127.0.0.1:0")?)?;
    let files = ProxyFiles::new(
        &pki,
        "127.0.0.1:0".parse()?,
        upstream,
        &["shutdown_grace: 10s"],
        None,
    )?;
    let mut proxy = ProxyProcess::start(&files.config)?;
    let good = std::fs::read_to_string(&files.config)?;

    // A broken file: the running process refuses to reload it and the new one to start.
    std::fs::write(&files.config, good.replace("workers: 2", "workers: two"))?;
    kill(Pid::from_raw(proxy.pid), Signal::SIGUSR2)?;
    let failed = proxy
        .log
        .wait_for("upgrade failed: this process keeps serving", |_| true)?;
    let error = failed["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("exited before it was ready") && error.contains("configuration"),
        "the failure does not say why: {failed}"
    );
    ensure!(ping(&pki, proxy.https)? == 200);
    let ready = proxy.admin_get("/readyz")?;
    ensure!(ready.starts_with("HTTP/1.1 200"), "/readyz: {ready}");
    ensure!(proxy.first.try_wait()?.is_none(), "the old process exited");

    // Mended, the next upgrade goes through.
    std::fs::write(&files.config, &good)?;
    proxy.upgrade()?;
    ensure!(ping(&pki, proxy.https)? == 200);
    let first = proxy.old[0];
    ensure!(proxy.wait_exit(first)? == Some(0));
    Ok(())
}

#[test]
fn a_socket_passed_by_systemd_is_served_without_binding_another() -> Result<()> {
    use command_fds::{CommandFdExt as _, FdMapping};
    let pki = Pki::new(&[PROXY_HOST, "auth.sekisho.test"])?;
    let (upstream, _) = ok_upstream(TcpListener::bind("127.0.0.1:0")?)?;
    // As systemd's .socket unit would: HTTPS by address (the unit's name is no listener's),
    // the admin listener by FileDescriptorName=admin.
    let https = TcpListener::bind("127.0.0.1:0")?;
    let admin = TcpListener::bind("127.0.0.1:0")?;
    let (https_addr, admin_addr) = (https.local_addr()?, admin.local_addr()?);
    let files = ProxyFiles::new(&pki, https_addr, upstream, &["shutdown_grace: 10s"], None)?;

    // LISTEN_PID must be the service's own pid: the shell sets it to its own and execs.
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#])
        .arg(binary("sekisho-proxy"))
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "sekisho-proxy.socket:admin");
    command.fd_mappings(vec![
        FdMapping {
            parent_fd: https.into(),
            child_fd: 3,
        },
        FdMapping {
            parent_fd: admin.into(),
            child_fd: 4,
        },
    ])?;
    let proxy = ProxyProcess::start_with(command, &files.config)?;
    ensure!(proxy.https == https_addr, "HTTPS is at {}", proxy.https);
    ensure!(proxy.admin == admin_addr, "admin is at {}", proxy.admin);
    ensure!(ping(&pki, https_addr)? == 200);
    let ready = proxy.admin_get("/readyz")?;
    ensure!(ready.starts_with("HTTP/1.1 200"), "/readyz: {ready}");
    Ok(())
}
