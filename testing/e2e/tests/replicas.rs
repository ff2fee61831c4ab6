//! Two proxy replicas in Kubernetes mode, each its own `sekisho-proxy` process on a real
//! kube-apiserver, with one agent: ssh through the replica that does not hold the agent is
//! relayed to the one that does, and when the holder is killed the agent is back on the other
//! and ssh goes on; a rolling restart of both replicas under steady HTTP/1.1 and HTTP/2 load
//! fails no request; an idle ssh session through the replica without the agent survives that
//! replica's restart and its death. The agent, the load and the session reach the replicas
//! through a stand-in for their Service ([`Front`]).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use sekisho_e2e::load::{Load, Protocol, Sender, ok_upstream};
use sekisho_e2e::{
    EchoSession, PROXY_HOST, Pki, Process, Segment, Sshd, admin_get, agent_key, binary, run,
    wait_until,
};

const ALICE: &str = "alice@sekisho.test";

/// One gate: the control plane's namespace for it, two replicas, the segment with sshd and
/// the agent, and the front the agent dials.
struct Gate {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
    pki: Pki,
    segment: Segment,
    sshd: Sshd,
    /// The agent's name (Agents are named cluster-wide: one per test).
    agent: String,
    /// The tunnel's host.
    host: String,
    /// The Ingress's host, served by an upstream that answers `ok`.
    web: String,
    /// Where the replicas run.
    setup: Setup,
    replicas: Vec<Replica>,
    front: Front,
    _pods: sekisho_testkit::PodNetwork,
    _dir: tempfile::TempDir,
    _agent: Process,
}

/// What starting a replica needs.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
}

/// One `sekisho-proxy` process.
struct Replica {
    process: Process,
    /// Its configuration file.
    config: PathBuf,
    https: SocketAddr,
    admin: SocketAddr,
}

