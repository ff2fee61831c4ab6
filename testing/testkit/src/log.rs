use std::path::Path;

/// How many lines of a process's log an error or a failing test shows.
const TAIL_LINES: usize = 40;

/// The last lines of a log file, or a note saying why there are none.
pub(crate) fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}
