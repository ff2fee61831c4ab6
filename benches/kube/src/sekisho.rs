//! `sekisho-proxy` as the bench runs it: a child process with loopback listeners on ports the
//! kernel picks (read back from its "serving" log line), its log in a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::probe;
use crate::process::Child;

/// How long the process may take to bind its listeners.
const BIND: Duration = Duration::from_secs(60);

pub(crate) struct Sekisho {
    pub(crate) child: Child,
    /// When it was spawned.
    pub(crate) started: Instant,
    pub(crate) https: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) log: PathBuf,
}

/// Static settings: loopback listeners, one worker, no access log.
pub(crate) const LISTEN: &str = "listen:
  https: 127.0.0.1:0
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
workers: 1
access_log: false
";

impl Sekisho {
    /// Starts `binary args…` with `envs`, stderr into `log`, and waits until it listens.
    pub(crate) async fn start(
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &Path)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log)?;
        let started = Instant::now();
        let mut child = Child::spawn(
            "sekisho-proxy",
            Command::new(binary)
                .args(args)
                .envs(envs.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr),
        )?;
        loop {
            if let Some((https, admin)) = serving(&log)? {
                return Ok(Self {
                    child,
                    started,
                    https,
                    admin,
                    log,
                });
            }
            child
                .check_running()
                .with_context(|| format!("see {}", log.display()))?;
            if started.elapsed() > BIND {
                bail!(
                    "sekisho-proxy did not listen within {BIND:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Until `/readyz` answers 200, from the spawn.
    pub(crate) async fn readyz(&self, poll: Duration, limit: Duration) -> anyhow::Result<Duration> {
        let (elapsed, ()) = probe::until("/readyz", self.started, poll, limit, || async {
            let (status, _) = probe::plain_get(self.admin, "/readyz").await?;
            Ok((status == http::StatusCode::OK).then_some(()))
        })
        .await
        .with_context(|| format!("see {}", self.log.display()))?;
        Ok(elapsed)
    }

    /// Successful rebuilds or reloads so far (`sekisho_config_reloads_total`).
    pub(crate) async fn reloads(&self) -> anyhow::Result<f64> {
        let (_, text) = probe::plain_get(self.admin, "/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("sekisho_config_reloads_total{") && l.contains("success"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }
}

/// The https and admin addresses of the "serving" line, once it is in the log.
fn serving(log: &Path) -> anyhow::Result<Option<(SocketAddr, SocketAddr)>> {
    let text = std::fs::read_to_string(log)?;
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if entry["message"] != "sekisho-proxy is serving" {
            continue;
        }
        let addr = |field: &str| -> anyhow::Result<SocketAddr> {
            entry[field]
                .as_str()
                .with_context(|| format!("no {field} in the serving line"))?
                .parse()
                .with_context(|| format!("the serving line's {field}"))
        };
        return Ok(Some((addr("https")?, addr("admin")?)));
    }
    Ok(None)
}
