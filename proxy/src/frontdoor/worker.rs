//! Which worker thread the caller runs on, so per-worker resources (upstream connection pools)
//! are used without sharing them between runtimes.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`.
pub(crate) fn enter(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The calling thread's worker index (0 outside worker threads).
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}
