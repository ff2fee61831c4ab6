//! The running agent: a link per proxy connection slot, and a graceful stop.

use std::sync::Arc;

use sekisho_wire::agent_auth::AgentPublicKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::dial::{self, Dialer, TlsError};
use crate::key::{self, KeyError};
use crate::link::{Link, Phase};
use crate::serve::Streams;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// An agent ready to run: its key loaded and its TLS configuration built.
pub struct Agent {
    settings: Settings,
    public_key: AgentPublicKey,
    dialer: Arc<Dialer>,
    streams: Arc<Streams>,
    backoff: Backoff,
}

impl Agent {
    /// Loads the key and the CA (or the system roots) that `settings` name.
    pub fn new(settings: Settings) -> Result<Self, StartError> {
        let key = key::load(&settings.key_file)?;
        let tls = dial::client_config(settings.ca_file.as_deref())?;
        Ok(Self::with_parts(settings, key, tls))
    }

    /// An agent from a key and a TLS configuration already at hand (tests, embedding).
    pub fn with_parts(
        settings: Settings,
        key: sekisho_wire::agent_auth::AgentKey,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        let public_key = key.public_key();
        let dialer = Arc::new(Dialer::new(
            tls,
            Arc::new(key),
            settings.name.clone(),
            settings.connect_timeout,
        ));
        let streams = Arc::new(Streams::new(
            settings.name.clone(),
            settings.allow.clone(),
            settings.connect_timeout,
        ));
        Self {
            settings,
            public_key,
            dialer,
            streams,
            backoff: Backoff::default(),
        }
    }

    /// Waits between dials by `backoff` instead of the default ([`crate::backoff::BASE`]
    /// doubling up to [`crate::backoff::CAP`]): for tests that watch the waits grow to their
    /// cap in real time, which takes minutes with the default.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn public_key(&self) -> AgentPublicKey {
        self.public_key
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Keeps `connections` connections to every proxy until `stop` resolves; then dials no
    /// more, lets open streams finish for up to `shutdown_grace`, and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let settings = &self.settings;
        tracing::info!(
            name = settings.name,
            public_key = %self.public_key,
            tcp = ?settings.allow.tcp(),
            http = ?settings.allow.http(),
            "starting"
        );
        if settings.allow.is_empty() {
            tracing::warn!("the allow list is empty: every stream will be refused");
        }
        let (phase_tx, phase) = watch::channel(Phase::Running);
        let (alive, mut all_ended) = mpsc::channel::<()>(1);
        let mut links = JoinSet::new();
        for proxy in &settings.proxies {
            for slot in 1..=settings.connections {
                let link = Link {
                    proxy: proxy.clone(),
                    slot,
                    dialer: Arc::clone(&self.dialer),
                    streams: Arc::clone(&self.streams),
                    backoff: self.backoff.clone(),
                };
                links.spawn(link.run(phase.clone(), alive.clone()));
            }
        }
        drop(alive);
        stop.await;

        tracing::info!(
            "stopping: no new connections; open streams have {:?} to finish",
            settings.shutdown_grace
        );
        self.streams.stop_taking_streams();
        let _ = phase_tx.send(Phase::Stopping);
        // Every link and connection task holds a sender; `recv` returns `None` once all are gone.
        let finished = tokio::time::timeout(settings.shutdown_grace, all_ended.recv()).await;
        if finished.is_err() {
            tracing::warn!("the grace period is over: closing the connections that are left");
            let _ = phase_tx.send(Phase::Closing);
            let _ = all_ended.recv().await;
        }
        links.shutdown().await;
        tracing::info!("stopped");
    }
}
