//! Listening sockets that outlive a process: taken over at start, handed on in an upgrade.
//!
//! At start the process takes the listening sockets it was given before it binds anything,
//! through the `LISTEN_FDS` protocol of systemd's socket activation (fds from 3 on, their names
//! in `LISTEN_FDNAMES`). A socket named after a listener (`https`, `http`, `admin`, `metrics`:
//! `FileDescriptorName=` in a `.socket` unit) serves that listener; any other serves the
//! listener configured at its local address. A socket that matches no listener is closed, with
//! a warning.
//!
//! SIGUSR2 upgrades in place ([`start_successor`]): the process starts the binary at its own
//! path, with its own arguments, as a child that inherits every listening socket by the same
//! protocol (named, so that a listener on port 0 is found again), and the path of a datagram
//! socket in [`UPGRADE_NOTIFY_ENV`]. `LISTEN_PID` is left out: the child's pid is not known
//! before it exists, and the protocol's reader (`listenfd`) takes the fds without it. The child
//! binds nothing it inherited, and once it serves, it says `READY=1` and `MAINPID=` there
//! ([`announce_ready`]), after saying the same to systemd. Only then does the old process stop
//! accepting. Both processes hold the same open sockets, so nothing waiting in an accept queue
//! is lost when the old process closes its copies; nothing here calls `shutdown` on a
//! listening socket. A child that exits, or is not ready in time, changes nothing: the old
//! process keeps serving and says why.
//!
//! This module owns descriptors and processes only; it knows nothing of requests.

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};

/// The environment variable that gives a new process the readiness socket of the process it
/// replaces.
pub(crate) const UPGRADE_NOTIFY_ENV: &str = "SEKISHO_UPGRADE_NOTIFY_SOCKET";

/// How long a new process may take to be ready before the upgrade is given up.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(60);

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// What a listening socket serves; its name in `LISTEN_FDNAMES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Https,
    Http,
    Admin,
    Metrics,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
            Self::Admin => "admin",
            Self::Metrics => "metrics",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Https, Self::Http, Self::Admin, Self::Metrics]
            .into_iter()
            .find(|role| role.name() == name)
    }
}

/// An inherited descriptor that cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("inherited descriptor {fd} ({name}) is not a TCP socket")]
    NotTcp {
        fd: i32,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("inherited socket {fd} ({name}) cannot be used")]
    Unusable {
        fd: i32,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Why an upgrade did not happen; the running process keeps serving.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("cannot make the new process's readiness socket in {}", dir.display())]
    NotifySocket {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot pass the listening sockets on")]
    Descriptors(#[source] io::Error),
    #[error("cannot start {}", executable.display())]
    Spawn {
        executable: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the new process exited before it was ready ({status}){}", exit_hint(*status))]
    Exited { status: ExitStatus },
    #[error("the new process was not ready within {} and was killed", humantime::format_duration(*within))]
    NotReady { within: Duration },
    #[error("cannot wait for the new process")]
    Wait(#[source] io::Error),
}

fn exit_hint(status: ExitStatus) -> &'static str {
    match status.code() {
        Some(3) => ": its configuration or certificates are invalid (`sekisho-proxy check-config`)",
        Some(2) => ": its command line is invalid",
        _ => "",
    }
}

struct InheritedSocket {
    fd: i32,
    name: Option<String>,
    addr: SocketAddr,
    listener: TcpListener,
}

impl InheritedSocket {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("unnamed")
    }
}

/// The listening sockets this process was given at start, until the listeners take them.
#[derive(Default)]
pub(crate) struct Inherited {
    sockets: Vec<InheritedSocket>,
}

impl Inherited {
    /// Takes the sockets of `LISTEN_FDS` (and their `LISTEN_FDNAMES`). Call it before any
    /// thread is started: the reader unsets `LISTEN_FDS` and `LISTEN_PID`.
    pub(crate) fn from_env() -> Result<Self, InheritError> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|names| names.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut passed = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(passed.len());
        for index in 0..passed.len() {
            let fd = FIRST_FD + index as i32;
            let name = names.get(index).filter(|n| !n.is_empty()).cloned();
            let label = || name.clone().unwrap_or_else(|| "unnamed".to_owned());
            let listener = match passed.take_tcp_listener(index) {
                Ok(Some(listener)) => listener,
                Ok(None) => continue,
                Err(source) => {
                    return Err(InheritError::NotTcp {
                        fd,
                        name: label(),
                        source,
                    });
                }
            };
            let addr = listener
                .set_nonblocking(true)
                .and_then(|()| listener.local_addr())
                .map_err(|source| InheritError::Unusable {
                    fd,
                    name: label(),
                    source,
                })?;
            sockets.push(InheritedSocket {
                fd,
                name,
                addr,
                listener,
            });
        }
        Ok(Self { sockets })
    }

    /// Takes every socket for `role`: those named after it, else those at `addr`.
    pub(crate) fn take(&mut self, role: Role, addr: SocketAddr) -> Vec<TcpListener> {
        let (taken, kept): (Vec<_>, Vec<_>) =
            self.sockets.drain(..).partition(|socket| {
                match socket.name.as_deref().and_then(Role::from_name) {
                    Some(named) => named == role,
                    None => socket.addr == addr,
                }
            });
        self.sockets = kept;
        for socket in &taken {
            if socket.addr != addr && addr.port() != 0 {
                tracing::warn!(
                    listener = role.name(),
                    configured = %addr,
                    inherited = %socket.addr,
                    "the inherited socket named after this listener is not at the configured \
                     address: serving on the inherited one (a restart, not an upgrade, moves it)"
                );
            }
            tracing::info!(
                listener = role.name(),
                addr = %socket.addr,
                fd = socket.fd,
                name = socket.label(),
                "listening on an inherited socket"
            );
        }
        taken.into_iter().map(|socket| socket.listener).collect()
    }

    /// Closes the sockets no listener took, saying so.
    pub(crate) fn close_leftovers(self) {
        for socket in self.sockets {
            tracing::warn!(
                fd = socket.fd,
                name = socket.label(),
                addr = %socket.addr,
                "an inherited socket matches no listener in the configuration: closing it"
            );
        }
    }
}