impl Gate {
    /// Two replicas, and the front: to the first replica that accepts a connection when
    /// `ready_only` is false (so the agent lands on the first), else to the ready ones in turn.
    fn start(prefix: &str, ready_only: bool) -> Result<Self> {
        let runtime = tokio::runtime::Runtime::new()?;
        let env = runtime.block_on(kube_testenv::TestEnv::shared())?;
        let client = runtime.block_on(env.client())?;
        runtime.block_on(env.install_crds(&sekisho_api::crd::all(), "sekisho-e2e"))?;
        let namespace = runtime.block_on(env.namespace(prefix))?;
        let pki = Pki::new(&["*.ssh.sekisho.test", PROXY_HOST, "auth.sekisho.test"])?;
        let segment = Segment::new()?;
        let sshd = Sshd::start(&segment)?;
        let dir = tempfile::tempdir()?;
        let agent = format!("nas-{namespace}");
        let host = format!("{namespace}.ssh.sekisho.test");
        let web = format!("web-{namespace}.ssh.sekisho.test");
        let pods = sekisho_testkit::PodNetwork::new()?;
        let (upstream, _) = ok_upstream(pods.listen(false)?)?;

        // What every replica shares: the keys, the certificate, the objects.
        let session_keys = dir.path().join("session-keys");
        let signing_keys = dir.path().join("signing-keys");
        for (kind, file) in [("session", &session_keys), ("signing", &signing_keys)] {
            run(Command::new(binary("sekisho-proxy"))
                .args(["keys", kind])
                .arg(file))?;
        }
        let config = dir.path().join("static.yaml");
        std::fs::write(
            &config,
            format!(
                "workers: 1\naccess_log: false\nlimits: {{shutdown_grace: 5s}}\nidentity:\n  \
                 auth_host: auth.sekisho.test\n  session_keys_file: {}\n  signing_keys_file: {}\n",
                session_keys.display(),
                signing_keys.display()
            ),
        )?;
        let (key_file, public_key) = agent_key(dir.path(), "nas")?;
        runtime.block_on(objects(
            &client,
            &namespace,
            &pki,
            &agent,
            &host,
            &public_key,
        ))?;
        runtime.block_on(web_objects(&client, &namespace, &web, upstream))?;

        let setup = Setup {
            dir: dir.path().to_path_buf(),
            config,
            kubeconfig: env.admin_kubeconfig().to_path_buf(),
            namespace: namespace.clone(),
        };
        let mut replicas = Vec::new();
        for name in ["a", "b"] {
            let https = SocketAddr::from((segment.host_ip, free_port(segment.host_ip.into())?));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1].into())?));
            replicas.push(setup.replica(name, https, admin)?);
        }
        for replica in &replicas {
            wait_until(Duration::from_secs(60), || replica.ready())
                .context("a replica did not become ready")?;
        }
        let front = Front::start(
            IpAddr::V4(segment.host_ip),
            replicas.iter().map(|r| (r.https, r.admin)).collect(),
            ready_only,
        )?;
        let agent_process = segment.agent(&agent, &key_file, front.addr, &pki.ca_file)?;
        Ok(Self {
            runtime,
            client,
            namespace,
            pki,
            segment,
            sshd,
            _dir: dir,
            agent,
            host,
            web,
            setup,
            replicas,
            front,
            _pods: pods,
            _agent: agent_process,
        })
    }

    /// A user token for alice, signed with the replicas' shared signing key.
    fn token(&self) -> Result<String> {
        self.token_for(ALICE)
    }

    /// A user token for `person`.
    fn token_for(&self, person: &str) -> Result<String> {
        let output = run(Command::new(binary("sekisho-proxy"))
            .arg("--config")
            .arg(&self.replicas[1].config)
            .args(["dev-token", "--subject", person, "--email", person]))?;
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// `sekisho tunnel` through `address` as ssh's `ProxyCommand`.
    fn proxy_command(&self, address: SocketAddr) -> String {
        format!(
            "{} --ca {} --connect-to {address} tunnel %h:{}",
            binary("sekisho").display(),
            self.pki.ca_file.display(),
            address.port()
        )
    }

    /// `ssh root@HOST remote` as alice, through `replica`.
    fn ssh(&self, replica: &Replica, remote: &str) -> Result<Command> {
        self.ssh_through(replica.https, remote)
    }

    /// `ssh root@HOST remote` as alice, through `address` (a replica, or the front).
    fn ssh_through(&self, address: SocketAddr, remote: &str) -> Result<Command> {
        let mut command = self
            .sshd
            .ssh(&self.proxy_command(address), &self.host, remote);
        command.env("SEKISHO_TOKEN", self.token()?);
        Ok(command)
    }

    /// Waits until the first replica holds the agent, and its Lease says so.
    fn agent_on_the_first_replica(&self) -> Result<()> {
        let (a, b) = (&self.replicas[0], &self.replicas[1]);
        // The front sends every connection to the first replica while it lives.
        wait_until(Duration::from_secs(20), || a.links(&self.agent) >= 1.0)
            .context("the agent did not connect to the first replica")?;
        ensure!(
            b.links(&self.agent) == 0.0,
            "the second replica holds the agent too"
        );
        wait_until(Duration::from_secs(20), || {
            self.leases()
                .is_ok_and(|leases| leases.iter().any(|l| l.split(',').any(|n| n == self.agent)))
        })
        .context("the first replica's Lease does not list the agent")
    }

    /// Stops replica `i` with SIGTERM, and starts it again on the same addresses once it has
    /// exited.
    fn restart(&mut self, i: usize, name: &str) -> Result<()> {
        let (https, admin) = (self.replicas[i].https, self.replicas[i].admin);
        self.replicas[i].process.signal("TERM")?;
        wait_until(Duration::from_secs(60), || {
            self.replicas[i].process.exited()
        })
        .with_context(|| format!("replica {name} did not stop within 60 s of SIGTERM"))?;
        self.replicas[i] = self.setup.replica(name, https, admin)?;
        Ok(())
    }

    /// Waits until a tunnel through `replica` reaches sshd (its banner comes back).
    fn reachable_through(&self, replica: &Replica, within: Duration) -> Result<()> {
        let token = self.token()?;
        wait_until(within, || {
            let output = Command::new(binary("sekisho"))
                .arg("--ca")
                .arg(&self.pki.ca_file)
                .args(["--connect-to", &replica.https.to_string()])
                .args(["tunnel", "--no-login"])
                .arg(format!("{}:{}", self.host, replica.https.port()))
                .env("SEKISHO_TOKEN", &token)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            output.is_ok_and(|o| o.stdout.starts_with(b"SSH-"))
        })
    }

    /// The names of the agents each replica's Lease says it holds.
    fn leases(&self) -> Result<Vec<String>> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let leases = self
            .runtime
            .block_on(api.list(&ListParams::default().labels("sekisho.dev/replica")))?;
        Ok(leases
            .items
            .iter()
            .filter_map(|l| {
                l.metadata
                    .annotations
                    .as_ref()?
                    .get("sekisho.dev/agents")
                    .cloned()
            })
            .collect())
    }
}

