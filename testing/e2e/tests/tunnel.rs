//! ssh through Sekisho, with every part real: OpenSSH's sshd on the loopback of another network
//! segment (a network namespace the proxy cannot dial into), `sekisho-agent` beside it dialing
//! out to the proxy, the proxy in this process, and `ssh`/`scp` with
//! `ProxyCommand sekisho tunnel %h`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use sekisho_e2e::{
    AccessEvents, PROXY_HOST, Pki, Process, Proxy, Segment, Sshd, agent_key, binary, run,
    wait_until,
};

const BOX: &str = "box.ssh.sekisho.test";
const ALICE: &str = "alice@sekisho.test";
/// People the policy lets through besides alice, each for one test that picks its proxy's log
/// events out by user (every proxy of the process logs to the same capture).
const PROXY_STOPS: &str = "proxy-stops@sekisho.test";
const AGENT_DIES: &str = "agent-dies@sekisho.test";
const TARGET_CLOSES: &str = "target-closes@sekisho.test";

/// One site: a segment with sshd and an agent named `nas`, and a proxy that knows them.
struct Site {
    pki: Pki,
    segment: Segment,
    sshd: Sshd,
    proxy: Proxy,
    keys: tempfile::TempDir,
    nas_key: std::path::PathBuf,
    nas_public: String,
    rogue_public: String,
    agents: Vec<Process>,
}

impl Site {
    fn new() -> Result<Self> {
        Self::with("")
    }

    /// A site whose proxy's configuration ends with `extra` (top-level sections).
    fn with(extra: &str) -> Result<Self> {
        let pki = Pki::new(&["*.ssh.sekisho.test", PROXY_HOST, "auth.sekisho.test"])?;
        let segment = Segment::new()?;
        let sshd = Sshd::start(&segment)?;
        let keys = tempfile::tempdir()?;
        let (nas_key, nas_public) = agent_key(keys.path(), "nas")?;
        let (_, rogue_public) = agent_key(keys.path(), "rogue")?;
        let listen = SocketAddr::from((segment.host_ip, 0));
        let rest = config(&[&nas_public], &rogue_public) + extra;
        let proxy = Proxy::start(&pki, listen, &rest)?;
        let mut site = Self {
            pki,
            segment,
            sshd,
            proxy,
            keys,
            nas_key,
            nas_public,
            rogue_public,
            agents: Vec::new(),
        };
        site.start_agent(&site.nas_key.clone())?;
        site.proxy
            .wait_for_links("nas", 1, Duration::from_secs(20))?;
        Ok(site)
    }

    /// Starts `sekisho-agent` named `nas` inside the segment, with `key`.
    fn start_agent(&mut self, key: &Path) -> Result<()> {
        let agent = self
            .segment
            .agent("nas", key, self.proxy.addr, &self.pki.ca_file)?;
        self.agents.push(agent);
        Ok(())
    }

    /// The `ProxyCommand` for ssh: `sekisho tunnel %h` at this proxy.
    fn proxy_command(&self) -> String {
        format!(
            "{} --ca {} --connect-to {} tunnel %h:{}",
            binary("sekisho").display(),
            self.pki.ca_file.display(),
            self.proxy.addr,
            self.proxy.addr.port()
        )
    }

    /// `ssh root@BOX remote` as alice.
    fn ssh(&self, remote: &str) -> Result<Command> {
        let mut command = self.sshd.ssh(&self.proxy_command(), BOX, remote);
        command.env("SEKISHO_TOKEN", self.proxy.user_token(ALICE)?);
        Ok(command)
    }

    /// `sekisho tunnel HOST` on its own (stdin closed), with `token`.
    fn tunnel(&self, host: &str, token: Option<&str>) -> Command {
        let mut command = Command::new(binary("sekisho"));
        command
            .arg("--ca")
            .arg(&self.pki.ca_file)
            .args(["--connect-to", &self.proxy.addr.to_string()])
            .args(["tunnel", "--no-login"])
            .arg(format!("{host}:{}", self.proxy.addr.port()))
            .env_remove("SEKISHO_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("SEKISHO_TOKEN", token);
        }
        command
    }
}

