use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sekisho_watchdog::Watchdog;

use crate::{Error, free_port, log, process::spawn_watched};

/// How long nginx may take from spawn to accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

const NGINX: &str = "/usr/sbin/nginx";

/// A real nginx (Debian's `nginx-light`) serving static files on a loopback port, as an
/// upstream whose own reading of paths (it decodes escapes, resolves dot segments and merges
/// slashes) is what a test checks the proxy against. Each request is logged as one line: the
/// `X-Test-Case` request header, a tab, and nginx's normalised `$uri`. Stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    addr: SocketAddr,
    access_log: PathBuf,
    error_log: PathBuf,
    child: Child,
    // Dropped after `child`: kills the group and removes `dir`.
    _watchdog: Watchdog,
    _dir: tempfile::TempDir,
}

/// One request as nginx saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The `X-Test-Case` header the request carried (`-` without one).
    pub case: String,
    /// nginx's normalised, decoded `$uri`: the file it looked up.
    pub uri: String,
}

impl Nginx {
    /// Starts nginx serving `files` (paths relative to its root, and their contents) and waits
    /// until it accepts connections.
    pub async fn start(files: &[(&str, &str)]) -> Result<Self, Error> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(path, body)| ((*path).to_owned(), (*body).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(&files))
            .await
            .expect("starting nginx does not panic")
    }

    fn start_blocking(files: &[(String, String)]) -> Result<Self, Error> {
        if !Path::new(NGINX).is_file() {
            return Err(Error::ProgramMissing {
                path: NGINX.into(),
                package: "nginx-light",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("sekisho-nginx-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let root = dir.path().join("www");
        for (path, body) in files {
            let file = root.join(path.trim_start_matches('/'));
            let write = || {
                std::fs::create_dir_all(file.parent().unwrap_or(&root))?;
                std::fs::write(&file, body)
            };
            write().map_err(|source| Error::WriteFile {
                path: file.clone(),
                source,
            })?;
        }
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let access_log = dir.path().join("access.log");
        let error_log = dir.path().join("error.log");
        let tmp = dir.path().join("tmp");
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 256; }}
http {{
    log_format seen '$http_x_test_case\t$uri';
    access_log {access_log} seen;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type text/plain;
    server {{
        listen {addr};
        root {root};
    }}
}}
",
            dir = dir.path().display(),
            error_log = error_log.display(),
            access_log = access_log.display(),
            tmp = tmp.display(),
            root = root.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|source| Error::WriteFile {
            path: conf_path.clone(),
            source,
        })?;
        std::fs::create_dir_all(&tmp).map_err(Error::TempDir)?;
        let stderr = File::create(dir.path().join("stderr.log")).map_err(Error::TempDir)?;
        let (mut child, watchdog) = spawn_watched(
            Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&error_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr),
            "nginx",
            dir.path(),
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    name: "nginx",
                    status: status.to_string(),
                    log_tail: log::tail(&error_log),
                    log: error_log,
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: "nginx",
                    waited: READY_TIMEOUT,
                    log_tail: log::tail(&error_log),
                    log: error_log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            addr,
            access_log,
            error_log,
            child,
            _watchdog: watchdog,
            _dir: dir,
        })
    }

    /// Where nginx listens (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request nginx has logged so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (case, uri) = line.split_once('\t')?;
                Some(Seen {
                    case: case.to_owned(),
                    uri: uri.to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "nginx {} error log ({}), last lines:\n{}",
                self.addr,
                self.error_log.display(),
                log::tail(&self.error_log)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
