//! The processes the bench starts (stopped when dropped: SIGTERM, then SIGKILL after 5 s) and
//! what `/proc` says about any process: memory, CPU time, children.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::outcome::Memory;

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on every Linux the project runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process the bench started.
pub(crate) struct Child {
    name: &'static str,
    inner: std::process::Child,
}

impl Child {
    pub(crate) fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Self> {
        let inner = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, inner })
    }

    pub(crate) fn id(&self) -> u32 {
        self.inner.id()
    }

    /// An error if it has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.inner.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.inner.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.inner.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kib_field(&text, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `Pss` of `/proc/PID/smaps_rollup`.
fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    kib_field(&text, "Pss").with_context(|| format!("no Pss in /proc/{pid}/smaps_rollup"))
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The process and its descendants.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() {
        let parent = all[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                all.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    all
}

/// The memory of `pid` and its descendants.
pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let pids = tree(pid);
    let mut memory = Memory {
        peak: status_kib(pid, "VmHWM")?,
        ..Memory::default()
    };
    for p in pids {
        memory.rss += status_kib(p, "VmRSS")?;
        memory.pss += pss_kib(p)?;
    }
    Ok(memory)
}

/// User and system CPU seconds `pid` has used.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .context("an unreadable /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // After the name: state is field 0, utime 11, stime 12.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("a short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// The first process named `comm` whose command line mentions `dir`.
pub(crate) fn find(comm: &str, dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            if name.trim() != comm {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(dir.as_ref())
                .then_some(pid)
        })
}
