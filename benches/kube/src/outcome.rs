//! What one run measured, as the report reads it.

use std::time::Duration;

/// A series of changes, each timed from the write (or the reload command) to the end of the
/// first probe whose answer showed it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Series {
    pub(crate) times: Vec<Duration>,
    /// Changes not seen before the limit.
    pub(crate) missed: usize,
}

impl Series {
    fn sorted(&self) -> Vec<Duration> {
        let mut times = self.times.clone();
        times.sort_unstable();
        times
    }

    /// The median (the lower middle one of an even count).
    pub(crate) fn median(&self) -> Option<Duration> {
        let times = self.sorted();
        times.get(times.len().saturating_sub(1) / 2).copied()
    }

    pub(crate) fn min(&self) -> Option<Duration> {
        self.sorted().first().copied()
    }

    /// The slowest change; a missed change counts as slower than any seen.
    pub(crate) fn max(&self) -> Option<Duration> {
        self.sorted().last().copied()
    }
}

/// From the process's start.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Start {
    /// Until `/readyz` answered 200 (Sekisho only).
    pub(crate) readyz: Option<Duration>,
    /// Until every sample host answered 200 from its upstream, presenting its own certificate.
    pub(crate) served: Duration,
}

/// Memory of the serving processes, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Memory {
    /// Resident set, summed over the processes.
    pub(crate) rss: u64,
    /// Proportional set (shared pages split between the processes that map them), summed.
    pub(crate) pss: u64,
    /// The highest resident set the main process had (`VmHWM`).
    pub(crate) peak: u64,
}

/// One server with the 1,000 routes: how it started, its memory, how fast changes showed.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) name: &'static str,
    pub(crate) start: Start,
    pub(crate) memory: Memory,
    /// Memory once the changes were made.
    pub(crate) memory_after: Option<Memory>,
    /// A new certificate for one host.
    pub(crate) certificates: Series,
    /// A new path on one host (not measured for nginx).
    pub(crate) routes: Option<Series>,
    /// How the changes were made, for the table.
    pub(crate) certificate_change: &'static str,
    pub(crate) route_change: &'static str,
}

/// Medians over a series of changes of what each cost the processes involved (Kubernetes
/// mode), to show where the time goes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cost {
    /// What was changed.
    pub(crate) change: &'static str,
    /// Secret GETs the API server answered (everyone's: the bench reads none while it times).
    pub(crate) secret_gets: f64,
    /// Successful rebuilds the proxy counted (`sekisho_config_reloads_total`).
    pub(crate) reloads: f64,
    /// CPU milliseconds of the proxy, the API server and etcd.
    pub(crate) proxy_cpu_ms: f64,
    pub(crate) apiserver_cpu_ms: f64,
    pub(crate) etcd_cpu_ms: f64,
}

/// What Kubernetes mode cost, beyond the [`Run`]; and the memory of file mode with no routes.
#[derive(Debug, Default, Clone)]
pub(crate) struct KubeCost {
    /// Secret GETs the API server answered between the proxy's start and its first answer.
    pub(crate) start_secret_gets: u64,
    /// CPU seconds of the proxy until then.
    pub(crate) start_proxy_cpu_s: f64,
    pub(crate) changes: Vec<Cost>,
    /// The same single-Secret GETs, one after the other, made by the bench against the same
    /// API server: (how many, how long in all).
    pub(crate) sequential_gets: Option<(usize, Duration)>,
    /// Ingress edits made while the proxy was still busy with a rebuild (300 ms after a
    /// Secret renewal elsewhere started one): what a change waits in a burst.
    pub(crate) edits_during_rebuild: Series,
    /// The delay between the renewal and the edit.
    pub(crate) rebuild_head_start: Duration,
    /// The watched objects as JSON, by kind; then again once managedFields were cleared.
    pub(crate) sizes: Vec<ObjectSize>,
    pub(crate) sizes_cleared: Vec<ObjectSize>,
    /// A proxy started with a controller name no IngressClass has: it watches and stores the
    /// same objects and serves none of them.
    pub(crate) serving_nothing: Option<Memory>,
    /// The full proxy started again after `managedFields` were cleared from every Ingress,
    /// Service and EndpointSlice.
    pub(crate) unmanaged: Option<(Start, Memory)>,
    /// File mode with listeners and no route: the process's own floor.
    pub(crate) empty_file_mode: Option<Memory>,
}

/// How big the objects of one kind are as JSON, as the proxy's watch receives them.
#[derive(Debug, Clone)]
pub(crate) struct ObjectSize {
    pub(crate) kind: &'static str,
    pub(crate) count: usize,
    pub(crate) bytes: usize,
    /// The part that is `metadata.managedFields`.
    pub(crate) managed_fields: usize,
}

/// How long creating the objects of one kind took.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    pub(crate) kind: String,
    pub(crate) count: usize,
    pub(crate) elapsed: Duration,
}
