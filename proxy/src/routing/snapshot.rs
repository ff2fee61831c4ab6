//! The immutable routing snapshot: built whole from a validated configuration, then swapped in
//! atomically. Requests in flight keep the snapshot they started with.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use std::time::Duration;

use sekisho_identity::webhook::WebhookSecret;
use sekisho_wire::agent_auth::AgentPublicKey;

use crate::auth::identity::{IdentityError, IdentityRuntime};
use crate::config::origin::Origin;
use crate::config::problem::check_host_pattern;
use crate::config::{Config, HostConfig, Limits, PathConfig};
use crate::forward::header::{IdentityHeaderNames, route_claims};
use crate::forward::upstream::Upstream;
use crate::frontdoor::tls::TlsError;
use crate::observe::metrics::{Metrics, Name, RouteMetrics};
use crate::policy::RouteAccess;
use crate::routing::path::config_path;
use crate::routing::table::{PathType, RouteTable};

/// Why a snapshot could not be built from a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot read the webhook secret of {route}")]
    WebhookSecret {
        route: String,
        #[source]
        source: sekisho_identity::webhook::WebhookSecretError,
    },
}

/// Every path under this prefix is the proxy's own, on every host (never an upstream's).
pub(crate) const OWN_PREFIX: &str = "/.sekisho/";

/// Where ACME HTTP-01 validators ask for a challenge's token (RFC 8555 §8.3).
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Cloning shares the routes, upstreams and identity state (they are `Arc`s): a copy with other
/// limits serves the same as the original.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub routes: RouteTable<Arc<Route>>,
    /// ACME HTTP-01 challenges: public `Exact` routes under [`ACME_CHALLENGE_PREFIX`], looked
    /// up on the plain-HTTP listener only, before anything else there; never on HTTPS.
    pub acme: RouteTable<Arc<Route>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    pub access_log: bool,
    /// Login, sessions and tokens, when configured.
    pub identity: Option<Arc<IdentityRuntime>>,
    /// Every route, in configuration order (for `/.sekisho/me`).
    pub route_list: Vec<Arc<Route>>,
    /// Tunnel routes by host (lowercase).
    pub tunnels: HashMap<String, Arc<TunnelRoute>>,
    /// The keys of each agent that may connect.
    pub agents: HashMap<String, Vec<AgentPublicKey>>,
    /// The gate's replicas as listed in the file (`replicas:`), to relay tunnel streams to.
    pub replicas: Arc<[std::net::SocketAddr]>,
}

/// Where `sekisho tunnel HOST` goes, and who may open it.
#[derive(Debug)]
pub(crate) struct TunnelRoute {
    /// The host, lowercase: the name in logs.
    pub host: String,
    /// `host:port`.
    pub target: String,
    /// The agent that dials the target, or none when the proxy dials it.
    pub agent: Option<String>,
    pub access: RouteAccess,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct Route {
    /// `host/path` (or `host/*` for a host's default): the name in logs and metrics.
    pub name: Name,
    /// The host pattern and path as configured.
    pub host: String,
    pub path: String,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
    /// Who may pass.
    pub access: RouteAccess,
    /// `Authorization: Bearer` tokens are accepted.
    pub bearer: bool,
    /// A login older than this must be renewed.
    pub max_session_age: Option<Duration>,
    /// A session idle for longer must log in again on this route.
    pub session_idle_timeout: Option<Duration>,
    pub webhook: Option<RouteWebhook>,
    /// `%2F` may reach the upstream (the route was found on the decoded path).
    pub allow_encoded_slashes: bool,
    /// The `Upgrade` protocols passed to the upstream, lowercase.
    pub upgrades: Box<[Box<str>]>,
    /// Origins besides the route's own whose pages may open WebSockets on it.
    pub websocket_origins: Vec<Origin>,
    /// The headers the upstream gets the verified identity in (the policy's names).
    pub identity_headers: IdentityHeaderNames,
    /// What a client may not send here besides the built-in claims: `identity.strip_headers`
    /// and the route's identity header names (see [`route_claims`]).
    pub claims: Box<[HeaderName]>,
}

impl Route {
    /// Whether an `Upgrade` to `protocol` may pass (protocol names compare case-insensitively).
    pub(crate) fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        self.upgrades
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(protocol))
    }
}

/// A webhook route's signature check.
#[derive(Debug)]
pub(crate) struct RouteWebhook {
    pub secret: Arc<WebhookSecret>,
    pub max_body: u64,
}

impl Snapshot {
    /// Builds a snapshot. Upstreams whose configuration did not change are taken over from
    /// `previous` with their connection pools.
    pub(crate) fn build(
        config: &Config,
        previous: Option<&Snapshot>,
        workers: usize,
        metrics: &Metrics,
    ) -> Result<Self, SnapshotError> {
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
            metrics.register_upstream(&Name(upstream.name.clone()));
            upstreams.insert(name.clone(), upstream);
        }