/// Creates the test's objects: the certificate Secret, the Agent, a policy letting alice
/// through, and the Tunnel to sshd through the agent.
async fn objects(
    client: &kube::Client,
    namespace: &str,
    pki: &Pki,
    agent: &str,
    host: &str,
    public_key: &str,
) -> Result<()> {
    let create = PostParams::default();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "default-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": std::fs::read_to_string(&pki.cert_file)?,
            "tls.key": std::fs::read_to_string(&pki.key_file)?,
        },
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&create, &secret)
        .await?;
    let agent_object: sekisho_api::Agent = serde_json::from_value(serde_json::json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": agent},
        "spec": {"publicKeys": [public_key]},
    }))?;
    Api::namespaced(client.clone(), namespace)
        .create(&create, &agent_object)
        .await?;
    let policy: sekisho_api::AccessPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "staff"},
        "spec": {"allow": [{"email": ALICE}]},
    }))?;
    Api::namespaced(client.clone(), namespace)
        .create(&create, &policy)
        .await?;
    let tunnel: sekisho_api::Tunnel = serde_json::from_value(serde_json::json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": "box"},
        "spec": {"host": host, "target": "127.0.0.1:22", "agent": agent, "policy": "staff"},
    }))?;
    Api::namespaced(client.clone(), namespace)
        .create(&create, &tunnel)
        .await?;
    Ok(())
}

/// The web site: an IngressClass of the replicas' controller, a Service whose EndpointSlice is
/// `upstream`, and a public Ingress for `host` to it.
async fn web_objects(
    client: &kube::Client,
    namespace: &str,
    host: &str,
    upstream: SocketAddr,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
    let create = PostParams::default();
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": namespace},
        "spec": {"controller": format!("sekisho.dev/e2e-{namespace}")},
    }))?;
    Api::<IngressClass>::all(client.clone())
        .create(&create, &class)
        .await?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&create, &service)
        .await?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-slice", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [upstream.ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        }],
        "ports": [{"name": "http", "port": upstream.port(), "protocol": "TCP"}],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .create(&create, &slice)
        .await?;
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "annotations": {"sekisho.dev/access-policy": "public"}},
        "spec": {
            "ingressClassName": namespace,
            "tls": [{"hosts": [host], "secretName": "default-tls"}],
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}},
            }]}}],
        },
    }))?;
    Api::<Ingress>::namespaced(client.clone(), namespace)
        .create(&create, &ingress)
        .await?;
    Ok(())
}

/// A port the kernel has free on `ip` now.
fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl Setup {
    /// The replicas' logs (every generation's), for a failure's message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["a", "b"] {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            text.push_str(&format!("--- replica {name}:\n{log}"));
        }
        text
    }

    /// Starts replica `name` listening on `https` and `admin`.
    fn replica(&self, name: &str, https: SocketAddr, admin: SocketAddr) -> Result<Replica> {
        let Self {
            dir,
            config,
            kubeconfig,
            namespace,
        } = self;
        let own = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &own,
            format!(
                "listen:\n  https: {https}\n  admin: {admin}\n{}",
                std::fs::read_to_string(config)?
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let child = Command::new(binary("sekisho-proxy"))
            .arg("--config")
            .arg(&own)
            .args(["--log-format", "text", "--kubernetes"])
            .args([
                "--ingress-controller",
                &format!("sekisho.dev/e2e-{namespace}"),
            ])
            .args(["--lease-namespace", namespace])
            .args(["--default-certificate", &format!("{namespace}/default-tls")])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("replica-{name}"))
            .env_remove("POD_IP")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sekisho-proxy")?;
        Ok(Replica {
            process: Process {
                child,
                name: "sekisho-proxy",
            },
            https,
            admin,
            config: own,
        })
    }
}

impl Replica {
    fn get(&self, path: &str) -> Result<String> {
        admin_get(self.admin, path)
    }

