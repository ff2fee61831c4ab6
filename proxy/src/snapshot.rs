//! The immutable routing snapshot: built whole from a validated configuration, then swapped in
//! atomically. Requests in flight keep the snapshot they started with.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{Config, Limits};
use crate::metrics::{Metrics, Name, RouteMetrics};
use crate::route::RouteTable;
use crate::tls::TlsError;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable<Arc<Route>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    pub access_log: bool,
}

#[derive(Debug)]
pub struct Route {
    /// `host/path` (or `host/*` for a host's default): the name in logs and metrics.
    pub name: Name,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
}

impl Snapshot {
    /// Builds a snapshot. Upstreams whose configuration did not change are taken over from
    /// `previous` with their connection pools.
    pub fn build(
        config: &Config,
        previous: Option<&Snapshot>,
        workers: usize,
        metrics: &Metrics,
    ) -> Result<Self, TlsError> {
        let mut upstreams = HashMap::with_capacity(config.upstreams.len());
        for (name, upstream_config) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config == *upstream_config)
                .cloned();
            let upstream = match reused {
                Some(old) => old,
                None => Arc::new(Upstream::build(name, upstream_config, workers)?),
            };
            upstreams.insert(name.clone(), upstream);
        }

        let mut routes = RouteTable::default();
        for host in &config.hosts {
            let host_name = host.host.to_ascii_lowercase();
            let route = |label: &str, upstream: &str| {
                let name = Name(format!("{host_name}{label}").into());
                Arc::new(Route {
                    metrics: RouteMetrics::new(metrics, name.clone()),
                    name,
                    upstream: upstreams[upstream].clone(),
                })
            };
            let paths = host
                .paths
                .iter()
                .map(|p| (p.path.clone(), p.path_type, route(&p.path, &p.upstream)))
                .collect::<Vec<_>>();
            let default = host.default.as_deref().map(|u| route("/*", u));
            routes.insert_host(&host_name, paths, default);
        }

        Ok(Self {
            routes,
            upstreams,
            limits: config.limits.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            access_log: config.access_log,
        })
    }

    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