/// Copies of this process's listening sockets, to hand to a new process.
#[derive(Default)]
pub(crate) struct Listeners {
    sockets: Vec<(Role, TcpListener)>,
}

impl Listeners {
    /// Keeps a copy (a second descriptor for the same socket) of `listener`.
    pub(crate) fn keep(&mut self, role: Role, listener: &TcpListener) -> io::Result<()> {
        self.sockets.push((role, listener.try_clone()?));
        Ok(())
    }
}

/// A new process that took over the listening sockets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Successor {
    pub(crate) pid: u32,
}

/// Starts `executable` with this process's arguments and `listeners`, and waits until it says
/// it is ready, it exits, or [`READY_WITHIN`] has passed (then it is killed). Cancel-safe: a
/// child still starting when the future is dropped is killed.
pub(crate) async fn start_successor(
    executable: &Path,
    listeners: &Listeners,
) -> Result<Successor, UpgradeError> {
    let dir = NotifyDir::create()?;
    let socket_path = dir.path.join("notify");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).map_err(|source| {
        UpgradeError::NotifySocket {
            dir: dir.path.clone(),
            source,
        }
    })?;

    let mut mappings = Vec::with_capacity(listeners.sockets.len());
    let mut names = Vec::with_capacity(listeners.sockets.len());
    for (index, (role, listener)) in listeners.sockets.iter().enumerate() {
        let parent_fd = OwnedFd::from(listener.try_clone().map_err(UpgradeError::Descriptors)?);
        mappings.push(FdMapping {
            parent_fd,
            child_fd: FIRST_FD + index as i32,
        });
        names.push(role.name());
    }
    let mut command = tokio::process::Command::new(executable);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env(UPGRADE_NOTIFY_ENV, &socket_path)
        .stdin(Stdio::null());
    command.fd_mappings(mappings).map_err(|collision| {
        UpgradeError::Descriptors(io::Error::new(io::ErrorKind::InvalidInput, collision))
    })?;
    let child = command.spawn().map_err(|source| UpgradeError::Spawn {
        executable: executable.to_owned(),
        source,
    })?;
    // The parent's copies of the mapped descriptors go with the command.
    drop(command);
    let mut starting = Starting(Some(child));
    let pid = starting.pid();
    tracing::info!(
        pid,
        executable = %executable.display(),
        sockets = names.len(),
        "upgrade: started the new process, waiting until it is ready"
    );

    let deadline = tokio::time::sleep(READY_WITHIN);
    tokio::pin!(deadline);
    let mut buf = [0u8; 512];
    loop {
        let child = starting.child();
        tokio::select! {
            received = socket.recv(&mut buf) => {
                let Ok(n) = received else { continue };
                let message = String::from_utf8_lossy(&buf[..n]);
                if is_ready(&message, pid) {
                    starting.release();
                    return Ok(Successor { pid });
                }
                tracing::warn!(%message, "upgrade: ignoring a readiness message not from the new process");
            }
            status = child.wait() => {
                starting.release();
                return Err(match status {
                    Ok(status) => UpgradeError::Exited { status },
                    Err(error) => UpgradeError::Wait(error),
                });
            }
            () = &mut deadline => {
                let _ = child.kill().await;
                starting.release();
                return Err(UpgradeError::NotReady { within: READY_WITHIN });
            }
        }
    }
}

