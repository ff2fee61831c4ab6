use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command},
};

use sekisho_watchdog::Watchdog;

use crate::Error;

/// Starts `command` (called `name` in errors) in a process group of its own, watched by a
/// [`Watchdog`] that kills the group and removes `dir` when the test process is gone. Keep the
/// watchdog until after the child is dropped.
pub(crate) fn spawn_watched(
    command: &mut Command,
    name: &'static str,
    dir: &Path,
) -> Result<(Child, Watchdog), Error> {
    let child = command
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn { name, source })?;
    let watchdog =
        Watchdog::spawn("sekisho-testkit-watchdog", child.id(), dir).map_err(|source| {
            Error::Spawn {
                name: "watchdog (sh)",
                source,
            }
        })?;
    Ok((child, watchdog))
}
