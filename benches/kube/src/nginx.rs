//! The peer: nginx (Debian's, one worker) with one server block per site, each with its own
//! certificate files, in front of the same upstream. nginx watches nothing: after a
//! certificate's files change, whatever manages it runs `nginx -s reload`, and the master
//! reads the whole configuration and every certificate again and starts new workers. The time
//! is from the reload command to the first handshake that presents the new certificate.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::cluster::Layout;
use crate::file::write_pair;
use crate::outcome::{Run, Series, Start};
use crate::probe;
use crate::process::{self, Child};
use crate::site::Sites;

fn config(sites: &Sites, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut text = format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server_names_hash_max_size 4096;
  server_names_hash_bucket_size 64;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
"
    );
    for i in 0..sites.layout.sites {
        let _ = write!(
            text,
            "  server {{
    listen 127.0.0.1:{port} ssl{default};
    server_name {host};
    ssl_certificate {d}/certs/site-{i:04}.crt;
    ssl_certificate_key {d}/certs/site-{i:04}.key;
    location / {{ proxy_pass http://{upstream}; }}
  }}
",
            default = if i == 0 { " default_server" } else { "" },
            host = Layout::host(i),
            upstream = sites.site,
        );
    }
    text.push_str("}\n");
    text
}

/// Runs `nginx -s reload` and waits for the command (not the reload) to end.
fn reload(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("nginx")
        .args(nginx_args(dir))
        .args(["-s", "reload"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running nginx -s reload")?;
    if !status.success() {
        bail!("nginx -s reload: {status}");
    }
    Ok(())
}

fn nginx_args(dir: &Path) -> [String; 6] {
    [
        "-p".to_owned(),
        dir.display().to_string(),
        "-c".to_owned(),
        dir.join("nginx.conf").display().to_string(),
        "-e".to_owned(),
        dir.join("error.log").display().to_string(),
    ]
}

/// Waits (at most 10 s) until the old workers are gone: the master and one worker.
async fn settled(master: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process::tree(master).len() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn run(sites: &Sites, work: &Path) -> anyhow::Result<Run> {
    let dir = work.join("nginx");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    for (i, leaf) in sites.leaves.iter().enumerate() {
        write_pair(&certs, i, leaf)?;
    }
    let port = sekisho_testkit::free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::fs::write(dir.join("nginx.conf"), config(sites, &dir, port))?;
    let started = Instant::now();
    let mut master = Child::spawn(
        "nginx",
        Command::new("nginx")
            .args(nginx_args(&dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?),
    )?;
    let (served, ()) = probe::until("the sample sites", started, sites.poll, sites.limit, || {
        let running = master.check_running();
        async move {
            running?;
            sites.samples_served(addr).await
        }
    })
    .await?;
    eprintln!("[nginx] the sample sites served after {served:.2?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = master.id();
    let memory = process::memory(pid)?;
    eprintln!("[nginx] RSS {} KiB (master and worker)", memory.rss);

    let mut certificates = Series::default();
    for i in sites.changed(sites.layout.sites / (2 * sites.changes.max(1))) {
        let (leaf, der) = sites.renewal(i)?;
        let host = Layout::host(i);
        write_pair(&certs, i, &leaf)?;
        let since = Instant::now();
        reload(&dir)?;
        match sites
            .seen_after(&format!("the renewed certificate of {host}"), since, || {
                sites.presents(addr, &host, &der)
            })
            .await
        {
            Some(elapsed) => certificates.times.push(elapsed),
            None => certificates.missed += 1,
        }
        settled(pid).await;
    }
    eprintln!("[nginx] reloads: {:?}", certificates.times);
    let memory_after = process::memory(pid)?;
    Ok(Run {
        name: "nginx (1 worker), nginx -s reload",
        start: Start {
            readyz: None,
            served,
        },
        memory,
        memory_after: Some(memory_after),
        certificates,
        routes: None,
        certificate_change: "files replaced, then `nginx -s reload` (timed from the command)",
        route_change: "",
    })
}