        let identity = IdentityRuntime::build(config, previous.and_then(|p| p.identity.as_ref()))?;
        for provider in identity.iter().flat_map(|i| &i.providers) {
            metrics.register_provider(&provider.name);
        }
        let strip_headers = identity.as_ref().map_or(&[][..], |i| &i.strip_headers[..]);
        let mut routes = RouteTable::default();
        let mut route_list = Vec::new();
        for host in &config.hosts {
            let host_name = host.host.to_ascii_lowercase();
            let mut route = |path: Option<&PathConfig>, upstream: &str| {
                let label = path.map_or("/*", |p| p.path.as_str());
                let name = Name(format!("{host_name}{label}").into());
                let webhook = match path.and_then(|p| p.webhook.as_ref()) {
                    Some(webhook) => Some(RouteWebhook {
                        secret: match &webhook.inline {
                            Some(inline) => inline.secret.clone(),
                            None => Arc::new(WebhookSecret::load(&webhook.secret_file).map_err(
                                |source| SnapshotError::WebhookSecret {
                                    route: name.0.to_string(),
                                    source,
                                },
                            )?),
                        },
                        max_body: webhook.max_body,
                    }),
                    None => None,
                };
                let access = route_access(config, host, path);
                let identity_headers = match &access {
                    RouteAccess::Policy(policy) => policy.identity_header_names(),
                    RouteAccess::Public | RouteAccess::DenyAll => IdentityHeaderNames::default(),
                };
                let route = Arc::new(Route {
                    metrics: RouteMetrics::new(metrics, name.clone()),
                    name,
                    host: host_name.clone(),
                    path: path.map_or("/", |p| p.path.as_str()).to_owned(),
                    upstream: upstreams[upstream].clone(),
                    claims: route_claims(strip_headers, &identity_headers),
                    identity_headers,
                    access,
                    bearer: path.and_then(|p| p.bearer).unwrap_or(host.bearer),
                    max_session_age: path
                        .and_then(|p| p.max_session_age)
                        .or(host.max_session_age),
                    session_idle_timeout: path
                        .and_then(|p| p.session_idle_timeout)
                        .or(host.session_idle_timeout),
                    webhook,
                    allow_encoded_slashes: path
                        .and_then(|p| p.allow_encoded_slashes)
                        .unwrap_or(host.allow_encoded_slashes),
                    upgrades: path
                        .and_then(|p| p.upgrades.as_ref())
                        .or(host.upgrades.as_ref())
                        .map_or_else(
                            || Box::from([Box::from("websocket")]),
                            |tokens| {
                                tokens
                                    .iter()
                                    .map(|t| t.to_ascii_lowercase().into())
                                    .collect()
                            },
                        ),
                    websocket_origins: websocket_origins(host, path),
                });
                route_list.push(route.clone());
                Ok::<_, SnapshotError>(route)
            };
            let mut paths = Vec::with_capacity(host.paths.len());
            for p in &host.paths {
                paths.push((p.path.clone(), p.path_type, route(Some(p), &p.upstream)?));
            }
            let default = match host.default.as_deref() {
                Some(upstream) => Some(route(None, upstream)?),
                None => None,
            };
            routes.insert_host(&host_name, paths, default);
        }

        let acme = acme_routes(config, &upstreams, strip_headers, metrics);

        let tunnels = config
            .tunnels
            .iter()
            .map(|t| {
                let host = t.host.to_ascii_lowercase();
                let route = TunnelRoute {
                    host: host.clone(),
                    target: t.target.clone(),
                    agent: t.agent.clone(),
                    access: policy_access(config, t.policy.as_deref()),
                    connect_timeout: t.connect_timeout,
                };
                (host, Arc::new(route))
            })
            .collect();
        let agents = config
            .agents
            .iter()
            .map(|(name, agent)| (name.clone(), agent.public_keys()))
            .collect();

        Ok(Self {
            tunnels,
            agents,
            replicas: config.replicas.as_slice().into(),
            routes,
            acme,
            upstreams,
            limits: config.limits.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            access_log: config.access_log,
            identity,
            route_list,
        })
    }

    /// The identity runtime and whether the proxy answers this request itself (auth host,
    /// `/.sekisho/` paths).
    pub(crate) fn own_endpoint(&self, host: &str, path: &str) -> Option<&IdentityRuntime> {
        self.identity
            .as_deref()
            .filter(|identity| host == identity.auth_host || path.starts_with(OWN_PREFIX))
    }

    pub(crate) fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// The ACME HTTP-01 challenge table. Whatever a source gives, it holds only what a validator
