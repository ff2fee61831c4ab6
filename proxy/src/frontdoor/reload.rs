//! Hot reload: the configuration file and every certificate file are watched (through their
//! directories, so Kubernetes' `..data` symlink swap is seen), and a change is validated
//! before anything is swapped. A bad edit is reported and the last good state keeps serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::frontdoor::tls::{self, CertTable};
use crate::observe::metrics::Metrics;
use crate::routing::snapshot::Snapshot;
use crate::state::Shared;

pub(crate) struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    config: Config,
    /// The text of the last file that loaded, to skip events that changed nothing.
    text: Option<String>,
    watcher: Option<notify::RecommendedWatcher>,
    changes: mpsc::Receiver<()>,
    watched: BTreeSet<PathBuf>,
}

impl Reloader {
    /// Starts watching at once, so that a change made right after the server started is seen.
    pub(crate) fn new(shared: Arc<Shared>, path: PathBuf, config: Config) -> Self {
        let text = std::fs::read_to_string(&path).ok();
        let (tx, changes) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|event| is_change(&event.kind)) {
                let _ = tx.try_send(());
            }
        })
        .inspect_err(|error| {
            tracing::error!(%error, "cannot watch files: configuration and certificates reload only on SIGHUP");
        })
        .ok();
        let mut reloader = Self {
            shared,
            path,
            config,
            text,
            watcher,
            changes,
            watched: BTreeSet::new(),
        };
        reloader.update_watches();
        reloader
    }

    /// Reloads on every change until `stop`; `reload_now` forces a reload (SIGHUP).
    pub(crate) async fn run(
        mut self,
        mut reload_now: mpsc::Receiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                Some(()) = self.changes.recv() => {
                    // Let the writer finish (editors and kubelet write in several steps).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while self.changes.try_recv().is_ok() {}
                }
                Some(()) = reload_now.recv() => {}
                _ = crate::state::stopped(&mut stop) => break,
            }
            self.reload();
            self.update_watches();
        }
    }

    fn update_watches(&mut self) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let wanted: BTreeSet<PathBuf> = std::iter::once(self.path.as_path())
            .chain(
                self.config
                    .tls
                    .certificates
                    .iter()
                    .flat_map(|c| [c.cert.as_path(), c.key.as_path()]),
            )
            .map(|p| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf()
            })
            .collect();
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.watched) {
            if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(%error, dir = %dir.display(), "cannot watch directory");
            }
        }
        self.watched = wanted;
    }

    fn reload(&mut self) {
        self.reload_config();
        let current = self.shared.certs.table();
        if self.config.tls.certificates.is_empty() {
            return; // the development certificate stays
        }
        let (table, changed) = load_certificates(&self.config, &current, &self.shared.metrics);
        if changed {
            tracing::info!(certificates = table.entries.len(), "certificates reloaded");
            self.shared.certs.replace(table);
            self.shared
                .metrics
                .certificate_reloads
                .get_or_create(&Metrics::result(true))
                .inc();
        }
    }

    fn reload_config(&mut self) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot read the configuration; keeping the last good one");
                self.count_config(false);
                return;
            }
        };
        if self.text.as_deref() == Some(text.as_str()) {
            return;
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let result = Config::parse(&text, &self.path, base).and_then(|config| {
            let snapshot = Snapshot::build(
                &config,
                Some(&self.shared.snapshot.load()),
                self.config.workers,
                &self.shared.metrics,
            )
            .map_err(|e| crate::config::ConfigError::Setup {
                path: self.path.clone(),
                message: crate::error_chain(&e),
            })?;
            Ok((config, snapshot))
        });
        self.text = Some(text);
        match result {
            Ok((config, snapshot)) => {
                if config.listen != self.config.listen || config.workers != self.config.workers {
                    tracing::warn!("listen addresses and workers change only on restart");
                }
                let snapshot = Arc::new(snapshot);
                self.shared.snapshot.store(snapshot.clone());
                // Agents (or keys) that are gone lose their connections now.
                self.shared.hub.prune(&snapshot);
                self.config = config;
                self.count_config(true);
                tracing::info!(path = %self.path.display(), "configuration reloaded");
            }
            Err(error) => {
                self.count_config(false);
                tracing::error!(error = %crate::error_chain(&error), "configuration rejected; keeping the last good one");
            }
        }
    }

    fn count_config(&self, ok: bool) {
        self.shared
            .metrics
            .config_reloads
            .get_or_create(&Metrics::result(ok))
            .inc();
    }
}

/// Whether a file event may have changed what the file holds. Opening and reading a file are
/// events too, and a reload reads every watched file: counting those would reload for ever.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Loads every configured certificate. A file pair that fails keeps its previous certificate
/// (when there was one); each failure is logged and counted. Returns the table and whether it
/// differs from `previous`.
pub(crate) fn load_certificates(
    config: &Config,
    previous: &CertTable,
    metrics: &Metrics,
) -> (CertTable, bool) {
    let mut entries = Vec::with_capacity(config.tls.certificates.len());
    for files in &config.tls.certificates {
        match tls::load_certificate(files) {
            Ok(cert) => entries.push(cert),
            Err(error) => {
                metrics
                    .certificate_reloads
                    .get_or_create(&Metrics::result(false))
                    .inc();
                let kept = previous
                    .entries
                    .iter()
                    .find(|e| e.files.as_ref() == Some(files));
                tracing::error!(
                    error = %crate::error_chain(&error),
                    kept_previous = kept.is_some(),
                    "certificate rejected"
                );
                entries.extend(kept.cloned());
            }
        }
    }
    let changed = entries.len() != previous.entries.len()
        || entries
            .iter()
            .zip(&previous.entries)
            .any(|(new, old)| new.files != old.files || new.key.cert != old.key.cert);
    (CertTable::new(entries), changed)
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    use super::is_change;

    #[test]
    fn reading_a_file_is_not_a_change_but_writing_creating_renaming_and_removing_are() {
        for (kind, change) in [
            (EventKind::Access(AccessKind::Open(AccessMode::Read)), false),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Remove(RemoveKind::File), true),
        ] {
            assert_eq!(is_change(&kind), change, "{kind:?}");
        }
    }
}
