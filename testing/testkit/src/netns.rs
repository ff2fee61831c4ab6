//! Addresses that look like a cluster's pod network: a network namespace of the test's own,
//! joined to this one by a veth pair with a `10.x` IPv4 /30 and an `fd00::/8` IPv6 /126 on it.
//! The Kubernetes API refuses loopback and link-local addresses in EndpointSlices, so backends
//! that a test names in one listen here; this process reaches them over the veth pair.
//!
//! Sockets are opened on a short-lived thread that has entered the namespace (`setns`), so the
//! servers themselves run in the test's own runtime. The namespace, and the veth pair with it,
//! is deleted on drop, or by a watchdog once the test process is gone.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use sekisho_watchdog::Watchdog;

use crate::Error;

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// A namespace with pod-like addresses; see the module documentation.
#[derive(Debug)]
pub struct PodNetwork {
    pub name: String,
    /// This side's address (the "node").
    pub host_v4: Ipv4Addr,
    /// The namespace's address (the "pod").
    pub pod_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub pod_v6: Ipv6Addr,
    holder: Child,
    _watchdog: Watchdog,
    _dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::Spawn { name: "ip", source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

impl PodNetwork {
    /// Creates the namespace and the veth pair (needs root, as the project's machines are).
    pub fn new() -> Result<Self, Error> {
        let index = (std::process::id().wrapping_mul(13)
            + NETWORKS.fetch_add(1, Ordering::Relaxed))
            % 16_000;
        let name = format!("sekisho-pod-{index}");
        let (third, fourth) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let host_v4 = Ipv4Addr::new(10, 251, third, fourth + 1);
        let pod_v4 = Ipv4Addr::new(10, 251, third, fourth + 2);
        let v6 = |last: u16| Ipv6Addr::new(0xfd53, 0x6b, index as u16, 0, 0, 0, 0, last);
        let (host_v6, pod_v6) = (v6(1), v6(2));
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        ip(&["netns", "add", &name])?;
        let dir = tempfile::tempdir().map_err(Error::Listen)?;
        let holder = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "infinity"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                name: "the pod network's holder",
                source,
            })?;
        let watchdog =
            Watchdog::spawn_with_netns("sekisho-pod-watchdog", holder.id(), dir.path(), &name)
                .map_err(|source| Error::Spawn {
                    name: "the pod network's watchdog",
                    source,
                })?;
        let network = Self {
            name: name.clone(),
            host_v4,
            pod_v4,
            host_v6,
            pod_v6,
            holder,
            _watchdog: watchdog,
            _dir: dir,
        };
        let (outer, inner) = (format!("skph{index}"), format!("skpn{index}"));
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_v4}/30"), "dev", &outer])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{host_v6}/126"),
            "dev",
            &outer,
            "nodad",
        ])?;
        ip(&["link", "set", &outer, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{pod_v4}/30"), "dev", &inner])?;
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{pod_v6}/126"),
            "dev",
            &inner,
            "nodad",
        ])?;
        inside(&["link", "set", &inner, "up"])?;
        Ok(network)
    }

    /// A listening socket on the pod's address of `ip`'s family, on a port the kernel picks.
    pub fn listen(&self, v6: bool) -> Result<TcpListener, Error> {
        let addr = match v6 {
            false => SocketAddr::new(IpAddr::V4(self.pod_v4), 0),
            true => SocketAddr::new(IpAddr::V6(self.pod_v6), 0),
        };
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = File::open(&path).map_err(Error::Listen)?;
                    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|errno| Error::Listen(errno.into()))?;
                    TcpListener::bind(addr).map_err(Error::Listen)
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Setup("the setns thread panicked".into())))
        })
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