fn config(nas_keys: &[&str], rogue_key: &str) -> String {
    let nas_keys: Vec<String> = nas_keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"identity:
  auth_host: auth.sekisho.test
policies:
  staff:
    allow: [{{email: {ALICE}}}, {{email: {PROXY_STOPS}}}, {{email: {AGENT_DIES}}}, {{email: {TARGET_CLOSES}}}]
agents:
  nas: {{public_keys: [{}]}}
  rogue: {{public_keys: ["{rogue_key}"]}}
tunnels:
  - {{host: {BOX}, policy: staff, agent: nas, target: "127.0.0.1:22"}}
  - {{host: closed.ssh.sekisho.test, policy: staff, agent: nas, target: "127.0.0.1:23"}}
  - {{host: rogue.ssh.sekisho.test, policy: staff, agent: rogue, target: "127.0.0.1:22"}}
"#,
        nas_keys.join(", ")
    )
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn ssh_runs_a_command_in_a_segment_the_proxy_cannot_dial() -> Result<()> {
    let site = Site::new()?;
    let output = run(&mut site.ssh("echo hello from; ip -4 -o addr show")?)?;
    let text = stdout(&output);
    ensure!(text.starts_with("hello from"), "ssh printed {text:?}");
    // The command ran inside the segment: it sees the segment's address.
    ensure!(
        text.contains(&site.segment.ns_ip.to_string()),
        "the command did not run in the segment: {text}"
    );

    // The asymmetry: the agent in the segment reached the proxy (it is connected), while from
    // the proxy's side sshd cannot be dialed, neither at the segment's address nor on loopback
    // (which is this namespace's own).
    ensure!(site.proxy.agent_links("nas") == 1);
    // The stream's relay counts its bytes when it has ended, a moment after ssh has.
    let lines = [
        r#"sekisho_agents_connected{agent="nas"} 1"#,
        r#"sekisho_agent_connections_total{agent="nas"} 1"#,
        "sekisho_tunnel_streams_open 0",
        r#"sekisho_tunnel_bytes_total{direction="to_client"}"#,
    ];
    let mut metrics = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        metrics = site.proxy.metrics().unwrap_or_default();
        lines.iter().all(|line| metrics.contains(line))
    });
    ensure!(
        counted.is_ok(),
        "the metrics lack one of {lines:?}:\n{metrics}"
    );
    for addr in [
        SocketAddr::from((site.segment.ns_ip, 22)),
        SocketAddr::from(([127, 0, 0, 1], 22)),
    ] {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut banner = [0u8; 64];
            let n = stream.read(&mut banner).unwrap_or(0);
            ensure!(
                !String::from_utf8_lossy(&banner[..n]).starts_with("SSH-"),
                "the segment's sshd answered at {addr} from the proxy's namespace"
            );
        }
    }
    Ok(())
}

#[test]
fn a_100_mib_file_goes_through_scp_intact() -> Result<()> {
    let site = Site::new()?;
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("payload");
    let mut data = vec![0u8; 100 * 1024 * 1024];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data)
        .map_err(|_| anyhow::anyhow!("no random bytes"))?;
    std::fs::write(&source, &data)?;
    let expected = hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    drop(data);

    let copy = site.sshd.dir.path().join("copy");
    let mut scp = site.sshd.scp_to(&site.proxy_command(), &source, BOX, &copy);
    scp.env("SEKISHO_TOKEN", site.proxy.user_token(ALICE)?);
    let started = Instant::now();
    run(&mut scp)?;
    eprintln!("scp of 100 MiB took {:?}", started.elapsed());

    let output = run(&mut site.ssh(&format!("sha256sum {}", copy.display()))?)?;
    let remote = stdout(&output);
    ensure!(
        remote.split_whitespace().next() == Some(expected.as_str()),
        "checksums differ: local {expected}, remote {remote}"
    );
    Ok(())
}

/// How soon after its proxy is back an agent must be connected again, whatever the outage.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// The outages the reconnect test makes, in seconds: `SEKISHO_E2E_OUTAGES` (`5,15,60`, say),
/// each `SEKISHO_E2E_OUTAGE_TRIALS` times; 5 s and 30 s once by default.
fn outages() -> Result<Vec<Duration>> {
    let list = std::env::var("SEKISHO_E2E_OUTAGES").unwrap_or_else(|_| "5,30".to_owned());
    let trials: usize = std::env::var("SEKISHO_E2E_OUTAGE_TRIALS")
        .map_or(Ok(1), |n| n.parse())
        .context("SEKISHO_E2E_OUTAGE_TRIALS")?;
    let mut outages = Vec::new();
    for seconds in list.split(',') {
        let seconds: u64 = seconds.trim().parse().context("SEKISHO_E2E_OUTAGES")?;
        outages.extend(std::iter::repeat_n(Duration::from_secs(seconds), trials));
    }
    Ok(outages)
}

#[test]
fn the_agent_is_back_within_5_s_of_the_proxy_after_outages_of_5_and_30_s() -> Result<()> {
    let mut site = Site::new()?;
    let addr = site.proxy.addr;
    let mut slowest = std::collections::BTreeMap::<Duration, Duration>::new();
    for outage in outages()? {
        site.proxy.stop();
        // The outage itself: nothing to wait for but time.
        std::thread::sleep(outage);
        site.proxy = Proxy::start(
            &site.pki,
            addr,
            &config(&[&site.nas_public], &site.rogue_public),
        )?;
        let restarted = Instant::now();
        site.proxy
            .wait_for_links("nas", 1, BACK_WITHIN)
            .with_context(|| format!("after an outage of {outage:?}"))?;
        let back = restarted.elapsed();
        eprintln!("after {outage:?} away: back {back:?} after the restart");
        let worst = slowest.entry(outage).or_default();
        *worst = (*worst).max(back);
        let output = run(&mut site.ssh("echo back again")?)?;
        ensure!(stdout(&output).trim() == "back again");
    }
    eprintln!("slowest return by outage: {slowest:?}");
    Ok(())
}

