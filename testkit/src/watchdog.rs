use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
};

use crate::Error;

/// Kills a process group and removes a directory once this handle is dropped or this process
/// is gone.
///
/// `sh` reads its stdin, a pipe whose only writer is this process, until end of file, which
/// comes when this process closes it: on drop, or when the kernel closes it because the test
/// process exited, aborted or was killed. The watchdog runs in its own process group, so a
/// Ctrl-C in the terminal does not kill it before it has done its work. (The same design as
/// kube-testenv's; copied rather than shared, because that crate brings kube along.)
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const SCRIPT: &str = r#"cat >/dev/null; kill -s KILL -- "-$1" 2>/dev/null; rm -rf -- "$2""#;

impl Watchdog {
    pub(crate) fn spawn(group: u32, dir: &Path) -> Result<Self, Error> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("sekisho-testkit-watchdog")
            .arg(group.to_string())
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                name: "watchdog (sh)",
                source,
            })?;
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
