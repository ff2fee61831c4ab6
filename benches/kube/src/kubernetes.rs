//! Kubernetes mode: `sekisho-proxy --kubernetes` (admin kubeconfig, default controller name)
//! against the populated control plane. Times the start, reads the memory, times Secret
//! renewals and Ingress edits, and counts what each change cost the proxy, the API server and
//! etcd.

use std::path::Path;
use std::time::Duration;

use kube::Client;
use tokio::time::Instant;

use crate::cluster::{self, Layout};
use crate::outcome::{Cost, KubeCost, Memory, Run, Series, Start};
use crate::probe;
use crate::process;
use crate::sekisho::{LISTEN, Sekisho};
use crate::site::Sites;

/// The control plane the proxy watches.
pub(crate) struct ControlPlane<'a> {
    pub(crate) client: &'a Client,
    pub(crate) kubeconfig: &'a Path,
    /// Its directory (named in its processes' command lines).
    pub(crate) dir: &'a Path,
    /// Requests in flight at once when the bench edits many objects.
    pub(crate) concurrency: usize,
}

/// A controller name no IngressClass has.
const NO_CLASS: &str = "sekisho.dev/bench-serves-nothing";

/// Counters read before and after a change.
#[derive(Debug, Clone, Copy)]
struct Reading {
    secret_gets: u64,
    reloads: f64,
    proxy_cpu: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
}

struct Pids {
    proxy: u32,
    apiserver: Option<u32>,
    etcd: Option<u32>,
}

impl Reading {
    async fn take(proxy: &Sekisho, pids: &Pids, client: &Client) -> anyhow::Result<Self> {
        let cpu = |pid: Option<u32>| {
            pid.and_then(|p| process::cpu_seconds(p).ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            secret_gets: cluster::secret_gets(client).await?,
            reloads: proxy.reloads().await?,
            proxy_cpu: process::cpu_seconds(pids.proxy)?,
            apiserver_cpu: cpu(pids.apiserver),
            etcd_cpu: cpu(pids.etcd),
        })
    }
}

/// What changes cost, per change, as medians.
fn medians(change: &'static str, readings: &[(Reading, Reading)]) -> Cost {
    let median = |f: &dyn Fn(&(Reading, Reading)) -> f64| -> f64 {
        let mut values: Vec<f64> = readings.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values
            .get(values.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0)
    };
    Cost {
        change,
        secret_gets: median(&|(a, b)| b.secret_gets.saturating_sub(a.secret_gets) as f64),
        reloads: median(&|(a, b)| b.reloads - a.reloads),
        proxy_cpu_ms: median(&|(a, b)| (b.proxy_cpu - a.proxy_cpu) * 1000.0),
        apiserver_cpu_ms: median(&|(a, b)| (b.apiserver_cpu - a.apiserver_cpu) * 1000.0),
        etcd_cpu_ms: median(&|(a, b)| (b.etcd_cpu - a.etcd_cpu) * 1000.0),
    }
}

/// Waits until a rebuild has ended (at most 15 s): until neither the proxy's count of
/// rebuilds nor the API server's count of Secret GETs (a rebuild reads Secrets after it has
/// swapped the routes in) moved for 0.5 s. So a change's cost is counted whole, and the next
/// change finds the proxy idle.
async fn quiet(proxy: &Sekisho, client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let reading =
        || async { anyhow::Ok((proxy.reloads().await?, cluster::secret_gets(client).await?)) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = reading().await?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = reading().await?;
        if now == last {
            return Ok(());
        }
        last = now;
    }
    Ok(())
}

/// Starts the proxy in Kubernetes mode, serving the IngressClasses of `controller` (the
/// default one when `None`).
async fn start(
    binary: &Path,
    plane: &ControlPlane<'_>,
    work: &Path,
    controller: Option<&str>,
    log: &str,
) -> anyhow::Result<Sekisho> {
    let config = work.join("kube-static.yaml");
    std::fs::write(&config, LISTEN)?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut args = vec!["--kubernetes", "--config", &config_arg];
    if let Some(controller) = controller {
        args.extend(["--ingress-controller", controller]);
    }
    let dev_ca = work.join("dev-ca");
    Sekisho::start(
        binary,
        &args,
        &[
            ("KUBECONFIG", plane.kubeconfig),
            ("SEKISHO_DEV_CA_DIR", &dev_ca),
        ],
        work.join(log),
    )
    .await
}

/// Until the sample sites are served, from the spawn.
async fn sites_served(sites: &Sites, proxy: &Sekisho) -> anyhow::Result<Duration> {
    let (served, ()) = probe::until(
        "the sample sites",
        proxy.started,
        sites.poll,
        sites.limit,
        || sites.samples_served(proxy.https),
    )
    .await?;
    Ok(served)
}

/// The memory once a start has settled.
async fn settled_memory(proxy: &Sekisho, client: &Client) -> anyhow::Result<Memory> {
    quiet(proxy, client).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    process::memory(proxy.child.id())
}

