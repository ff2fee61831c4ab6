//! Two proxy replicas in Kubernetes mode, each its own `sekisho-proxy` process on a real
//! kube-apiserver, with one agent: ssh through the replica that does not hold the agent is
//! relayed to the one that does, and when the holder is killed the agent is back on the other
//! and ssh goes on. The agent dials the replicas through a stand-in for their Service
//! ([`Front`]): each connection goes to the first replica that accepts it.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use sekisho_e2e::{PROXY_HOST, Pki, Process, Segment, Sshd, agent_key, binary, run, wait_until};

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
    replicas: Vec<Replica>,
    _dir: tempfile::TempDir,
    _front: Front,
    _agent: Process,
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
    fn start(prefix: &str) -> Result<Self> {
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
                "workers: 1\naccess_log: false\nidentity:\n  auth_host: auth.sekisho.test\n  \
                 session_keys_file: {}\n  signing_keys_file: {}\n",
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

        let mut replicas = Vec::new();
        for name in ["a", "b"] {
            replicas.push(start_replica(
                &dir,
                &config,
                env.admin_kubeconfig(),
                &namespace,
                segment.host_ip,
                name,
            )?);
        }
        for replica in &replicas {
            wait_until(Duration::from_secs(60), || replica.ready())
                .context("a replica did not become ready")?;
        }
        let front = Front::start(
            IpAddr::V4(segment.host_ip),
            replicas.iter().map(|r| r.https).collect(),
        )?;
        let agent_process = segment
            .command(binary("sekisho-agent"))
            .arg("run")
            .args(["--name", &agent])
            .arg("--key")
            .arg(&key_file)
            .args([
                "--proxy",
                &format!("https://{PROXY_HOST}:{}", front.addr.port()),
            ])
            .args(["--proxy-address", &front.addr.to_string()])
            .arg("--ca")
            .arg(&pki.ca_file)
            .args(["--allow-tcp", "127.0.0.1:22"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting sekisho-agent")?;
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
            replicas,
            _front: front,
            _agent: Process {
                child: agent_process,
                name: "sekisho-agent",
            },
        })
    }

    /// A user token for alice, signed with the replicas' shared signing key.
    fn token(&self) -> Result<String> {
        let output = run(Command::new(binary("sekisho-proxy"))
            .arg("--config")
            .arg(&self.replicas[1].config)
            .args(["dev-token", "--subject", ALICE, "--email", ALICE]))?;
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// `sekisho tunnel` through `replica` as ssh's `ProxyCommand`.
    fn proxy_command(&self, replica: &Replica) -> String {
        format!(
            "{} --ca {} --connect-to {} tunnel %h:{}",
            binary("sekisho").display(),
            self.pki.ca_file.display(),
            replica.https,
            replica.https.port()
        )
    }

    /// `ssh root@HOST remote` as alice, through `replica`.
    fn ssh(&self, replica: &Replica, remote: &str) -> Result<Command> {
        let mut command = self
            .sshd
            .ssh(&self.proxy_command(replica), &self.host, remote);
        command.env("SEKISHO_TOKEN", self.token()?);
        Ok(command)
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

/// A port the kernel has free on `ip` now.
fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn start_replica(
    dir: &tempfile::TempDir,
    config: &std::path::Path,
    kubeconfig: &std::path::Path,
    namespace: &str,
    ip: std::net::Ipv4Addr,
    name: &str,
) -> Result<Replica> {
    let https = SocketAddr::from((ip, free_port(IpAddr::V4(ip))?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1].into())?));
    let own = dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &own,
        format!(
            "listen:\n  https: {https}\n  admin: {admin}\n{}",
            std::fs::read_to_string(config)?
        ),
    )?;
    let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
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

impl Replica {
    fn get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    fn ready(&self) -> bool {
        self.get("/readyz")
            .is_ok_and(|text| text.starts_with("HTTP/1.1 200"))
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

/// The Service in front of the replicas, as the agent sees it: each connection goes to the
/// first replica that accepts it. Ends with the test.
struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Front {
    fn start(ip: IpAddr, replicas: Vec<SocketAddr>) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let replicas = replicas.clone();
                std::thread::spawn(move || {
                    let upstream = replicas.iter().find_map(|replica| {
                        TcpStream::connect_timeout(replica, Duration::from_secs(1)).ok()
                    });
                    if let Some(upstream) = upstream {
                        splice(client, upstream);
                    }
                });
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies both ways until either side ends or fails, then closes both.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(mut a_reader), Ok(mut b_reader)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a_writer, mut b_writer) = (a, b);
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a_reader, &mut b_writer);
        let _ = b_writer.shutdown(std::net::Shutdown::Both);
        let _ = a_reader.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut b_reader, &mut a_writer);
    let _ = a_writer.shutdown(std::net::Shutdown::Both);
    let _ = b_reader.shutdown(std::net::Shutdown::Both);
    let _ = forward.join();
}

#[test]
fn ssh_through_the_replica_without_the_agent_is_relayed_and_works_again_after_the_holder_is_killed()
-> Result<()> {
    let mut gate = Gate::start("relay")?;
    let (a, b) = (&gate.replicas[0], &gate.replicas[1]);
    // The front sends every connection to the first replica while it lives.
    wait_until(Duration::from_secs(20), || a.links(&gate.agent) >= 1.0)
        .context("the agent did not connect to the first replica")?;
    ensure!(
        b.links(&gate.agent) == 0.0,
        "the second replica holds the agent too"
    );
    let agent = gate.agent.clone();
    wait_until(Duration::from_secs(20), || {
        gate.leases()
            .is_ok_and(|leases| leases.iter().any(|l| l.split(',').any(|n| n == agent)))
    })
    .context("the first replica's Lease does not list the agent")?;
    gate.reachable_through(b, Duration::from_secs(20))
        .context("no tunnel through the second replica")?;

    let output = run(&mut gate.ssh(b, "echo hello from; ip -4 -o addr show")?)?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(text.starts_with("hello from"), "ssh printed {text:?}");
    ensure!(
        text.contains(&gate.segment.ns_ip.to_string()),
        "the command did not run in the segment: {text}"
    );
    let sent = r#"sekisho_tunnel_relayed_streams_total{role="sent"}"#;
    let carried = r#"sekisho_tunnel_relayed_streams_total{role="carried"}"#;
    ensure!(b.metric(sent) >= 2.0, "the second replica relayed nothing");
    ensure!(
        a.metric(carried) >= 2.0,
        "the first replica carried nothing"
    );
    ensure!(b.metric(carried) == 0.0 && a.metric(sent) == 0.0);

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
