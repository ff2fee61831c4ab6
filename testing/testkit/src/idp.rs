use std::{
    ffi::OsString,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use sekisho_watchdog::Watchdog;

use crate::{Error, log, process::spawn_watched};

/// How long devidp may take from spawn to its ready line. It takes about half a second on an
/// idle machine; with two cores shared by parallel tests (each with a browser, a proxy and a
/// devidp), Node.js's start has been seen to take over 30 s, so the wait is generous: it only
/// bounds a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The repository's root: this crate lives in `<root>/testing/testkit`.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testkit lives two levels below the repository's root")
}

/// The project's dev OpenID provider (`testing/devidp/server.mjs`), running on a loopback port until
/// this handle is dropped. See `testing/devidp/README.md` for its users (alice, bob, carol, mallory;
/// password `password`), its clients (`sekisho` / `sekisho-dev-secret`, `sekisho-cli`), its
/// login form and its `/__dev/...` endpoints.
#[derive(Debug)]
pub struct Idp {
    issuer: String,
    port: u16,
    stderr: PathBuf,
    child: Child,
    // Dropped after `child`: kills the group and removes `dir`.
    _watchdog: Watchdog,
    _dir: tempfile::TempDir,
}

/// Flags for [`Idp`]; start with [`Idp::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct IdpBuilder {
    args: Vec<OsString>,
}

impl IdpBuilder {
    /// Adds a redirect URI of client `sekisho` (repeatable; without any, devidp's default
    /// `https://auth.localhost:8443/.sekisho/callback`). `http://127.0.0.1:<port>/...` works.
    pub fn redirect_uri(self, uri: impl Into<String>) -> Self {
        self.flag("--redirect-uri", uri.into())
    }

    /// Adds a post-logout redirect URI of client `sekisho` (repeatable; without any, the origin
    /// of each redirect URI plus `/`).
    pub fn post_logout_redirect_uri(self, uri: impl Into<String>) -> Self {
        self.flag("--post-logout-redirect-uri", uri.into())
    }

    /// Sets the back-channel logout URI of client `sekisho` (http on loopback works).
    pub fn backchannel_logout_uri(self, uri: impl Into<String>) -> Self {
        self.flag("--backchannel-logout-uri", uri.into())
    }

    /// Logout tokens (and ID tokens) of client `sekisho` without `sid`: a back-channel logout
    /// then names only the user.
    pub fn backchannel_logout_without_sid(self) -> Self {
        self.arg("--backchannel-logout-without-sid")
    }

    /// Lifetime of ID tokens (whole seconds).
    pub fn id_token_ttl(self, ttl: Duration) -> Self {
        self.flag("--id-token-ttl", ttl.as_secs().to_string())
    }

    /// Lifetime of access tokens (whole seconds).
    pub fn access_token_ttl(self, ttl: Duration) -> Self {
        self.flag("--access-token-ttl", ttl.as_secs().to_string())
    }

    /// Lifetime of refresh tokens (whole seconds).
    pub fn refresh_token_ttl(self, ttl: Duration) -> Self {
        self.flag("--refresh-token-ttl", ttl.as_secs().to_string())
    }

    /// Lifetime of the IdP's own login session (whole seconds).
    pub fn session_ttl(self, ttl: Duration) -> Self {
        self.flag("--session-ttl", ttl.as_secs().to_string())
    }

