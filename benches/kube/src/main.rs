//! Kubernetes mode at the scale of issue 15, measured: a private control plane (kube-testenv)
//! holding 1,000 Ingresses, each with its own host, TLS Secret (cert-manager's form) and
//! Service with an EndpointSlice, plus 5,000 unrelated Opaque Secrets of 10 KiB; then the
//! release `sekisho-proxy --kubernetes` as a child process: time to first ready, its RSS, and
//! how soon a renewed Secret and an edited Ingress are served (20 of each). The same routes in
//! file mode give the memory to compare with, and nginx with 1,000 server blocks the peer's
//! reload. Prints a Markdown report and writes it into `benches/RESULTS.md`.
//!
//! Every upstream is an echo server in a network namespace of the bench's own (the API refuses
//! loopback endpoints); every other socket is on loopback. Run it through `benches/kube.sh`.

mod cluster;
mod file;
mod kubernetes;
mod machine;
mod nginx;
mod outcome;
mod probe;
mod process;
mod report;
mod sekisho;
mod site;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube_testenv::{Binaries, TestEnv};
use sekisho_testkit::{EchoUpstream, Pki, PodNetwork};
use tokio::time::Instant;

use crate::cluster::{Layout, Plan};
use crate::machine::CpuTime;
use crate::report::{Noise, Report};
use crate::site::Sites;

/// Kubernetes mode's start, memory and change latency with 1,000 Ingresses.
#[derive(Debug, Parser)]
struct Options {
    /// The `sekisho-proxy` to measure (a release build).
    #[arg(long)]
    sekisho: PathBuf,
    /// Which commit that binary is, for the report.
    #[arg(long, env = "SEKISHO_REV", default_value = "unknown")]
    sekisho_rev: String,
    /// Ingresses, each with its Secret, Service and EndpointSlice.
    #[arg(long, default_value_t = 1000)]
    sites: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Opaque Secrets that nothing names.
    #[arg(long, default_value_t = 5000)]
    opaque: usize,
    #[arg(long, default_value_t = 10 * 1024)]
    opaque_bytes: usize,
    /// Changes of each kind per server.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Requests to the API in flight at once while creating the objects.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Milliseconds between two probes.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Seconds a change, or a start, may take before the bench stops waiting for it.
    #[arg(long, default_value_t = 120)]
    limit_s: u64,
    /// Seconds creating the objects may take.
    #[arg(long, default_value_t = 1800)]
    setup_s: u64,
    /// Leave nginx out.
    #[arg(long)]
    no_nginx: bool,
    /// Write the report into this file between the bench's markers.
    #[arg(long)]
    results: Option<PathBuf>,
    /// The command line to record in the report.
    #[arg(long, default_value = "benches/kube.sh")]
    command: String,
    /// Keep the work directory (configurations, the proxies' logs); so does `KEEP_TMP=1`.
    #[arg(long)]
    keep: bool,
}