pub(crate) async fn run(
    sites: &Sites,
    plane: &ControlPlane<'_>,
    binary: &Path,
    work: &Path,
) -> anyhow::Result<(Run, KubeCost)> {
    let client = plane.client;
    let layout = sites.layout;
    let gets_before = cluster::secret_gets(client).await?;
    let proxy = start(binary, plane, work, None, "kube-proxy.log").await?;
    let pids = Pids {
        proxy: proxy.child.id(),
        apiserver: process::find("kube-apiserver", plane.dir),
        etcd: process::find("etcd", plane.dir),
    };
    let readyz = proxy.readyz(sites.poll, sites.limit).await?;
    eprintln!("[kube] /readyz 200 after {readyz:.2?}");
    let served = sites_served(sites, &proxy).await?;
    eprintln!("[kube] the sample sites served with their certificates after {served:.2?}");
    let mut cost = KubeCost {
        start_secret_gets: cluster::secret_gets(client)
            .await?
            .saturating_sub(gets_before),
        start_proxy_cpu_s: process::cpu_seconds(pids.proxy)?,
        ..KubeCost::default()
    };
    let memory = settled_memory(&proxy, client).await?;
    eprintln!("[kube] RSS {} KiB", memory.rss);

    let mut certificates = Series::default();
    let mut readings = Vec::new();
    for i in sites.changed(layout.sites / (2 * sites.changes.max(1))) {
        let (leaf, der) = sites.renewal(i)?;
        let host = Layout::host(i);
        let before = Reading::take(&proxy, &pids, client).await?;
        let since = Instant::now();
        cluster::renew(client, &layout, i, &leaf, &sites.pki.ca_pem).await?;
        match sites
            .seen_after(&format!("the renewed certificate of {host}"), since, || {
                sites.presents(proxy.https, &host, &der)
            })
            .await
        {
            Some(elapsed) => certificates.times.push(elapsed),
            None => certificates.missed += 1,
        }
        quiet(&proxy, client).await?;
        readings.push((before, Reading::take(&proxy, &pids, client).await?));
    }
    eprintln!("[kube] Secret renewals: {:?}", certificates.times);
    cost.changes
        .push(medians("a Secret renewed (new certificate)", &readings));

    let mut routes = Series::default();
    let mut readings = Vec::new();
    for (j, i) in sites.changed(0).into_iter().enumerate() {
        let host = Layout::host(i);
        let path = format!("/edit-{j}");
        let before = Reading::take(&proxy, &pids, client).await?;
        let since = Instant::now();
        cluster::edit(client, &layout, i, std::slice::from_ref(&path)).await?;
        match sites
            .seen_after(&format!("{host}{path}"), since, || {
                sites.routes_to_edited(proxy.https, &host, &path)
            })
            .await
        {
            Some(elapsed) => routes.times.push(elapsed),
            None => routes.missed += 1,
        }
        quiet(&proxy, client).await?;
        readings.push((before, Reading::take(&proxy, &pids, client).await?));
    }
    eprintln!("[kube] Ingress edits: {:?}", routes.times);
    cost.changes
        .push(medians("an Ingress edited (a new path)", &readings));

    // A burst: an edit that arrives while a rebuild started by a renewal is still running.
    let head_start = Duration::from_millis(300);
    let bursts = sites.changes.div_ceil(4);
    for (j, i) in sites
        .changed(layout.sites / (4 * sites.changes))
        .into_iter()
        .take(bursts)
        .enumerate()
    {
        let other = (i + layout.sites / 2) % layout.sites;
        let (leaf, _) = sites.renewal(other)?;
        cluster::renew(client, &layout, other, &leaf, &sites.pki.ca_pem).await?;
        tokio::time::sleep(head_start).await;
        let host = Layout::host(i);
        let path = format!("/during-{j}");
        let since = Instant::now();
        cluster::edit(client, &layout, i, std::slice::from_ref(&path)).await?;
        match sites
            .seen_after(&format!("{host}{path}"), since, || {
                sites.routes_to_edited(proxy.https, &host, &path)
            })
            .await
        {
            Some(elapsed) => cost.edits_during_rebuild.times.push(elapsed),
            None => cost.edits_during_rebuild.missed += 1,
        }
        quiet(&proxy, client).await?;
    }
    cost.rebuild_head_start = head_start;
    eprintln!(
        "[kube] Ingress edits during a rebuild: {:?}",
        cost.edits_during_rebuild.times
    );
    let memory_after = process::memory(pids.proxy)?;
    drop(proxy);

    let took = cluster::read_secrets_one_by_one(client, &layout).await?;
    cost.sequential_gets = Some((layout.sites, took));
    cost.sizes = cluster::object_sizes(client).await?;

    // Where the memory goes: the same watches serving nothing; then everything again, with
    // the objects' managedFields cleared.
    let idle = start(
        binary,
        plane,
        work,
        Some(NO_CLASS),
        "kube-proxy-serving-nothing.log",
    )
    .await?;
    idle.readyz(sites.poll, sites.limit).await?;
    cost.serving_nothing = Some(settled_memory(&idle, client).await?);
    drop(idle);
    cluster::clear_managed_fields(client, &layout, plane.concurrency).await?;
    cost.sizes_cleared = cluster::object_sizes(client).await?;
    let again = start(binary, plane, work, None, "kube-proxy-unmanaged.log").await?;
    let readyz_again = again.readyz(sites.poll, sites.limit).await?;
    let served_again = sites_served(sites, &again).await?;
    cost.unmanaged = Some((
        Start {
            readyz: Some(readyz_again),
            served: served_again,
        },
        settled_memory(&again, client).await?,
    ));
    drop(again);
    Ok((
        Run {
            name: "sekisho-proxy --kubernetes",
            start: Start {
                readyz: Some(readyz),
                served,
            },
            memory,
            memory_after: Some(memory_after),
            certificates,
            routes: Some(routes),
            certificate_change: "Secret data replaced (merge patch), as cert-manager renews",
            route_change: "Ingress: one more Exact path to another Service (merge patch)",
        },
        cost,
    ))
}
