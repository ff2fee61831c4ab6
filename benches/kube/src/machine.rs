//! What the run ran on, and how busy the machine was with other work.

use std::path::Path;
use std::process::Command;

/// `(label, value)` lines for the report.
pub(crate) type Facts = Vec<(&'static str, String)>;

/// The first line a command prints (on stdout, else stderr), or why there is none.
fn first_line(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) => {
            let text = if output.stdout.is_empty() {
                output.stderr
            } else {
                output.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(error) => format!("not run: {error}"),
    }
}

fn meminfo_gib(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        )
}

/// The machine, the toolchain and the versions of everything measured.
pub(crate) fn facts(sekisho: &Path, sekisho_rev: &str, kube_bin: &Path) -> Facts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let sekisho_version = first_line(sekisho, &["--version"]);
    vec![
        (
            "Date",
            first_line(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ),
        ("nproc", nproc.to_string()),
        ("CPU", cpu),
        (
            "Kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (
            "Memory",
            format!(
                "{} total, {} available",
                meminfo_gib(&meminfo, "MemTotal"),
                meminfo_gib(&meminfo, "MemAvailable")
            ),
        ),
        (
            "sekisho-proxy",
            format!("{sekisho_version} @ {sekisho_rev}"),
        ),
        ("rustc", first_line(Path::new("rustc"), &["--version"])),
        (
            "Control plane",
            format!(
                "{}, {}",
                first_line(&kube_bin.join("kube-apiserver"), &["--version"]),
                first_line(&kube_bin.join("etcd"), &["--version"])
            ),
        ),
        ("nginx", first_line(Path::new("nginx"), &["-v"])),
    ]
}

/// The names of compilers and linkers running now (someone else's build, on a shared
/// machine).
pub(crate) fn builds_running() -> Vec<String> {
    const BUILDERS: [&str; 8] = [
        "rustc", "cc1", "cc1plus", "ld", "ld.lld", "collect2", "compile", "link",
    ];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| BUILDERS.contains(&c.as_str()))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// The 1-minute load average.
pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat` (in ticks).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTime {
    total: u64,
    /// Processes at a positive nice value: others' builds and tests run at nice 19.
    nice: u64,
    /// Time the hypervisor gave to someone else.
    steal: u64,
    /// Idle and waiting for I/O.
    idle: u64,
}

impl CpuTime {
    pub(crate) fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Self {
            total: fields.iter().take(8).sum(),
            nice: field(1),
            steal: field(7),
            idle: field(3) + field(4),
        }
    }

    /// Since `earlier`, in cores: everything busy (the bench's own processes included),
    /// niced work, and steal.
    pub(crate) fn since(self, earlier: Self) -> (f64, f64, f64) {
        let nproc = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let total = self.total.saturating_sub(earlier.total).max(1);
        let share = |x: u64| x as f64 / total as f64 * nproc;
        let idle = self.idle.saturating_sub(earlier.idle);
        (
            share(total.saturating_sub(idle)),
            share(self.nice.saturating_sub(earlier.nice)),
            share(self.steal.saturating_sub(earlier.steal)),
        )
    }
}