    fn ready(&self) -> bool {
        readyz(self.admin)
    }

    /// The value of the series `series` (its whole name with labels), 0 when it is absent.
    fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn links(&self, agent: &str) -> f64 {
        self.metric(&format!("sekisho_agents_connected{{agent=\"{agent}\"}}"))
    }
}

/// The Service in front of the replicas (`https`, `admin`). Either each connection goes to
/// the first replica that accepts it, or, `ready_only`, to the replicas whose `/readyz` said
/// ready at the last look, in turn: looked at every [`ENDPOINTS_EVERY`], as the endpoints
/// controller and the nodes' Service rules learn of a pod that is no longer ready a moment
/// after it. Ends with the test.
struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The replica every connection goes to, when set ([`NOT_PINNED`] otherwise).
    pinned: Arc<AtomicUsize>,
}

const NOT_PINNED: usize = usize::MAX;

/// How often the front learns which replicas are ready.
const ENDPOINTS_EVERY: Duration = Duration::from_secs(1);

impl Front {
    fn start(
        ip: IpAddr,
        replicas: Vec<(SocketAddr, SocketAddr)>,
        ready_only: bool,
    ) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let ready: Arc<Vec<AtomicBool>> = Arc::new(
            replicas
                .iter()
                .map(|_| AtomicBool::new(!ready_only))
                .collect(),
        );
        if ready_only {
            let (ready, stop, replicas) = (ready.clone(), stop.clone(), replicas.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (i, (_, admin)) in replicas.iter().enumerate() {
                        ready[i].store(readyz(*admin), Ordering::Relaxed);
                    }
                    std::thread::sleep(ENDPOINTS_EVERY);
                }
            });
        }
        let stopped = stop.clone();
        let pinned = Arc::new(AtomicUsize::new(NOT_PINNED));
        let pin = pinned.clone();
        std::thread::spawn(move || {
            let mut turn = 0;
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                turn += 1;
                let mut order: Vec<SocketAddr> = replicas
                    .iter()
                    .zip(ready.iter())
                    .filter(|(_, ready)| ready.load(Ordering::Relaxed))
                    .map(|((https, _), _)| *https)
                    .collect();
                if ready_only && !order.is_empty() {
                    let start = turn % order.len();
                    order.rotate_left(start);
                    order.truncate(1);
                }
                if let Some((https, _)) = replicas.get(pin.load(Ordering::Relaxed)) {
                    order = vec![*https];
                }
                std::thread::spawn(move || {
                    let upstream = order.iter().find_map(|replica| {
                        TcpStream::connect_timeout(replica, Duration::from_secs(1)).ok()
                    });
                    if let Some(upstream) = upstream {
                        splice(client, upstream);
                    }
                });
            }
        });
        Ok(Self { addr, stop, pinned })
    }

    /// Sends every connection to replica `i` only (whether it accepts or not), or, `None`, as
    /// before.
    fn pin(&self, i: Option<usize>) {
        self.pinned
            .store(i.unwrap_or(NOT_PINNED), Ordering::Relaxed);
    }
}

/// Whether the admin listener at `admin` says ready.
fn readyz(admin: SocketAddr) -> bool {
    admin_get(admin, "/readyz").is_ok_and(|text| text.starts_with("HTTP/1.1 200"))
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies both ways, each until its side ends or fails, passing the end on as a half close
/// (as the kernel's Service rules would: shutting a socket down both ways while the other side
/// still sends makes its kernel answer RST, and a RST throws away what that side had not read
/// yet, a TLS close among it).
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(mut a_reader), Ok(mut b_reader)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a_writer, mut b_writer) = (a, b);
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a_reader, &mut b_writer);
        let _ = b_writer.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b_reader, &mut a_writer);
    let _ = a_writer.shutdown(std::net::Shutdown::Write);
    let _ = forward.join();
}