/// An interactive ssh session (`cat` on the box) that echoes the lines it is sent.
struct Session {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    fn open(site: &Site) -> Result<Self> {
        let mut command = site.ssh("cat")?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let input = child.stdin.take().context("stdin is piped")?;
        let output = std::io::BufReader::new(child.stdout.take().context("stdout is piped")?);
        let mut session = Self {
            child,
            input,
            output,
        };
        session.echo("opened")?;
        Ok(session)
    }

    /// Sends `line` and reads it back.
    fn echo(&mut self, line: &str) -> Result<()> {
        use std::io::BufRead as _;
        writeln!(self.input, "{line}")?;
        self.input.flush()?;
        let mut back = String::new();
        self.output.read_line(&mut back)?;
        ensure!(back.trim_end() == line, "sent {line:?}, read back {back:?}");
        Ok(())
    }

    /// Ends the session the way a person does, and checks that ssh exits well.
    fn close(self) -> Result<()> {
        let Self {
            mut child, input, ..
        } = self;
        drop(input);
        let status = child.wait()?;
        ensure!(status.success(), "ssh exited with {status}");
        Ok(())
    }
}

impl Site {
    /// `sekisho tunnel BOX` as alice until the proxy refuses it as `agent_offline` (exit 12),
    /// within `within`; its message. A stream opened meanwhile (before the agent's stop took
    /// effect, say) is fine; any other failure is not.
    fn tunnel_until_offline(&self, within: Duration) -> Result<String> {
        let token = self.proxy.user_token(ALICE)?;
        let deadline = Instant::now() + within;
        loop {
            let output = self.tunnel(BOX, Some(&token)).output()?;
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            match output.status.code() {
                Some(12) => return Ok(stderr),
                Some(0) if Instant::now() < deadline => {}
                code => bail!("exit {code:?} instead of 12: {stderr}"),
            }
        }
    }
}

#[test]
fn a_stopping_agent_keeps_its_open_session_and_refuses_new_streams_as_draining() -> Result<()> {
    let mut site = Site::new()?;
    let mut session = Session::open(&site)?;
    site.agents[0].signal("TERM")?;
    let refused = site.tunnel_until_offline(Duration::from_secs(5))?;
    ensure!(refused.contains("draining"), "the refusal says: {refused}");
    // The refusal cut nothing: the session goes on within the agent's grace period.
    session.echo("still open after a refused stream")?;
    ensure!(!site.agents[0].exited());
    session.close()?;
    // With its last stream done, the agent leaves before its grace period is over.
    wait_until(Duration::from_secs(8), || site.agents[0].exited())
        .context("the agent did not exit once its last stream ended")?;
    Ok(())
}

#[test]
fn a_stopping_agents_new_streams_go_to_its_twin_while_its_session_goes_on() -> Result<()> {
    let mut site = Site::new()?;
    // The session is on the first agent, the only one yet.
    let mut session = Session::open(&site)?;
    let key = site.nas_key.clone();
    site.start_agent(&key)?;
    site.proxy
        .wait_for_links("nas", 2, Duration::from_secs(20))?;
    site.agents[0].signal("TERM")?;
    for round in 0..4 {
        let output = run(&mut site.ssh("echo twin")?)?;
        ensure!(stdout(&output).trim() == "twin", "round {round}");
        session.echo(&format!("still open after round {round}"))?;
    }
    session.close()?;
    wait_until(Duration::from_secs(8), || site.agents[0].exited())
        .context("the stopping agent did not exit once its last stream ended")?;
    ensure!(!site.agents[1].exited());
    Ok(())
}