    /// Any other argument of `server.mjs`, passed as it is (e.g. `--id-token-alg`, `ES256`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn flag(self, name: &str, value: String) -> Self {
        self.arg(name).arg(value)
    }

    /// Starts devidp and waits for its ready line. Installs devidp's npm packages first if
    /// they are missing (see [`Idp`]).
    pub async fn start(self) -> Result<Idp, Error> {
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .expect("starting devidp does not panic")
    }

    fn start_blocking(self) -> Result<Idp, Error> {
        let devidp = repo_root().join("testing/devidp");
        ensure_node_modules(&devidp)?;
        let dir = tempfile::Builder::new()
            .prefix("sekisho-devidp-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let stderr = dir.path().join("stderr.log");
        let stderr_file = File::create(&stderr).map_err(|source| Error::WriteFile {
            path: stderr.clone(),
            source,
        })?;
        let (mut child, watchdog) = spawn_watched(
            Command::new("node")
                .arg(devidp.join("server.mjs"))
                .args(["--port", "0"])
                .args(&self.args)
                .current_dir(&devidp)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr_file),
            "devidp (node)",
            dir.path(),
        )?;

        // devidp prints one line on stdout and nothing after it; the thread keeps reading
        // until the process is gone so that a stray write never meets a closed pipe.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            for _ in lines {}
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map_or_else(|error| format!("unknown: {error}"), |s| s.to_string());
                return Err(Error::Exited {
                    name: "devidp",
                    status,
                    log_tail: log::tail(&stderr),
                    log: stderr,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(Error::NotReady {
                    name: "devidp",
                    waited: READY_TIMEOUT,
                    log_tail: log::tail(&stderr),
                    log: stderr,
                });
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let (Some(true), Some(issuer), Some(port)) = (
            ready["ready"].as_bool(),
            ready["issuer"].as_str(),
            ready["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) else {
            return Err(Error::ReadyLine {
                line,
                log_tail: log::tail(&stderr),
                log: stderr,
            });
        };
        Ok(Idp {
            issuer: issuer.to_owned(),
            port,
            stderr,
            child,
            _watchdog: watchdog,
            _dir: dir,
        })
    }
}

impl Idp {
    /// Flags to start devidp with.
    pub fn builder() -> IdpBuilder {
        IdpBuilder::default()
    }

    /// The issuer identifier, e.g. `http://127.0.0.1:41234` (no trailing slash); endpoints are
    /// below it (`/auth`, `/token`, `/.well-known/openid-configuration`, `/__dev/health`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The loopback port devidp listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file devidp's stderr (banner and one JSON log line per event) goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// What devidp has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "devidp {} stderr ({}), last lines:\n{}",
                self.issuer,
                self.stderr.display(),
                log::tail(&self.stderr)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `npm ci` in `devidp` unless its packages are already installed.
///
/// Without this, the first `cargo test` on a fresh clone would fail: `scripts/test.sh` runs
/// `npm ci` for devidp only after the Rust tests. `npm ci` installs exactly the committed
/// lock file, so doing it here changes nothing a developer would not get by hand. Test
/// binaries run at the same time, so the check and the install happen under an exclusive lock
/// on a file in `.cache/` (ignored by git); `npm ci` first deletes `node_modules`, which must
/// never happen while another binary's devidp is starting. npm writes
/// `node_modules/.package-lock.json` last, so its presence means a finished install.
fn ensure_node_modules(devidp: &Path) -> Result<(), Error> {
    let installed = || {
        devidp.join("node_modules/.package-lock.json").is_file()
            && devidp
                .join("node_modules/oidc-provider/package.json")
                .is_file()
    };
    if installed() {
        return Ok(());
    }
    let cache = repo_root().join(".cache");
    let lock_path = cache.join("devidp-npm-ci.lock");
    let lock_error = |source| Error::NpmLock {
        path: lock_path.clone(),
        source,
    };
    std::fs::create_dir_all(&cache).map_err(lock_error)?;
    let lock = File::create(&lock_path).map_err(lock_error)?;
    lock.lock().map_err(lock_error)?;
    if installed() {
        return Ok(());
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(devidp)
        .stdin(Stdio::null())
        .output();
    let failure = match output {
        Ok(output) if output.status.success() && installed() => return Ok(()),
        Ok(output) => format!(
            "npm ci: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => format!("could not run npm: {error}"),
    };
    Err(Error::NodeModules {
        dir: devidp.join("node_modules"),
        output: failure,
    })
}