/// asks for: `Exact` paths in normal form under [`ACME_CHALLENGE_PREFIX`] of exact hosts, to an
/// upstream the snapshot has. Anything else is left out and logged, since these routes are
/// public and pass the plain-HTTP listener's redirect. A host's `default`, `public` and
/// `policy` mean nothing here: every challenge is public.
fn acme_routes(
    config: &Config,
    upstreams: &HashMap<String, Arc<Upstream>>,
    strip_headers: &[HeaderName],
    metrics: &Metrics,
) -> RouteTable<Arc<Route>> {
    // A host listed twice keeps the paths of both.
    let mut hosts: HashMap<String, Vec<(String, PathType, Arc<Route>)>> = HashMap::new();
    for host in &config.acme_challenges {
        let host_name = host.host.to_ascii_lowercase();
        // One name per host for every token: a series per token would grow with each renewal.
        let name = Name(format!("{host_name}{ACME_CHALLENGE_PREFIX}").into());
        for path in &host.paths {
            let upstream = upstreams.get(&path.upstream);
            let refused = if check_host_pattern(&host_name).is_err() || host_name.starts_with("*.")
            {
                Some("not an exact host name")
            } else if !is_acme_challenge(&path.path) || path.path_type != PathType::Exact {
                Some("not an Exact path in normal form under /.well-known/acme-challenge/")
            } else if upstream.is_none() {
                Some("no such upstream")
            } else {
                None
            };
            let (Some(upstream), None) = (upstream, refused) else {
                tracing::warn!(
                    host = %host_name,
                    path = %path.path,
                    upstream = %path.upstream,
                    reason = refused.unwrap_or_default(),
                    "ACME challenge route left out"
                );
                continue;
            };
            let route = Route {
                name: name.clone(),
                metrics: RouteMetrics::new(metrics, name.clone()),
                host: host_name.clone(),
                path: path.path.clone(),
                upstream: upstream.clone(),
                access: RouteAccess::Public,
                bearer: false,
                max_session_age: None,
                session_idle_timeout: None,
                webhook: None,
                allow_encoded_slashes: false,
                upgrades: Box::default(),
                websocket_origins: Vec::new(),
                identity_headers: IdentityHeaderNames::default(),
                claims: strip_headers.into(),
            };
            hosts.entry(host_name.clone()).or_default().push((
                path.path.clone(),
                PathType::Exact,
                Arc::new(route),
            ));
        }
    }
    let mut table = RouteTable::default();
    for (host, paths) in hosts {
        table.insert_host(&host, paths, None);
    }
    table
}

/// A challenge path: normal, under [`ACME_CHALLENGE_PREFIX`], naming a token.
fn is_acme_challenge(path: &str) -> bool {
    path.strip_prefix(ACME_CHALLENGE_PREFIX)
        .is_some_and(|token| !token.is_empty())
        && config_path(path).is_ok_and(|normal| normal == path)
}

/// How a route is guarded: its own `public`/`policy`, else its host's; neither denies all.
fn route_access(config: &Config, host: &HostConfig, path: Option<&PathConfig>) -> RouteAccess {
    let public = path
        .and_then(|p| p.public)
        .unwrap_or(host.public && path.is_none_or(|p| p.policy.is_none()));
    if public {
        return RouteAccess::Public;
    }
    policy_access(
        config,
        path.and_then(|p| p.policy.as_deref())
            .or(host.policy.as_deref()),
    )
}

/// The origins whose pages may open WebSockets on a route besides its own: the path's list, else
/// the host's. Validation refused any that do not parse.
fn websocket_origins(host: &HostConfig, path: Option<&PathConfig>) -> Vec<Origin> {
    path.and_then(|p| p.websocket_origins.as_deref())
        .unwrap_or(&host.websocket_origins)
        .iter()
        .filter_map(|origin| Origin::parse(origin).ok())
        .collect()
}