/// Runs `phase` and records how busy the machine was meanwhile.
async fn watched<T>(
    name: &'static str,
    noise: &mut Vec<Noise>,
    phase: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let (cpu, mut builds) = (CpuTime::now(), machine::builds_running());
    let out = phase.await?;
    let (busy, niced, steal) = CpuTime::now().since(cpu);
    builds.extend(machine::builds_running());
    builds.sort_unstable();
    builds.dedup();
    noise.push(Noise {
        phase: name,
        busy,
        niced,
        steal,
        builds,
        load: machine::load(),
    });
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    anyhow::ensure!(
        options.sites >= 2 && options.namespaces >= 1 && options.changes >= 1,
        "--sites must be at least 2, --namespaces and --changes at least 1"
    );
    let began = Instant::now();
    let binaries = Binaries::locate()?;
    let kube_bin = binaries
        .kube_apiserver
        .parent()
        .context("the control plane's binaries are in a directory")?
        .to_path_buf();
    let facts = machine::facts(&options.sekisho, &options.sekisho_rev, &kube_bin);
    let work_dir = tempfile::Builder::new()
        .prefix("sekisho-kube-bench-")
        .tempdir()?;
    // Kept from the start, so that a run that fails leaves its logs too.
    let keep = options.keep || std::env::var_os("KEEP_TMP").is_some_and(|v| !v.is_empty());
    let (work, _removed_on_drop) = if keep {
        let path = work_dir.keep();
        eprintln!("[setup] the work directory is kept: {}", path.display());
        (path, None)
    } else {
        (work_dir.path().to_path_buf(), Some(work_dir))
    };

    let pods = PodNetwork::new()?;
    let site_echo = EchoUpstream::on("site", pods.listen(false)?)?;
    let edited_echo = EchoUpstream::on("edited", pods.listen(false)?)?;
    let pki = Pki::new("Sekisho bench CA")?;
    let layout = Layout {
        namespaces: options.namespaces,
        sites: options.sites,
    };
    let leaves = (0..layout.sites)
        .map(|i| pki.leaf(&[&Layout::host(i)]))
        .collect::<Result<Vec<_>, _>>()?;
    let probe = probe::Probe::trusting(&pki.ca_pem)?;

    eprintln!("[setup] starting the control plane");
    let env = TestEnv::start_with(&binaries).await?;
    let client = env.client().await?;
    env.install_crds(&sekisho_api::crd::all(), "sekisho-bench")
        .await?;
    eprintln!("[setup] creating the objects");
    let created = cluster::populate(
        &client,
        &Plan {
            layout,
            site: site_echo.addr,
            edited: edited_echo.addr,
            leaves: &leaves,
            ca_pem: &pki.ca_pem,
            opaque: options.opaque,
            opaque_bytes: options.opaque_bytes,
            concurrency: options.concurrency.max(1),
            deadline: Instant::now() + Duration::from_secs(options.setup_s),
        },
    )
    .await?;
    for c in &created {
        eprintln!("[setup] {} {} in {:.1?}", c.count, c.kind, c.elapsed);
    }

    let sites = Sites {
        layout,
        pki,
        leaves,
        probe,
        site: site_echo.addr,
        edited: edited_echo.addr,
        poll: Duration::from_millis(options.poll_ms.max(1)),
        limit: Duration::from_secs(options.limit_s),
        changes: options.changes,
    };
    let mut noise = Vec::new();
    let mut runs = Vec::new();
    let plane = kubernetes::ControlPlane {
        client: &client,
        kubeconfig: env.admin_kubeconfig(),
        dir: env.dir(),
        concurrency: options.concurrency.max(1),
    };
    let (kube_run, mut kube_cost) = watched(
        "Kubernetes mode",
        &mut noise,
        kubernetes::run(&sites, &plane, &options.sekisho, &work),
    )
    .await?;
    runs.push(kube_run);
    // The control plane is done with: its processes stop taking CPU from the other runs.
    drop(client);
    drop(env);

    runs.push(
        watched(
            "file mode",
            &mut noise,
            file::run(&sites, &options.sekisho, &work),
        )
        .await?,
    );
    kube_cost.empty_file_mode = Some(file::floor(&sites, &options.sekisho, &work).await?);
    let nginx_found = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok();
    let peer_skipped = if options.no_nginx {
        Some("left out with --no-nginx.".to_owned())
    } else if !nginx_found {
        Some("nginx is not installed.".to_owned())
    } else {
        runs.push(watched("nginx", &mut noise, nginx::run(&sites, &work)).await?);
        None
    };

    let section = report::render(&Report {
        command: &options.command,
        facts: &facts,
        settings: format!(
            "{} Ingresses (with as many TLS Secrets, headless Services and EndpointSlices) in {} \
             namespaces, {} unrelated Opaque Secrets of {} KiB; {} changes of each kind per \
             server; objects created {} at a time.",
            options.sites,
            options.namespaces,
            options.opaque,
            options.opaque_bytes / 1024,
            options.changes,
            options.concurrency
        ),
        created: &created,
        runs: &runs,
        kube: &kube_cost,
        peer_skipped,
        noise: &noise,
        total: began.elapsed(),
        poll: sites.poll,
    });
    println!("{section}");
    if let Some(path) = &options.results {
        report::write_results(path, &section)?;
        eprintln!("[report] written into {}", path.display());
    }
    Ok(())
}