/// `sekisho_agent_links_unresponsive_total` as the proxy counts it now.
fn unresponsive_links(site: &Site) -> Result<u64> {
    let metrics = site.proxy.metrics()?;
    let line = metrics
        .lines()
        .find(|line| line.starts_with("sekisho_agent_links_unresponsive_total "))
        .context("no sekisho_agent_links_unresponsive_total")?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

#[test]
fn a_frozen_agents_new_streams_succeed_on_its_healthy_twin() -> Result<()> {
    let mut site = Site::new()?;
    let key = site.nas_key.clone();
    site.start_agent(&key)?;
    site.proxy
        .wait_for_links("nas", 2, Duration::from_secs(20))?;
    site.agents[0].signal("STOP")?;
    // Links are taken in turn: among four streams, some are sent to the frozen agent first.
    for round in 0..4 {
        let started = Instant::now();
        let output = run(&mut site.ssh("echo twin")?)?;
        ensure!(stdout(&output).trim() == "twin", "round {round}");
        eprintln!("round {round}: {:?}", started.elapsed());
    }
    // The frozen link was found out by its check, not by the keep-alive, and is gone.
    ensure!(unresponsive_links(&site)? == 1);
    ensure!(site.proxy.agent_links("nas") == 1);
    site.agents[0].signal("CONT")?;
    Ok(())
}

/// How long after a stream is asked for a hung link must be found: the check's 0.5 s of
/// waiting and 2.5 s for an answer, and a little for the CLI to start and say so.
const HUNG_FOUND_WITHIN: Duration = Duration::from_millis(4500);

#[test]
fn a_black_holed_link_is_found_within_3_s_by_a_stream_waiting_on_it() -> Result<()> {
    let site = Site::new()?;
    // Whatever the segment sends to the proxy is dropped from now on, without a word.
    run(site.segment.command("ip").args([
        "route",
        "add",
        "blackhole",
        &format!("{}/32", site.segment.host_ip),
    ]))?;
    let started = Instant::now();
    let output = site
        .tunnel(BOX, Some(&site.proxy.user_token(ALICE)?))
        .output()?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(12),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    ensure!(stderr.contains("stopped answering"), "{stderr}");
    // Found by the check, long before the keep-alive (5 s + 5 s) would have.
    ensure!(took < HUNG_FOUND_WITHIN, "the stream waited {took:?}");
    ensure!(unresponsive_links(&site)? == 1);
    ensure!(site.proxy.agent_links("nas") == 0);
    Ok(())
}

#[test]
fn removing_the_agents_key_cuts_its_open_streams() -> Result<()> {
    let site = Site::new()?;
    // A remote command that would run for a minute: the open stream the removal must cut.
    let mut long = site.ssh("echo started; sleep 60; echo not cut")?;
    long.stdout(Stdio::piped());
    let mut session = long.spawn()?;
    let mut first = [0u8; 8];
    session
        .stdout
        .as_mut()
        .context("stdout is piped")?
        .read_exact(&mut first)?;
    ensure!(&first == b"started\n");

    // The configuration keeps the agent's name but not its key.
    let (_, other) = agent_key(site.keys.path(), "other")?;
    site.proxy
        .rewrite(&site.pki, &config(&[&other], &site.rogue_public))?;
    site.proxy
        .wait_for_links("nas", 0, Duration::from_secs(10))?;

    let exited = wait_until(Duration::from_secs(15), || {
        matches!(session.try_wait(), Ok(Some(_)))
    });
    if exited.is_err() {
        let _ = session.kill();
    }
    exited.context("the ssh session outlived its agent's removal")?;
    let mut rest = String::new();
    session
        .stdout
        .as_mut()
        .context("stdout is piped")?
        .read_to_string(&mut rest)?;
    ensure!(
        !rest.contains("not cut"),
        "the remote command finished: {rest}"
    );

    // New tunnels to the host now say the agent is offline.
    let output = site
        .tunnel(BOX, Some(&site.proxy.user_token(ALICE)?))
        .output()?;
    ensure!(
        output.status.code() == Some(12),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(String::from_utf8_lossy(&output.stderr).contains("agent"));
    Ok(())
}

#[test]
fn with_two_agents_of_one_site_the_other_takes_over_when_one_dies() -> Result<()> {
    let mut site = Site::new()?;
    let key = site.nas_key.clone();
    site.start_agent(&key)?;
    site.proxy
        .wait_for_links("nas", 2, Duration::from_secs(20))?;
    // Streams keep working while both are connected.
    for _ in 0..4 {
        let output = run(&mut site.ssh("echo shared")?)?;
        ensure!(stdout(&output).trim() == "shared");
    }
    site.agents[0].kill();
    site.proxy
        .wait_for_links("nas", 1, Duration::from_secs(20))?;
    for _ in 0..3 {
        let output = run(&mut site.ssh("echo survivor")?)?;
        ensure!(stdout(&output).trim() == "survivor");
    }
    ensure!(!site.agents[1].exited());
    Ok(())
}

#[test]
fn refusals_have_their_own_exit_codes_and_messages() -> Result<()> {
    let site = Site::new()?;
    let alice = site.proxy.user_token(ALICE)?;
    let bob = site.proxy.user_token("bob@sekisho.test")?;
    for (host, token, code, words) in [
        (BOX, None, 10, "not logged in"),
        (
            BOX,
            Some("not-a-token"),
            20,
            "refused the token in SEKISHO_TOKEN",
        ),
        (BOX, Some(bob.as_str()), 11, "not allowed"),
        (
            "nowhere.ssh.sekisho.test",
            Some(alice.as_str()),
            15,
            "no tunnel",
        ),
        (
            "closed.ssh.sekisho.test",
            Some(alice.as_str()),
            13,
            "not configured",
        ),
        ("rogue.ssh.sekisho.test", Some(alice.as_str()), 12, "agent"),
    ] {
        let output = site.tunnel(host, token).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(code) && stderr.contains(words),
            "{host} with {token:?}: exit {:?}, stderr {stderr}",
            output.status.code()
        );
        ensure!(
            output.stdout.is_empty(),
            "stdout is ssh's: {:?}",
            output.stdout
        );
    }
    // A proxy that is not there: nothing listens on the address (19, connection refused).
    let mut unreachable = Command::new(binary("sekisho"));
    unreachable
        .arg("--ca")
        .arg(&site.pki.ca_file)
        .args(["--connect-to", "127.0.0.1:1", "tunnel", BOX])
        .env("SEKISHO_TOKEN", &alice)
        .stdin(Stdio::null());
    let output = unreachable.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(19) && stderr.contains("connection refused"),
        "exit {:?}, stderr {stderr}",
        output.status.code()
    );
    Ok(())
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the proxy for `host`.
fn tls(site: &Site, host: &str) -> Result<Tls> {
    let conn =
        rustls::ClientConnection::new(site.pki.client_config()?, host.to_owned().try_into()?)?;
    let tcp = TcpStream::connect(site.proxy.addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends `head` (a request head without the blank line) and reads the answer's head.
fn exchange(stream: &mut Tls, head: &str) -> Result<String> {
    write!(stream, "{head}\r\n\r\n")?;
    stream.flush()?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") && answer.len() < 8192 {
        stream.read_exact(&mut byte)?;
        answer.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A TLS connection to the proxy that passed the agent handshake as `rogue`.
fn rogue_link(site: &Site) -> Result<Tls> {
    let key_pem = std::fs::read_to_string(site.keys.path().join("rogue.key"))?;
    let key = sekisho_wire::agent_auth::AgentKey::from_pem(&key_pem)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let credential = key.credential(PROXY_HOST, "rogue", now)?;
    let (stream, head) = agent_request(site, &credential.to_string())?;
    ensure!(
        head.starts_with("HTTP/1.1 101"),
        "rogue not admitted: {head}"
    );
    site.proxy
        .wait_for_links("rogue", 1, Duration::from_secs(10))?;
    Ok(stream)
}

/// Reads until the proxy closes the connection; how long that took.
fn closed_within(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(started.elapsed()),
            Ok(_) => {}
        }
    }
    anyhow::bail!("the proxy kept the connection open for {limit:?}")
}

#[test]
fn a_peer_sending_garbage_or_oversized_frames_is_cut_off_alone() -> Result<()> {
    let site = Site::new()?;
    // A stream that stays open for 3 s, across both attacks: what must not notice them.
    let mut long = site.ssh("echo started; sleep 3; echo finished")?;
    long.stdout(Stdio::piped());
    let session = long.spawn()?;

    // Garbage where the HTTP/2 server preface belongs.
    let mut garbage = rogue_link(&site)?;
    garbage.write_all(&[0x42; 4096])?;
    garbage.flush()?;
    closed_within(&mut garbage, Duration::from_secs(10))?;
    site.proxy
        .wait_for_links("rogue", 0, Duration::from_secs(5))?;

    // A valid preface (empty SETTINGS), then a DATA frame far over the 64 KiB frame limit.
    let mut oversized = rogue_link(&site)?;
    oversized.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])?;
    oversized.write_all(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1])?;
    oversized.write_all(&[0u8; 8192])?;
    oversized.flush()?;
    closed_within(&mut oversized, Duration::from_secs(10))?;
    site.proxy
        .wait_for_links("rogue", 0, Duration::from_secs(5))?;

    // The real agent and the stream on it never noticed.
    let output = session.wait_with_output()?;
    ensure!(output.status.success(), "the session failed: {output:?}");
    ensure!(stdout(&output) == "started\nfinished\n");
    ensure!(site.proxy.agent_links("nas") == 1);
    Ok(())
}

