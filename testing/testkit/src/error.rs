use std::{io, path::PathBuf, time::Duration};

/// Why a test part could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "devidp's npm packages are missing in {} and `npm ci` failed; run `cd testing/devidp && npm ci`:\n{output}",
        dir.display()
    )]
    NodeModules { dir: PathBuf, output: String },

    #[error("could not take the lock {} for `npm ci`", path.display())]
    NpmLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} not found: install Debian's {package} (scripts/test.sh does)", path.display())]
    ProgramMissing {
        path: PathBuf,
        package: &'static str,
    },

    #[error("could not create a temporary directory")]
    TempDir(#[source] io::Error),

    #[error("could not find a free loopback port")]
    FreePort(#[source] io::Error),

    #[error("could not listen on a loopback port")]
    Listen(#[source] io::Error),
    #[error("no logout token arrived within {0:?}")]
    NoLogoutToken(std::time::Duration),

    /// Setting up a part failed (the command and its error output say how).
    #[error("{0}")]
    Setup(String),

    #[error("could not start {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{name} exited ({status}) before it was ready; the end of {}:\n{log_tail}", log.display())]
    Exited {
        name: &'static str,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("{name} was not ready after {waited:?}; the end of {}:\n{log_tail}", log.display())]
    NotReady {
        name: &'static str,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },

    #[error("devidp printed {line:?} instead of its ready line; the end of {}:\n{log_tail}", log.display())]
    ReadyLine {
        line: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("chromedriver refused a new session; the end of {}:\n{log_tail}", log.display())]
    NewSession {
        log: PathBuf,
        log_tail: String,
        #[source]
        source: Box<fantoccini::error::NewSessionError>,
    },

    #[error("WebDriver command failed: {action}")]
    WebDriver {
        action: String,
        #[source]
        source: Box<fantoccini::error::CmdError>,
    },

    #[error("timed out after {waited:?} waiting for {what}; at {url}, the page says:\n{excerpt}")]
    Timeout {
        what: String,
        waited: Duration,
        url: String,
        excerpt: String,
    },

    #[error("the login was rejected at {url}: {message}")]
    LoginRejected { url: String, message: String },

    #[error("{0}")]
    Certificate(String),

    #[error("could not write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("still failing after {waited:?} ({tries} tries); the last error: {last}")]
    Eventually {
        waited: Duration,
        tries: u32,
        last: String,
    },
}
