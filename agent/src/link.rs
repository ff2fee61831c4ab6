//! A link: one slot for a live connection to one proxy, dialed again whenever it is lost.
//!
//! The link dials; on success it hands the connection to a task of its own that serves it
//! ([`serve`]) and waits. A connection that ends sends the link into backoff; one the proxy
//! asks to drain keeps serving its open streams while the link dials a replacement at once
//! (or after a short [`probe_delay`], when the connection was drained within [`HEALTHY_AFTER`]
//! of connecting, so that a proxy draining everything cannot make the agent spin). A connection
//! lost otherwise, and an address where nothing accepts the TCP connection, are tried again
//! after a [`probe_delay`] too: the agent is back within about a second of the proxy, however
//! long it was away and however often it restarted. Only dials the proxy answers and refuses
//! (TLS, the upgrade) back off exponentially.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::upgrade::Upgraded;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::backoff::{Backoff, HEALTHY_AFTER, probe_delay};
use crate::config::Proxy;
use crate::dial::{DialError, Dialer};
use crate::error_chain;
use crate::serve::{self, Streams};

/// Where the whole agent is in its life; links and connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// No new connections; open ones send GOAWAY and finish their streams.
    Stopping,
    /// The grace period is over: close everything now.
    Closing,
}

/// Something each live connection task holds; the agent knows all of them have ended when
/// the channel closes.
pub(crate) type Alive = mpsc::Sender<()>;

pub(crate) struct Link {
    pub(crate) proxy: Proxy,
    /// Which of the proxy's connections this is (from 1), for logs.
    pub(crate) slot: usize,
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) streams: Arc<Streams>,
    /// The waits between dials, from the start.
    pub(crate) backoff: Backoff,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.proxy, self.slot)
    }
}

/// How a connection's life ended, as far as its link cares.
enum Ended {
    /// The proxy asked it to drain; it is still finishing its streams.
    Drained,
    Closed,
}

impl Link {
    /// Dials and serves until the phase leaves `Running`. Cancel-safe.
    pub(crate) async fn run(self, mut phase: watch::Receiver<Phase>, alive: Alive) {
        let mut backoff = self.backoff.clone();
        let mut unreachable = Unreachable::default();
        loop {
            if *phase.borrow_and_update() != Phase::Running {
                return;
            }
            let dialed = tokio::select! {
                dialed = self.dialer.dial(&self.proxy) => dialed,
                () = left_running(&mut phase) => return,
            };
            match dialed {
                Ok(io) => {
                    let connected = Instant::now();
                    match std::mem::take(&mut unreachable).since {
                        Some(since) => tracing::info!(
                            "connected to {self} after {} s unreachable",
                            since.elapsed().as_secs()
                        ),
                        None => tracing::info!("connected to {self}"),
                    }
                    let (ended_tx, ended_rx) = oneshot::channel();
                    tokio::spawn(serve_connection(
                        io,
                        Arc::clone(&self.streams),
                        self.to_string(),
                        phase.clone(),
                        alive.clone(),
                        ended_tx,
                    ));
                    let ended = tokio::select! {
                        ended = ended_rx => ended.unwrap_or(Ended::Closed),
                        () = left_running(&mut phase) => return,
                    };
                    // The proxy took this agent: whatever ended the connection, it is no
                    // refusal to back off from. Dial again soon; if nobody answers, the cheap
                    // probing below takes over.
                    backoff.reset();
                    let young = connected.elapsed() <= HEALTHY_AFTER;
                    if let Ended::Drained = ended {
                        if !young {
                            tracing::info!(
                                "the proxy asked {self} to drain: dialing a new connection while its streams finish"
                            );
                            continue;
                        }
                        // Not at once: drains that come this fast would make the agent spin.
                        tracing::info!("the proxy asked {self} to drain soon after it connected");
                    }
                    let delay = probe_delay(&mut rand::rng());
                    if !wait(delay, &mut phase).await {
                        return;
                    }
                    continue;
                }
                Err(error @ (DialError::Connect { .. } | DialError::ConnectTimeout(_))) => {
                    // Nobody answers at the address: try again soon, it costs the proxy nothing.
                    let error = error_chain(&error);
                    let delay = probe_delay(&mut rand::rng());
                    if unreachable.failed() {
                        tracing::warn!(
                            "cannot connect to {self}: {error}; trying again every second or so \
                             ({} attempts so far)",
                            unreachable.attempts
                        );
                    } else {
                        tracing::debug!("cannot connect to {self}: {error}");
                    }
                    if !wait(delay, &mut phase).await {
                        return;
                    }
                    continue;
                }
                Err(error @ DialError::NotAccepted { .. }) => {
                    tracing::error!("cannot connect to {self}: {error}");
                }
                Err(error) => {
                    let error = error_chain(&error);
                    tracing::warn!("cannot connect to {self}: {error}");
                }
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tracing::info!(
                "backing off {} ms before dialing {self} again",
                delay.as_millis()
            );
            if !wait(delay, &mut phase).await {
                return;
            }
        }
    }
}

/// Serves one connection until it ends, sending GOAWAY when the proxy asks it to drain or the
/// agent stops, and dropping it when the grace period is over.
async fn serve_connection(
    io: Upgraded,
    streams: Arc<Streams>,
    link: String,
    mut phase: watch::Receiver<Phase>,
    _alive: Alive,
    ended: oneshot::Sender<Ended>,
) {
    let drain = Arc::new(Notify::new());
    let service = serve::service(streams, Arc::clone(&drain));
    let mut connection = pin!(serve::builder().serve_connection(io, service));
    let mut ended = Some(ended);
    let mut going_away = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = drain.notified(), if !going_away => {
                going_away = true;
                connection.as_mut().graceful_shutdown();
                if let Some(ended) = ended.take() {
                    let _ = ended.send(Ended::Drained);
                }
            }
            changed = phase.changed() => {
                let now = changed.map_or(Phase::Closing, |()| *phase.borrow_and_update());
                match now {
                    Phase::Running => {}
                    Phase::Stopping => {
                        if !going_away {
                            going_away = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    Phase::Closing => {
                        tracing::warn!("disconnected from {link}: the grace period is over");
                        return;
                    }
                }
            }
        }
    };
    match result {
        Ok(()) => tracing::info!("disconnected from {link}: the connection closed"),
        Err(error) => {
            let error = error_chain(&error);
            tracing::warn!("disconnected from {link}: {error}");
        }
    }
    if let Some(ended) = ended.take() {
        let _ = ended.send(Ended::Closed);
    }
}

/// How often a link that keeps finding nobody at its proxy's address says so at `warn`.
const UNREACHABLE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A run of dials that found nobody at the proxy's address.
#[derive(Default)]
struct Unreachable {
    since: Option<Instant>,
    attempts: u64,
    logged: Option<Instant>,
}

impl Unreachable {
    /// Counts a failure; whether it is one to log at `warn` (the first, then one per
    /// [`UNREACHABLE_LOG_EVERY`]), so an outage of hours is not thousands of lines.
    fn failed(&mut self) -> bool {
        let now = Instant::now();
        self.since.get_or_insert(now);
        self.attempts += 1;
        let due = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= UNREACHABLE_LOG_EVERY);
        if due {
            self.logged = Some(now);
        }
        due
    }
}

/// Sleeps `delay`; false when the phase left `Running` meanwhile.
async fn wait(delay: std::time::Duration, phase: &mut watch::Receiver<Phase>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = left_running(phase) => false,
    }
}

/// Resolves once the phase is no longer `Running` (or nobody can change it any more).
async fn left_running(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|now| *now != Phase::Running).await;
}
