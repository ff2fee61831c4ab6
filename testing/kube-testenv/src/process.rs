use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::Error;

/// How many lines of a process's log an error shows.
const LOG_TAIL_LINES: usize = 40;

/// One control-plane process, its output going to a log file. Dropping it kills it.
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, stdout and stderr going to `<dir>/<name>.log`, in
    /// process group `group` (`0`: a new group led by this process).
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
        group: u32,
    ) -> Result<Self, Error> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|source| Error::WriteFile {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::WriteFile {
            path: log.clone(),
            source,
        })?;
        let group = i32::try_from(group).map_err(|_| Error::Spawn {
            name,
            source: std::io::Error::other("process group id out of range"),
        })?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(group)
            .spawn()
            .map_err(|source| Error::Spawn { name, source })?;
        Ok(Self { name, child, log })
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log if the process has exited.
    pub(crate) fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                log_tail: self.log_tail(),
            }),
            Err(error) => Err(Error::Exited {
                name: self.name,
                status: format!("unknown: {error}"),
                log: self.log.clone(),
                log_tail: self.log_tail(),
            }),
        }
    }

    pub(crate) fn not_ready(&self, waited: std::time::Duration) -> Error {
        Error::NotReady {
            name: self.name,
            waited,
            log: self.log.clone(),
            log_tail: self.log_tail(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away with the temporary directory anyway.
        self.kill();
    }
}
