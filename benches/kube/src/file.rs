//! File mode with the same routes: a generated configuration with every site's host, upstream
//! and certificate files. Certificates are renewed by replacing the files, routes edited by
//! rewriting the configuration (each written aside and renamed into place); the proxy's own
//! watcher notices both.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Layout;
use crate::outcome::{Memory, Run, Series, Start};
use crate::probe;
use crate::process;
use crate::sekisho::{LISTEN, Sekisho};
use crate::site::Sites;

/// Writes `text` to `path` through a file beside it and a rename, so that no reader sees half.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

fn cert_files(dir: &Path, i: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("site-{i:04}.crt")),
        dir.join(format!("site-{i:04}.key")),
    )
}

/// Writes site `i`'s certificate and key (the key first: a reload between the two renames
/// then sees a mismatched pair, refuses it and keeps the old one until the next event).
pub(crate) fn write_pair(dir: &Path, i: usize, leaf: &sekisho_testkit::Leaf) -> anyhow::Result<()> {
    let (cert, key) = cert_files(dir, i);
    replace(&key, &leaf.key_pem)?;
    replace(&cert, &leaf.cert_pem)
}

/// The configuration: the static settings of Kubernetes mode's run, then the routes.
fn config(sites: &Sites, certs: &Path, edits: &[(usize, String)]) -> String {
    let mut text = String::from(LISTEN);
    text.push_str("tls:\n  certificates:\n");
    for i in 0..sites.layout.sites {
        let (cert, key) = cert_files(certs, i);
        let _ = writeln!(
            text,
            "    - {{cert: {:?}, key: {:?}}}",
            cert.display().to_string(),
            key.display().to_string()
        );
    }
    text.push_str("upstreams:\n");
    let _ = writeln!(
        text,
        "  edited: {{endpoints: [\"http://{}\"]}}",
        sites.edited
    );
    for i in 0..sites.layout.sites {
        let _ = writeln!(
            text,
            "  site-{i:04}: {{endpoints: [\"http://{}\"]}}",
            sites.site
        );
    }
    text.push_str("hosts:\n");
    for i in 0..sites.layout.sites {
        let _ = writeln!(
            text,
            "  - host: {}\n    public: true\n    paths:\n      - {{path: /, type: Prefix, upstream: site-{i:04}}}",
            Layout::host(i)
        );
        for (_, path) in edits.iter().filter(|(site, _)| *site == i) {
            let _ = writeln!(
                text,
                "      - {{path: {path}, type: Exact, upstream: edited}}"
            );
        }
    }
    text
}

pub(crate) async fn run(sites: &Sites, binary: &Path, work: &Path) -> anyhow::Result<Run> {
    let dir = work.join("file");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    for (i, leaf) in sites.leaves.iter().enumerate() {
        write_pair(&certs, i, leaf)?;
    }
    let mut edits = Vec::new();
    let path = dir.join("sekisho.yaml");
    replace(&path, &config(sites, &certs, &edits))?;
    let path_arg = path.to_string_lossy().into_owned();
    let dev_ca = work.join("dev-ca");
    let proxy = Sekisho::start(
        binary,
        &["--config", &path_arg],
        &[("SEKISHO_DEV_CA_DIR", &dev_ca)],
        work.join("file-proxy.log"),
    )
    .await?;
    let readyz = proxy.readyz(sites.poll, sites.limit).await?;
    let (served, ()) = probe::until(
        "the sample sites",
        proxy.started,
        sites.poll,
        sites.limit,
        || sites.samples_served(proxy.https),
    )
    .await?;
    eprintln!("[file] /readyz 200 after {readyz:.2?}, the sample sites after {served:.2?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = proxy.child.id();
    let memory = process::memory(pid)?;
    eprintln!("[file] RSS {} KiB", memory.rss);

    let mut certificates = Series::default();
    for i in sites.changed(sites.layout.sites / (2 * sites.changes.max(1))) {
        let (leaf, der) = sites.renewal(i)?;
        let host = Layout::host(i);
        let since = Instant::now();
        write_pair(&certs, i, &leaf)?;
        match sites
            .seen_after(&format!("the renewed certificate of {host}"), since, || {
                sites.presents(proxy.https, &host, &der)
            })
            .await
        {
            Some(elapsed) => certificates.times.push(elapsed),
            None => certificates.missed += 1,
        }
        // The reload has ended when its change shows; let the watcher settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("[file] certificate renewals: {:?}", certificates.times);

    let mut routes = Series::default();
    for (j, i) in sites.changed(0).into_iter().enumerate() {
        let host = Layout::host(i);
        let edit = format!("/edit-{j}");
        edits.push((i, edit.clone()));
        let since = Instant::now();
        replace(&path, &config(sites, &certs, &edits))?;
        match sites
            .seen_after(&format!("{host}{edit}"), since, || {
                sites.routes_to_edited(proxy.https, &host, &edit)
            })
            .await
        {
            Some(elapsed) => routes.times.push(elapsed),
            None => routes.missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("[file] route edits: {:?}", routes.times);
    let memory_after = process::memory(pid)?;
    Ok(Run {
        name: "sekisho-proxy --config (file mode)",
        start: Start {
            readyz: Some(readyz),
            served,
        },
        memory,
        memory_after: Some(memory_after),
        certificates,
        routes: Some(routes),
        certificate_change: "certificate and key files replaced (rename)",
        route_change: "configuration file rewritten with one more Exact path",
    })
}

/// The memory of file mode with the listeners and no route or certificate: the floor any
/// sekisho-proxy process has.
pub(crate) async fn floor(sites: &Sites, binary: &Path, work: &Path) -> anyhow::Result<Memory> {
    let path = work.join("empty.yaml");
    std::fs::write(&path, LISTEN)?;
    let path_arg = path.to_string_lossy().into_owned();
    let dev_ca = work.join("dev-ca");
    let proxy = Sekisho::start(
        binary,
        &["--config", &path_arg],
        &[("SEKISHO_DEV_CA_DIR", &dev_ca)],
        work.join("empty-proxy.log"),
    )
    .await?;
    proxy.readyz(sites.poll, sites.limit).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    process::memory(proxy.child.id())
}
