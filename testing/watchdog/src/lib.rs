//! `sekisho-watchdog`: cleans up what a test started, even when the test process dies.
//!
//! Test harnesses (`kube-testenv`, `testkit`) start servers in their own process groups; a
//! [`Watchdog`] kills such a group and removes its scratch directory when the handle is dropped
//! or when the test process is gone (exit, abort, SIGKILL). This crate must not depend on
//! anything: both harnesses use it.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Kills a process group and removes a directory once this handle is dropped or this process
/// is gone.
///
/// `sh` reads its stdin, a pipe whose only writer is this process, until end of file, which
/// comes when this process closes it: on drop, or when the kernel closes it because the
/// process exited, panicked with `panic = "abort"`, or was killed. A static that is never
/// dropped (a shared server) is cleaned up this way too. The watchdog runs in its own process
/// group, so a Ctrl-C in the terminal does not kill it before it has done its work.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const SCRIPT: &str = r#"cat >/dev/null; kill -s KILL -- "-$1" 2>/dev/null; [ -z "$3" ] || ip netns delete "$3" 2>/dev/null; rm -rf -- "$2""#;

impl Watchdog {
    /// Watches process group `group` and directory `dir`; `name` shows in `ps`.
    pub fn spawn(name: &str, group: u32, dir: &Path) -> io::Result<Self> {
        Self::spawn_with_netns(name, group, dir, "")
    }

    /// As [`Watchdog::spawn`], and also deletes the network namespace `netns` (with the veth
    /// pairs in it) after killing the group.
    pub fn spawn_with_netns(name: &str, group: u32, dir: &Path, netns: &str) -> io::Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg(name)
            .arg(group.to_string())
            .arg(dir)
            .arg(netns)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