#[test]
fn a_peer_that_stops_reading_is_cut_off_by_the_keepalive() -> Result<()> {
    let site = Site::new()?;
    // It answers with SETTINGS, then never reads again: the proxy's PINGs go unanswered.
    let mut silent = rogue_link(&site)?;
    silent.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])?;
    silent.flush()?;
    let tcp = silent.get_ref().try_clone()?;
    let started = Instant::now();
    wait_until(Duration::from_secs(30), || {
        site.proxy.agent_links("rogue") == 0
    })
    .context("the silent peer was never cut off")?;
    let took = started.elapsed();
    eprintln!("the silent peer was cut off after {took:?}");
    ensure!(
        took >= sekisho_wire::KEEPALIVE_INTERVAL,
        "cut off before a ping could time out ({took:?})"
    );
    drop(tcp);
    let output = run(&mut site.ssh("echo unaffected")?)?;
    ensure!(stdout(&output).trim() == "unaffected");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `remote` over ssh with `token`, waits for its first line, calls `then`, and returns
/// how long the session lasted after that and what ssh printed on stderr.
fn cut_session(
    site: &Site,
    token: &str,
    then: impl FnOnce() -> Result<()>,
) -> Result<(Duration, String)> {
    // A remote command that would run for a minute: the open stream `then` must cut.
    let mut command = site.sshd.ssh(
        &site.proxy_command(),
        BOX,
        "echo started; sleep 60; echo not cut",
    );
    command
        .env("SEKISHO_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut session = command.spawn()?;
    let mut first = [0u8; 8];
    session
        .stdout
        .as_mut()
        .context("stdout is piped")?
        .read_exact(&mut first)?;
    ensure!(&first == b"started\n");
    then()?;
    let started = Instant::now();
    if wait_until(Duration::from_secs(20), || {
        matches!(session.try_wait(), Ok(Some(_)))
    })
    .is_err()
    {
        let _ = session.kill();
        anyhow::bail!("the session was not cut");
    }
    let output = session.wait_with_output()?;
    ensure!(!stdout(&output).contains("not cut"));
    Ok((
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn a_policy_that_stops_allowing_the_person_cuts_the_tunnel_and_says_why() -> Result<()> {
    let site = Site::new()?;
    let token = site.proxy.user_token(ALICE)?;
    let (took, stderr) = cut_session(&site, &token, || {
        let config = config(&[&site.nas_public], &site.rogue_public).replace(
            &format!("{{email: {ALICE}}}"),
            "{email: carol@sekisho.test}",
        );
        site.proxy.rewrite(&site.pki, &config)
    })?;
    eprintln!("cut {took:?} after the policy changed");
    ensure!(
        stderr.contains("the proxy closed the tunnel: the policy no longer allows you here"),
        "ssh's stderr: {stderr}"
    );
    Ok(())
}

#[test]
fn a_tunnel_closes_when_the_session_behind_its_token_ends() -> Result<()> {
    let site = Site::new()?;
    let token = site.proxy.user_token(ALICE)?;
    let (_, stderr) = cut_session(&site, &token, || site.proxy.revoke(ALICE))?;
    ensure!(
        stderr.contains("the proxy closed the tunnel: the login expired or was revoked"),
        "ssh's stderr: {stderr}"
    );
    Ok(())
}

#[test]
fn a_tunnel_closes_when_its_token_expires() -> Result<()> {
    let site = Site::new()?;
    let token = site
        .proxy
        .user_token_expiring(ALICE, Duration::from_secs(4))?;
    let (_, stderr) = cut_session(&site, &token, || Ok(()))?;
    ensure!(
        stderr.contains("the proxy closed the tunnel: the login expired"),
        "ssh's stderr: {stderr}"
    );
    Ok(())
}

/// Opens a tunnel to BOX by hand with `token`: the stream, and its id from the `101`.
fn raw_tunnel(site: &Site, token: &str) -> Result<(Tls, String)> {
    let host = format!("{BOX}:{}", site.proxy.addr.port());
    let mut stream = tls(site, BOX)?;
    let head = exchange(
        &mut stream,
        &format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: upgrade\r\nUpgrade: {}\r\nAuthorization: Bearer {token}",
            sekisho_wire::TUNNEL_PATH,
            sekisho_wire::TUNNEL_PROTOCOL,
        ),
    )?;
    ensure!(head.starts_with("HTTP/1.1 101"), "tunnel refused: {head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("sekisho-stream: "))
        .context("the 101 names no stream")?
        .trim()
        .to_owned();
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner)?;
    ensure!(&banner == b"SSH-", "sshd did not greet: {banner:?}");
    Ok((stream, id))
}

/// One request on a new connection that the proxy closes after answering; the whole answer.
fn ask(site: &Site, head: &str) -> Result<String> {
    let mut stream = tls(site, BOX)?;
    write!(stream, "{head}\r\nConnection: close\r\n\r\n")?;
    stream.flush()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Ok(answer)
}

#[test]
fn a_renewed_token_keeps_an_open_tunnel_open_and_only_its_owner_may_renew() -> Result<()> {
    let site = Site::new()?;
    let host = format!("{BOX}:{}", site.proxy.addr.port());
    let short = || {
        site.proxy
            .user_token_expiring(ALICE, Duration::from_secs(3))
    };
    let (_renewed, renewed_id) = raw_tunnel(&site, &short()?)?;
    let (_left, left_id) = raw_tunnel(&site, &short()?)?;

    let renew = |id: &str, token: &str| {
        ask(
            &site,
            &format!(
                "POST {} HTTP/1.1\r\nHost: {host}\r\nsekisho-stream: {id}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0",
                sekisho_wire::TUNNEL_RENEW_PATH
            ),
        )
    };
    let bob = site.proxy.user_token("bob@sekisho.test")?;
    let status_line = |answer: String| answer.lines().next().unwrap_or_default().to_owned();
    ensure!(
        status_line(renew(&renewed_id, &bob)?).contains(" 403 "),
        "bob renewed alice's stream"
    );
    let alice = site.proxy.user_token(ALICE)?;
    ensure!(status_line(renew(&"0".repeat(32), &alice)?).contains(" 404 "));
    ensure!(status_line(renew(&renewed_id, &alice)?).contains(" 204 "));

    let status = |id: &str| {
        ask(
            &site,
            &format!(
                "GET {}?stream={id} HTTP/1.1\r\nHost: {host}",
                sekisho_wire::TUNNEL_STATUS_PATH
            ),
        )
    };
    // The stream left alone closes when its token expires; the renewed one's first token was
    // issued before that one, so by then it would have closed too without the renewal.
    wait_until(Duration::from_secs(20), || {
        status(&left_id).is_ok_and(|left| left.contains(r#""state":"closed""#))
    })
    .context("the stream whose token expired is closed")?;
    let left = status(&left_id)?;
    ensure!(left.contains("not_logged_in"), "{left}");
    let renewed = status(&renewed_id)?;
    ensure!(renewed.contains(r#""state":"open""#), "{renewed}");
    Ok(())
}

/// Sends an agent connect request with `credential` as its header: the connection and the
/// answer's head.
fn agent_request(site: &Site, credential: &str) -> Result<(Tls, String)> {
    let mut stream = tls(site, PROXY_HOST)?;
    let head = exchange(
        &mut stream,
        &format!(
            "GET {} HTTP/1.1\r\nHost: {PROXY_HOST}\r\nConnection: upgrade\r\nUpgrade: {}\r\n{}: {credential}",
            sekisho_wire::AGENT_CONNECT_PATH,
            sekisho_wire::AGENT_PROTOCOL,
            sekisho_wire::AGENT_AUTH_HEADER,
        ),
    )?;
    Ok((stream, head))
}

/// The status line of an agent connect request with `credential`.
fn agent_connect(site: &Site, credential: &str) -> Result<String> {
    let (_, head) = agent_request(site, credential)?;
    Ok(head.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn agent_credentials_cannot_be_replayed_borrowed_or_forged() -> Result<()> {
    let site = Site::new()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let rogue = sekisho_wire::agent_auth::AgentKey::from_pem(&std::fs::read_to_string(
        site.keys.path().join("rogue.key"),
    )?)?;

    // A captured header works once, then never again.
    let captured = rogue.credential(PROXY_HOST, "rogue", now)?.to_string();
    ensure!(agent_connect(&site, &captured)?.contains(" 101 "));
    let replayed = agent_connect(&site, &captured)?;
    ensure!(
        replayed.contains(" 401 "),
        "a replay was admitted: {replayed}"
    );

    // rogue's key does not make it nas; a statement for another host or an old one fails;
    // an unknown agent and garbage are refused.
    for (what, credential) in [
        (
            "another agent's name",
            rogue.credential(PROXY_HOST, "nas", now)?.to_string(),
        ),
        (
            "another host",
            rogue.credential("evil.example", "rogue", now)?.to_string(),
        ),
        (
            "an old statement",
            rogue
                .credential(PROXY_HOST, "rogue", now - 600)?
                .to_string(),
        ),
        (
            "an unknown agent",
            rogue.credential(PROXY_HOST, "ghost", now)?.to_string(),
        ),
        (
            "garbage",
            "v1 name=rogue ts=1 nonce=AAAA sig=AAAA".to_owned(),
        ),
    ] {
        let status = agent_connect(&site, &credential)?;
        ensure!(status.contains(" 401 "), "{what} was admitted: {status}");
    }
    ensure!(site.proxy.agent_links("nas") == 1);
    Ok(())
}

/// `sekisho tunnel BOX` as `person`, its input held open, once sshd's banner came through.
fn open_tunnel(site: &Site, person: &str) -> Result<std::process::Child> {
    tunnel_to_sshd(site.tunnel(BOX, Some(&site.proxy.user_token(person)?)))
}

/// Starts `command` (a `sekisho tunnel` to sshd) with its input held open; the running tunnel
/// once sshd's banner came through it.
fn tunnel_to_sshd(mut command: Command) -> Result<std::process::Child> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tunnel = command.spawn()?;
    let mut banner = [0u8; 8];
    tunnel
        .stdout
        .as_mut()
        .context("stdout is piped")?
        .read_exact(&mut banner)
        .context("the tunnel brought no banner from sshd")?;
    ensure!(&banner == b"SSH-2.0-", "the tunnel brought {banner:?}");
    Ok(tunnel)
}

/// Waits for the tunnel to exit by itself (its input still open): its exit code and stderr.
fn ended(mut tunnel: std::process::Child) -> Result<(Option<i32>, String)> {
    if wait_until(Duration::from_secs(20), || {
        matches!(tunnel.try_wait(), Ok(Some(_)))
    })
    .is_err()
    {
        let _ = tunnel.kill();
        anyhow::bail!("the tunnel did not end");
    }
    let output = tunnel.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        !stderr.contains("://") && !stderr.contains("os error"),
        "library words in the message: {stderr}"
    );
    Ok((output.status.code(), stderr))
}

/// The proxy's one `tunnel closed` event for `person`'s stream, once it is there.
fn stream_end(events: &AccessEvents, person: &str) -> Result<serde_json::Value> {
    let mut ends = Vec::new();
    wait_until(Duration::from_secs(10), || {
        ends = events.matching("tunnel closed", "user", person);
        !ends.is_empty()
    })
    .with_context(|| format!("no `tunnel closed` event for {person}"))?;
    ensure!(
        ends.len() == 1,
        "more than one end for one stream: {ends:?}"
    );
    let end = ends.remove(0);
    ensure!(
        end["host"] == BOX && end["agent"] == "nas" && end["duration_ms"].is_u64(),
        "{end}"
    );
    Ok(end)
}

#[test]
fn a_tunnel_under_which_the_proxy_stops_says_the_proxy_went_away() -> Result<()> {
    let events = AccessEvents::capture();
    let mut site = Site::with("limits:\n  shutdown_grace: 2s\n")?;
    let tunnel = open_tunnel(&site, PROXY_STOPS)?;
    site.proxy.stop();
    let (code, stderr) = ended(tunnel)?;
    ensure!(
        code == Some(21)
            && stderr
                == "sekisho: the proxy went away (it restarted, or the connection to it was \
                    cut); run the command again\n",
        "exit {code:?}, stderr {stderr}"
    );
    let end = stream_end(events, PROXY_STOPS)?;
    ensure!(end["cause"] == "proxy_shutdown", "{end}");
    ensure!(end["to_client"].as_u64() > Some(8), "sshd's banner: {end}");
    Ok(())
}

#[test]
fn a_tunnel_whose_agent_dies_says_the_agent_went_away() -> Result<()> {
    let events = AccessEvents::capture();
    let mut site = Site::new()?;
    let tunnel = open_tunnel(&site, AGENT_DIES)?;
    site.agents[0].kill();
    let (code, stderr) = ended(tunnel)?;
    ensure!(
        code == Some(22)
            && stderr.starts_with("sekisho: the agent for this host went away")
            && stderr.lines().count() == 1,
        "exit {code:?}, stderr {stderr}"
    );
    let end = stream_end(events, AGENT_DIES)?;
    ensure!(end["cause"] == "agent_gone", "{end}");
    let metrics = site.proxy.metrics()?;
    ensure!(
        metrics
            .lines()
            .any(|line| line == r#"sekisho_tunnel_stream_ends_total{cause="agent_gone"} 1"#),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn a_tunnel_whose_target_closes_exits_with_success_and_says_nothing() -> Result<()> {
    let events = AccessEvents::capture();
    let site = Site::new()?;
    let mut tunnel = open_tunnel(&site, TARGET_CLOSES)?;
    // Not the SSH protocol: sshd says so and closes the connection.
    tunnel
        .stdin
        .as_mut()
        .context("stdin is piped")?
        .write_all(b"not ssh\r\n")?;
    let (code, stderr) = ended(tunnel)?;
    ensure!(
        code == Some(0) && stderr.is_empty(),
        "exit {code:?}, stderr {stderr}"
    );
    let end = stream_end(events, TARGET_CLOSES)?;
    ensure!(end["cause"] == "target_closed", "{end}");
    ensure!(end["to_target"] == 9, "the 9 bytes sent: {end}");
    ensure!(end["to_client"].as_u64() > Some(8), "sshd's banner: {end}");
    Ok(())
}

/// A TCP relay to the proxy that can be cut: its connections end without a TLS close, and
/// nothing listens at its address any more, as when the proxy's process is killed.
struct Cuttable {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    sockets: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl Cuttable {
    fn to(proxy: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sockets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, kept) = (cut.clone(), sockets.clone());
        let accepting = std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(proxy) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (mut from, mut to) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(from, to)| Some((from.ok()?, to.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend([client, upstream]);
            }
        });
        Ok(Self {
            addr,
            cut,
            sockets,
            accepting: Some(accepting),
        })
    }

    /// Closes every connection and the listener.
    fn cut(&mut self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
        for socket in self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
fn a_tunnel_whose_proxy_vanishes_without_a_tls_close_says_the_proxy_went_away() -> Result<()> {
    let site = Site::new()?;
    let mut relay = Cuttable::to(site.proxy.addr)?;
    let mut command = Command::new(binary("sekisho"));
    command
        .arg("--ca")
        .arg(&site.pki.ca_file)
        .args(["--connect-to", &relay.addr.to_string()])
        .args(["tunnel", "--no-login"])
        .arg(format!("{BOX}:{}", site.proxy.addr.port()))
        .env("SEKISHO_TOKEN", site.proxy.user_token(ALICE)?);
    let tunnel = tunnel_to_sshd(command)?;
    relay.cut();
    let (code, stderr) = ended(tunnel)?;
    ensure!(
        code == Some(21) && stderr.starts_with("sekisho: the proxy went away"),
        "exit {code:?}, stderr {stderr}"
    );
    ensure!(!stderr.contains("close_notify"), "rustls's words: {stderr}");
    Ok(())
}