#[test]
fn ssh_through_the_replica_without_the_agent_is_relayed_and_works_again_after_the_holder_is_killed()
-> Result<()> {
    let mut gate = Gate::start("relay", false)?;
    gate.agent_on_the_first_replica()?;
    let (a, b) = (&gate.replicas[0], &gate.replicas[1]);
    gate.reachable_through(b, Duration::from_secs(20))
        .context("no tunnel through the second replica")?;

    let output = run(&mut gate.ssh(b, "echo hello from; ip -4 -o addr show")?)?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(text.starts_with("hello from"), "ssh printed {text:?}");
    ensure!(
        text.contains(&gate.segment.ns_ip.to_string()),
        "the command did not run in the segment: {text}"
    );
    ensure!(b.metric(SENT) >= 2.0, "the second replica relayed nothing");
    ensure!(
        a.metric(CARRIED) >= 2.0,
        "the first replica carried nothing"
    );
    ensure!(b.metric(CARRIED) == 0.0 && a.metric(SENT) == 0.0);

    // The holder dies without a word; the agent comes back through the front, on the other.
    let killed = Instant::now();
    gate.replicas[0].process.kill();
    let b = &gate.replicas[1];
    wait_until(Duration::from_secs(5), || b.links(&gate.agent) >= 1.0)
        .context("the agent was not back on the second replica within 5 s")?;
    eprintln!(
        "the agent was back on the other replica {:?} after the holder was killed",
        killed.elapsed()
    );
    let output = run(&mut gate.ssh(b, "echo hello again")?)?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(text.starts_with("hello again"), "ssh printed {text:?}");
    Ok(())
}

const SENT: &str = r#"sekisho_tunnel_relayed_streams_total{role="sent"}"#;
const CARRIED: &str = r#"sekisho_tunnel_relayed_streams_total{role="carried"}"#;
const WAITING: &str = r#"sekisho_tunnel_stream_resumes_total{result="waiting"}"#;
const RESUMED: &str = r#"sekisho_tunnel_stream_resumes_total{result="resumed"}"#;

#[test]
fn an_idle_ssh_session_through_a_relay_survives_the_restart_and_the_death_of_the_replica_it_entered_by()
-> Result<()> {
    let mut gate = Gate::start("resume", false)?;
    gate.agent_on_the_first_replica()?;
    // The session's connections go to the second replica only, which relays them.
    gate.front.pin(Some(1));
    gate.reachable_through(&gate.replicas[1], Duration::from_secs(20))
        .context("no tunnel through the second replica")?;
    let mut session = EchoSession::start(gate.ssh_through(gate.front.addr, "cat")?)?;
    session.echo("before the restart")?;
    ensure!(
        gate.replicas[1].metric(SENT) >= 1.0,
        "the session was not relayed"
    );

    // The second replica restarts: it closes the session's stream at the end of its grace,
    // the first keeps the agent's stream waiting, and the session's `sekisho tunnel` asks for
    // it again through the front, which sends it to the new second replica once it listens.
    gate.restart(1, "b")?;
    session
        .echo("after the restart")
        .with_context(|| gate.setup.logs())?;
    let (a, b) = (&gate.replicas[0], &gate.replicas[1]);
    ensure!(
        a.metric(WAITING) >= 1.0 && a.metric(RESUMED) >= 1.0,
        "the replica holding the agent did not resume the stream"
    );
    ensure!(
        b.metric(SENT) >= 1.0,
        "the new replica did not relay the resumed stream"
    );

    // Then the second replica dies without a word; the front now sends the session to the
    // first, which holds the agent and resumes the stream itself.
    gate.front.pin(None);
    gate.replicas[1].process.kill();
    session
        .echo("after the kill")
        .with_context(|| gate.setup.logs())?;
    ensure!(
        gate.replicas[0].metric(RESUMED) >= 2.0,
        "the replica holding the agent did not resume the stream again"
    );
    let status = session.finish()?;
    ensure!(status.success(), "ssh ended with {status}");
    Ok(())
}