/// A named policy's guard; no name, or an unknown one, lets no one through.
fn policy_access(config: &Config, name: Option<&str>) -> RouteAccess {
    match name.and_then(|name| config.policies.get(name)) {
        Some(policy) => RouteAccess::Policy(Arc::new(policy.clone())),
        None => RouteAccess::DenyAll,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_route_takes_its_paths_websocket_origins_else_its_hosts() {
        let config = Config::parse(
            "
listen: {https: '127.0.0.1:8443', admin: '127.0.0.1:9901'}
upstreams:
  app: {endpoints: ['http://127.0.0.1:3000']}
hosts:
  - host: app.example.com
    default: app
    websocket_origins: ['https://tools.example.com']
    paths:
      - {path: /a, upstream: app}
      - {path: /b, upstream: app, websocket_origins: ['https://B.example:8443']}
      - {path: /c, upstream: app, websocket_origins: []}
",
            Path::new("test.yaml"),
            Path::new("/"),
        )
        .unwrap();
        let host = &config.hosts[0];
        let origin = |text: &str| Origin::parse(text).unwrap();
        assert_eq!(
            websocket_origins(host, None),
            [origin("https://tools.example.com")]
        );
        assert_eq!(
            websocket_origins(host, Some(&host.paths[0])),
            [origin("https://tools.example.com")]
        );
        assert_eq!(
            websocket_origins(host, Some(&host.paths[1])),
            [origin("https://b.example:8443")]
        );
        assert_eq!(websocket_origins(host, Some(&host.paths[2])), []);
    }

    #[test]
    fn the_acme_table_holds_only_exact_challenge_paths_of_exact_hosts() {
        let mut config = Config::parse(
            "
listen: {https: '127.0.0.1:8443', admin: '127.0.0.1:9901'}
upstreams:
  app: {endpoints: ['http://127.0.0.1:3000']}
  solver: {endpoints: ['http://127.0.0.1:3001']}
hosts:
  - {host: shop.example.com, public: true, default: app}
",
            Path::new("test.yaml"),
            Path::new("/"),
        )
        .unwrap();
        config.acme_challenges = serde_yaml_ng::from_str(
            "
- host: Shop.Example.com
  paths:
    - {path: /.well-known/acme-challenge/good, type: Exact, upstream: solver}
    - {path: /.well-known/acme-challenge/prefix, type: Prefix, upstream: solver}
    - {path: /.well-known/acme-challenge/, type: Exact, upstream: solver}
    - {path: /.well-known/acme-challenge/a/../b, type: Exact, upstream: solver}
    - {path: /admin, type: Exact, upstream: solver}
    - {path: /.well-known/acme-challenge/nowhere, type: Exact, upstream: gone}
- host: shop.example.com
  paths:
    - {path: /.well-known/acme-challenge/second, type: Exact, upstream: solver}
- host: '*.example.com'
  paths:
    - {path: /.well-known/acme-challenge/wild, type: Exact, upstream: solver}
- host: solo.example.com
  paths:
    - {path: /.well-known/acme-challenge/solo, type: Exact, upstream: solver}
",
        )
        .unwrap();
        let snapshot = Snapshot::build(&config, None, 1, &Metrics::default()).unwrap();
        let challenge = |host: &str, path: &str| {
            snapshot
                .acme
                .find(host, path)
                .map(|route| (route.upstream.name.to_string(), route.name.0.to_string()))
        };
        let solver = |host: &str| {
            Some((
                "solver".to_owned(),
                format!("{host}/.well-known/acme-challenge/"),
            ))
        };
        for (host, path, expected) in [
            (
                "shop.example.com",
                "/.well-known/acme-challenge/good",
                solver("shop.example.com"),
            ),
            (
                "shop.example.com",
                "/.well-known/acme-challenge/second",
                solver("shop.example.com"),
            ),
            (
                "solo.example.com",
                "/.well-known/acme-challenge/solo",
                solver("solo.example.com"),
            ),
            (
                "shop.example.com",
                "/.well-known/acme-challenge/prefix",
                None,
            ),
            (
                "shop.example.com",
                "/.well-known/acme-challenge/prefix/x",
                None,
            ),
            ("shop.example.com", "/.well-known/acme-challenge/", None),
            (
                "shop.example.com",
                "/.well-known/acme-challenge/a/../b",
                None,
            ),
            ("shop.example.com", "/.well-known/acme-challenge/b", None),
            ("shop.example.com", "/admin", None),
            (
                "shop.example.com",
                "/.well-known/acme-challenge/nowhere",
                None,
            ),
            ("x.example.com", "/.well-known/acme-challenge/wild", None),
        ] {
            assert_eq!(challenge(host, path), expected, "{host}{path}");
        }
        let route = snapshot
            .acme
            .find("shop.example.com", "/.well-known/acme-challenge/good")
            .unwrap();
        assert!(matches!(route.access, RouteAccess::Public));
        assert!(route.upgrades.is_empty());
        // The challenges are not routes of the HTTPS listener, nor listed as the site's.
        assert!(!snapshot.routes.knows_host("solo.example.com"));
        assert_eq!(
            snapshot
                .routes
                .find("shop.example.com", "/.well-known/acme-challenge/good")
                .map(|route| route.upstream.name.to_string()),
            Some("app".to_owned())
        );
        assert!(
            snapshot
                .route_list
                .iter()
                .all(|r| r.upstream.name.as_ref() == "app")
        );
    }
}