/// Whether `message` (sd_notify's `KEY=VALUE` lines) says the process `pid` is ready.
fn is_ready(message: &str, pid: u32) -> bool {
    let mut lines = message.lines();
    let ready = lines.clone().any(|line| line == "READY=1");
    let from = lines.any(|line| line.strip_prefix("MAINPID=") == Some(&pid.to_string()));
    ready && from
}

/// A child not yet ready: killed if dropped before [`Starting::release`].
struct Starting(Option<tokio::process::Child>);

impl Starting {
    fn child(&mut self) -> &mut tokio::process::Child {
        self.0
            .as_mut()
            .expect("a starting child is held until released")
    }

    fn pid(&mut self) -> u32 {
        self.child().id().unwrap_or_default()
    }

    /// Lets the child go its own way (it runs on, or has already been reaped).
    fn release(&mut self) {
        self.0 = None;
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// A private directory (mode 0700) for the readiness socket, removed when dropped: only this
/// user (and root) can send to the socket in it.
struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    fn create() -> Result<Self, UpgradeError> {
        // systemd's RuntimeDirectory= when there is one, else the temporary directory.
        let parent = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|dirs| {
                // Several directories are separated by colons; the first will do.
                let first: OsString = dirs.to_string_lossy().split(':').next()?.into();
                Some(PathBuf::from(first))
            })
            .unwrap_or_else(std::env::temp_dir);
        let mut random = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = parent.join(format!("sekisho-upgrade-{}-{suffix}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| UpgradeError::NotifySocket {
                dir: parent.clone(),
                source,
            })?;
        Ok(Self { path })
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Says that this process serves: to systemd (`READY=1` and `MAINPID=`, for `Type=notify`;
/// nothing when `NOTIFY_SOCKET` is unset) first, so that it knows the new main process before
/// the old one exits, then to the process this one replaces, if any.
pub(crate) fn announce_ready() {
    let pid = std::process::id();
    let states = [
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Ready,
    ];
    if let Err(error) = sd_notify::notify(&states) {
        tracing::warn!(%error, "cannot tell systemd that the proxy is ready (NOTIFY_SOCKET)");
    }
    let Some(path) = std::env::var_os(UPGRADE_NOTIFY_ENV) else {
        return;
    };
    let message = format!("READY=1\nMAINPID={pid}\n");
    let sent = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|socket| socket.send_to(message.as_bytes(), &path));
    if let Err(error) = sent {
        // The old process will not hear it, give up after a while and kill this one.
        tracing::error!(%error, socket = %Path::new(&path).display(), "cannot tell the process being upgraded that this one is ready");
    }
}

/// Says that this process is stopping (systemd's `STOPPING=1`). Only the main process may
/// say it: one that handed over is not the service stopping.
pub(crate) fn announce_stopping() {
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::debug!(%error, "cannot tell systemd that the proxy is stopping");
    }
}

/// The path of the running executable, read at start: after a new binary is installed at the
/// same path, `/proc/self/exe` names the old, deleted file.
pub(crate) fn own_executable() -> io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(original) => PathBuf::from(original),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_ready_and_the_new_process_pid() {
        assert!(is_ready("READY=1\nMAINPID=42\n", 42));
        assert!(is_ready("MAINPID=42\nREADY=1", 42));
        assert!(!is_ready("READY=1\nMAINPID=43\n", 42));
        assert!(!is_ready("READY=1\n", 42));
        assert!(!is_ready("MAINPID=42\nSTATUS=starting\n", 42));
    }

    #[test]
    fn sockets_named_after_a_listener_serve_it_and_others_serve_their_address() {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("binds on loopback");
        let (named, unnamed, stray) = (bind(), bind(), bind());
        let admin_addr = unnamed.local_addr().expect("has an address");
        let socket = |fd, name: Option<&str>, listener: TcpListener| InheritedSocket {
            fd,
            name: name.map(str::to_owned),
            addr: listener.local_addr().expect("has an address"),
            listener,
        };
        let mut inherited = Inherited {
            sockets: vec![
                socket(3, Some("https"), named),
                socket(4, Some("sekisho-proxy.socket"), unnamed),
                socket(5, None, stray),
            ],
        };
        let https = inherited.take(Role::Https, "127.0.0.1:0".parse().expect("an address"));
        assert_eq!(https.len(), 1);
        assert!(
            inherited
                .take(Role::Http, "127.0.0.1:1".parse().expect("an address"))
                .is_empty()
        );
        let admin = inherited.take(Role::Admin, admin_addr);
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].local_addr().expect("has an address"), admin_addr);
        assert_eq!(inherited.sockets.len(), 1, "the stray socket is left over");
        assert_eq!(inherited.sockets[0].fd, 5);
    }
}