#[test]
fn a_tunnels_renewal_and_status_reach_the_replica_keeping_it_through_the_other() -> Result<()> {
    use sekisho_cli::net::{Net, Origin};
    use sekisho_cli::tunnel;
    let gate = Gate::start("renew", false)?;
    gate.agent_on_the_first_replica()?;
    let (a, b) = (&gate.replicas[0], &gate.replicas[1]);
    let origin = Origin::parse(&format!("{}:{}", gate.host, a.https.port()))?;
    let via_a = Net::new(Some(&gate.pki.ca_file), Some(a.https))?;
    let via_b = Net::new(Some(&gate.pki.ca_file), Some(b.https))?;
    let (token, fresh, mallory) = (
        gate.token()?,
        gate.token()?,
        gate.token_for("mallory@sekisho.test")?,
    );
    gate.runtime.block_on(async {
        let opened = tunnel::open(&via_a, &origin, Some(&token), None).await?;
        let id = opened
            .stream_id
            .clone()
            .context("the proxy named no stream")?;
        tunnel::renew(&via_b, &origin, &id, &fresh)
            .await
            .context("renewing through the replica not keeping the stream")?;
        let status = tunnel::stream_status(&via_b, &origin, &id, Some(&fresh))
            .await
            .context("no status through the replica not keeping the stream")?;
        ensure!(status.state == "open", "{status:?}");
        // Without a token, the other replica does not ask; with another person's, the replica
        // keeping the stream refuses the renewal.
        ensure!(
            tunnel::stream_status(&via_b, &origin, &id, None)
                .await
                .is_none()
        );
        let refused = tunnel::renew(&via_b, &origin, &id, &mallory).await;
        ensure!(
            matches!(refused, Err(tunnel::OpenError::Unexpected(status)) if status == 403),
            "{refused:?}"
        );
        // The client goes away; how the stream ended is told through the other replica too.
        drop(opened);
        for _ in 0..100 {
            let status = tunnel::stream_status(&via_b, &origin, &id, Some(&fresh)).await;
            if let Some(status) = status.filter(|s| s.state == "closed") {
                // The client went away: with a FIN, or with a RST when sshd's banner was still
                // unread in its socket.
                use sekisho_wire::tunnel::StreamEnd::{ClientClosed, ClientFailed};
                ensure!(
                    matches!(status.cause, Some(ClientClosed | ClientFailed)),
                    "{status:?}"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the stream's end was not told through the other replica within 10 s")
    })
}

/// One HTTP/1.1 request to the site through the front; whether it answered 200.
fn site_answers(gate: &Gate) -> bool {
    let Ok(ping) = Load::for_host(&gate.pki, gate.front.addr, &gate.web) else {
        return false;
    };
    gate.runtime.block_on(async {
        let Ok(Sender::Http1(mut sender)) = ping.connect(Protocol::Http1).await else {
            return false;
        };
        sender
            .send_request(ping.request_to(Protocol::Http1, "/ping"))
            .await
            .is_ok_and(|r| r.status() == http::StatusCode::OK)
    })
}

#[test]
fn a_rolling_restart_of_both_replicas_under_steady_http_load_fails_no_request() -> Result<()> {
    let mut gate = Gate::start("rolling", true)?;
    wait_until(Duration::from_secs(30), || site_answers(&gate))
        .context("the site is not served through the front")?;
    let load = Load::for_host(&gate.pki, gate.front.addr, &gate.web)?;
    let clients: Vec<_> = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Http1,
        Protocol::Http2,
    ]
    .into_iter()
    .map(|protocol| gate.runtime.spawn(load.clone().client(protocol)))
    .collect();

    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let before = load.ok();
        gate.restart(i, name)?;
        wait_until(Duration::from_secs(60), || gate.replicas[i].ready())
            .with_context(|| format!("the new replica {name} did not become ready"))?;
        let (now1, now2) = load.ok();
        ensure!(
            now1 > before.0 && now2 > before.1,
            "no requests were answered while replica {name} restarted"
        );
    }
    // A moment on the new replicas, then the load stops.
    let (ok1, ok2) = load.ok();
    wait_until(Duration::from_secs(30), || {
        let (now1, now2) = load.ok();
        now1 > ok1 + 50 && now2 > ok2 + 50
    })
    .context("the load did not go on after the restarts")?;
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        gate.runtime.block_on(client)?;
    }
    let summary = load.summary();
    eprintln!("{summary}");
    ensure!(
        load.failed() == 0,
        "requests failed during the rolling restart:\n{summary}\n{}",
        gate.setup.logs()
    );
    // The clients moved off each stopping replica rather than keeping one connection.
    ensure!(
        load.http1.connections.load(Ordering::Relaxed) > 2
            && load.http2.connections.load(Ordering::Relaxed) > 2,
        "the clients never changed connections:\n{summary}"
    );
    // The agent came through both restarts and is reachable through either replica.
    for replica in &gate.replicas {
        gate.reachable_through(replica, Duration::from_secs(20))
            .context("no tunnel after the rolling restart")?;
    }
    Ok(())
}
