//! Ingresses, as the hosts, upstreams and policies of a routing configuration: the same
//! [`HostConfig`]s and [`UpstreamConfig`]s the file gives, so both sources build one snapshot.
//! Pure: [`Cluster`] holds the watched objects, [`routes`] turns them into [`Routes`] and the
//! [`Report`]s (Events) about what could not be served and why.
//!
//! - **Classes.** An Ingress is ours when its `ingressClassName` (or the old
//!   `kubernetes.io/ingress.class` annotation) names an IngressClass whose controller is ours, or
//!   when it names none and one of our classes is the cluster default.
//! - **Order.** Ingresses are taken oldest first (`creationTimestamp`, then namespace/name): the
//!   first to claim a host and path keeps it, later claims are reported on their Ingress.
//! - **Tenants.** The namespace of the first Ingress that names a host owns the host; Ingresses in
//!   other namespaces may add paths to it only when a `SharedHost` lists their namespace.
//! - **Access.** `sekisho.dev/access-policy: NAME` picks the AccessPolicy `NAME` of the
//!   Ingress's namespace, else the ClusterAccessPolicy `NAME`; `public` is said explicitly. Without
//!   the annotation, the class's default (`IngressClassParameters.defaultPolicy`), else the
//!   proxy's `--default-policy`; with none, a person must sign in and is then refused.
//! - **Paths.** `Exact` and `Prefix` as the API defines them; `ImplementationSpecific` is read as
//!   `Prefix`. A path that is not in its normal form (`routing::path`) or that lies under the
//!   proxy's own `/.sekisho/` is not served and is reported.
//! - **ACME.** cert-manager's HTTP-01 solver Ingresses (label
//!   `acme.cert-manager.io/http01-solver: "true"`) become public routes for their
//!   `/.well-known/acme-challenge/` paths only, served on the plain-HTTP listener alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::backend;
use super::object::Key;
use crate::config::problem::check_host_pattern;
use crate::config::{HostConfig, PathConfig, UpstreamConfig};
use crate::policy::AccessPolicy;
use crate::routing::path::config_path;
use crate::routing::snapshot::{ACME_CHALLENGE_PREFIX as ACME_PREFIX, OWN_PREFIX};
use crate::routing::table::PathType;

/// The controller name an IngressClass gives to be served by Sekisho.
pub(crate) const CONTROLLER: &str = "sekisho.dev/ingress-controller";
/// The annotation that picks an Ingress's access policy.
pub(crate) const POLICY_ANNOTATION: &str = "sekisho.dev/access-policy";
/// The annotation value that serves an Ingress without login.
pub(crate) const PUBLIC: &str = "public";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const SOLVER_LABEL: &str = "acme.cert-manager.io/http01-solver";
/// A policy name no policy has: a route given it lets no one through (after sign-in).
const NO_POLICY: &str = "";
/// The host of an Ingress rule without one: every host no other rule names.
pub(crate) const ANY_HOST: &str = "*";

/// What the proxy was told at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The controller name of the IngressClasses to serve.
    pub controller: String,
    /// The ClusterAccessPolicy (or `public`) of Ingresses that name none and whose class has no
    /// default.
    pub default_policy: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            controller: CONTROLLER.to_owned(),
            default_policy: None,
        }
    }
}

/// The watched objects the routes are built from.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cluster {
    pub classes: Vec<Arc<IngressClass>>,
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: HashMap<Key, Arc<Service>>,
    /// EndpointSlices by the Service they belong to.
    pub slices: HashMap<Key, Vec<Arc<EndpointSlice>>>,
    /// AccessPolicies by namespace and name.
    pub policies: HashMap<Key, Arc<AccessPolicy>>,
    /// ClusterAccessPolicies by name.
    pub cluster_policies: HashMap<String, Arc<AccessPolicy>>,
    /// The default policy of each IngressClassParameters, by its name (`None`: it names none).
    pub class_parameters: HashMap<String, Option<String>>,
    /// Hosts (lowercase) that namespaces besides their owner may serve paths on.
    pub shared_hosts: HashMap<String, BTreeSet<String>>,
    /// Who owned each host in the routes served until now: an owner keeps its host while it
    /// has an Ingress for it, so a newer Ingress created in the same second (creation times
    /// have a resolution of a second) cannot win it by the order of names.
    pub previous_owners: BTreeMap<String, String>,
    /// The Ingresses served until now: within one creation second they win a path over a
    /// newcomer, whatever their names.
    pub previous_served: std::collections::HashSet<Key>,
    /// The GitHubWebhooks' paths ([`super::webhook`]).
    pub webhooks: Vec<super::webhook::Mark>,
}

/// A `kubernetes.io/tls` Secret an Ingress serves, and for which of its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsClaim {
    pub secret: Key,
    /// Hosts (lowercase) the Ingress's namespace owns; the certificate serves those it covers.
    pub hosts: Vec<String>,
    pub ingress: Key,
}

/// Something to tell the owner of an Ingress (an Event on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Report {
    pub ingress: Key,
    /// A Warning (something is not served) rather than a Normal event.
    pub warning: bool,
    /// CamelCase, as Events' reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// What the Ingresses ask for.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub hosts: Vec<HostConfig>,
    /// The HTTP-01 solvers' routes, for the plain-HTTP listener only.
    pub acme: Vec<HostConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub policies: BTreeMap<String, AccessPolicy>,
    pub tls: Vec<TlsClaim>,
    /// The Ingresses served (for their status).
    pub served: Vec<Key>,
    /// The namespace that owns each host an Ingress serves.
    pub owners: BTreeMap<String, String>,
    /// The Ingresses that serve at least one path or default.
    pub winners: std::collections::HashSet<Key>,
    pub reports: Vec<Report>,
    /// The GitHubWebhooks not served as they ask.
    pub webhook_findings: Vec<super::webhook::Finding>,
}

/// How one Ingress's routes are guarded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Public,
    /// A key of [`Routes::policies`], or [`NO_POLICY`].
    Policy(String),
}

/// A host being assembled from the Ingresses that name it.
struct HostBuild {
    owner: String,
    paths: Vec<PathConfig>,
    claimed: HashMap<(String, PathType), Key>,
    default: Option<(String, Access, Key)>,
}

/// Turns the cluster's Ingresses into routes.
pub(crate) fn routes(cluster: &Cluster, settings: &Settings) -> Routes {
    let mut out = Routes::default();
    let ours: HashMap<&str, &IngressClass> = cluster
        .classes
        .iter()
        .filter(|c| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(&settings.controller)
        })
        .filter_map(|c| Some((c.metadata.name.as_deref()?, c.as_ref())))
        .collect();
    let default_class = {
        let mut defaults: Vec<&str> = ours
            .iter()
            .filter(|(_, c)| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
            })
            .map(|(name, _)| *name)
            .collect();
        defaults.sort_unstable();
        defaults.first().copied()
    };
    let mut ingresses: Vec<&Ingress> = cluster.ingresses.iter().map(AsRef::as_ref).collect();
    let incumbent = |i: &Ingress| {
        Key::of(&i.metadata).is_some_and(|key| cluster.previous_served.contains(&key))
    };
    ingresses.sort_by_cached_key(|i| age_order(i, incumbent(i)));

    let ingresses: Vec<(&Ingress, Key, &str)> = ingresses
        .into_iter()
        .filter_map(|ingress| {
            let key = Key::of(&ingress.metadata)?;
            let class = match class_of(ingress) {
                Some(name) => ours.get_key_value(name).map(|(name, _)| *name),
                None => default_class,
            }?;
            Some((ingress, key, class))
        })
        .collect();
    let mut hosts = owned_hosts(&ingresses, &cluster.previous_owners);
    let mut solvers = Vec::new();
    for (ingress, key, class) in ingresses {
        out.served.push(key.clone());
        let mut ctx = IngressCtx {
            cluster,
            key: &key,
            out: &mut out,
        };
        if is_acme_solver(ingress) {
            solvers.push((ingress, key));
            continue;
        }
        let access = ctx.access(ingress, ours.get(class).copied(), settings);
        ctx.add_rules(ingress, &access, &mut hosts);
    }
    // Solvers last: one may answer challenges only for hosts its namespace may serve.
    let mut acme: BTreeMap<String, HostBuild> = BTreeMap::new();
    for (ingress, key) in solvers {
        let mut ctx = IngressCtx {
            cluster,
            key: &key,
            out: &mut out,
        };
        ctx.add_acme(ingress, &hosts, &mut acme);
    }
    out.winners = hosts
        .values()
        .flat_map(|b| {
            b.claimed
                .values()
                .chain(b.default.iter().map(|(_, _, key)| key))
        })
        .cloned()
        .collect();
    out.owners = hosts
        .iter()
        .filter(|(_, b)| !b.paths.is_empty() || b.default.is_some())
        .map(|(host, b)| (host.clone(), b.owner.clone()))
        .collect();
    out.webhook_findings = super::webhook::apply(
        hosts.iter_mut().flat_map(|(host, build)| {
            let claimed = &build.claimed;
            build.paths.iter_mut().filter_map(move |path| {
                let claimant = claimed.get(&(path.path.clone(), path.path_type))?;
                Some((host.as_str(), claimant.namespace.as_str(), path))
            })
        }),
        &cluster.webhooks,
    );
    out.hosts = finish(hosts);
    out.acme = finish(acme);
    out
}

/// Every host the Ingresses name (solvers aside), with its owner: the previous owner while it
/// still names the host, else the namespace of the oldest Ingress that does.
fn owned_hosts(
    ingresses: &[(&Ingress, Key, &str)],
    previous: &BTreeMap<String, String>,
) -> BTreeMap<String, HostBuild> {
    let mut claimants: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (ingress, key, _) in ingresses {
        if is_acme_solver(ingress) {
            continue;
        }
        let spec = ingress.spec.as_ref();
        let rules = spec.and_then(|s| s.rules.as_deref()).unwrap_or_default();
        let mut named: Vec<String> = rules
            .iter()
            .map(|r| match r.host.as_deref() {
                None | Some("") => ANY_HOST.to_owned(),
                Some(host) => host.to_ascii_lowercase(),
            })
            .collect();
        if spec.is_some_and(|s| s.default_backend.is_some()) {
            named.push(ANY_HOST.to_owned());
        }
        for host in named {
            claimants.entry(host).or_default().push(&key.namespace);
        }
    }
    claimants
        .into_iter()
        .map(|(host, namespaces)| {
            // Oldest first, as the Ingresses are sorted.
            let owner = previous
                .get(&host)
                .filter(|owner| namespaces.contains(&owner.as_str()))
                .map_or(namespaces[0], String::as_str)
                .to_owned();
            let build = HostBuild {
                owner,
                paths: Vec::new(),
                claimed: HashMap::new(),
                default: None,
            };
            (host, build)
        })
        .collect()
}

fn finish(hosts: BTreeMap<String, HostBuild>) -> Vec<HostConfig> {
    hosts
        .into_iter()
        .filter(|(_, b)| !b.paths.is_empty() || b.default.is_some())
        .map(|(host, build)| {
            let (default, public, policy) = match build.default {
                Some((upstream, Access::Public, _)) => (Some(upstream), true, None),
                Some((upstream, Access::Policy(p), _)) => (Some(upstream), false, Some(p)),
                None => (None, false, None),
            };
            HostConfig {
                host,
                default,
                paths: build.paths,
                public,
                policy,
                bearer: false,
                max_session_age: None,
                session_idle_timeout: None,
                allow_encoded_slashes: false,
                upgrades: None,
                websocket_origins: Vec::new(),
            }
        })
        .collect()
}

/// Oldest first; within one second (creation times count whole seconds), those served
/// already before a newcomer; then by namespace and name.
fn age_order(ingress: &Ingress, incumbent: bool) -> (Option<Time>, bool, String, String) {
    let meta = &ingress.metadata;
    (
        meta.creation_timestamp.clone(),
        !incumbent,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn class_of(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()?
                .get(LEGACY_CLASS_ANNOTATION)
                .map(String::as_str)
        })
}

fn is_acme_solver(ingress: &Ingress) -> bool {
    ingress
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SOLVER_LABEL))
        .is_some_and(|v| v == "true")
}

struct IngressCtx<'a> {
    cluster: &'a Cluster,
    key: &'a Key,
    out: &'a mut Routes,
}

impl IngressCtx<'_> {
    fn report(&mut self, reason: &'static str, message: String) {
        self.out.reports.push(Report {
            ingress: self.key.clone(),
            warning: true,
            reason,
            message,
        });
    }

    /// The Ingress's access: its annotation, else its class's default, else the proxy's.
    fn access(
        &mut self,
        ingress: &Ingress,
        class: Option<&IngressClass>,
        settings: &Settings,
    ) -> Access {
        let annotated = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POLICY_ANNOTATION))
            .map(|v| v.trim().to_owned());
        if let Some(name) = annotated {
            return self.named_access(&name, true);
        }
        if let Some(name) = class.and_then(|c| self.class_default(c)) {
            return self.named_access(&name, false);
        }
        if let Some(name) = &settings.default_policy {
            return self.named_access(name, false);
        }
        Access::Policy(NO_POLICY.to_owned())
    }

    /// The default policy of a class's parameters, when it points at an IngressClassParameters.
    fn class_default(&mut self, class: &IngressClass) -> Option<String> {
        let parameters = class.spec.as_ref()?.parameters.as_ref()?;
        if parameters.api_group.as_deref() != Some(super::object::GROUP)
            || parameters.kind != "IngressClassParameters"
        {
            return None;
        }
        self.cluster
            .class_parameters
            .get(&parameters.name)
            .cloned()
            .flatten()
    }

    /// `public`, the namespace's AccessPolicy `name`, or the ClusterAccessPolicy `name`.
    fn named_access(&mut self, name: &str, own_namespace: bool) -> Access {
        if name == PUBLIC {
            return Access::Public;
        }
        if own_namespace {
            let key = Key::new(&self.key.namespace, name);
            if let Some(policy) = self.cluster.policies.get(&key) {
                let id = key.to_string();
                self.out
                    .policies
                    .entry(id.clone())
                    .or_insert_with(|| (**policy).clone());
                return Access::Policy(id);
            }
        }
        if let Some(policy) = self.cluster.cluster_policies.get(name) {
            // Cluster policies are named without a namespace, so no key of the two kinds meets.
            self.out
                .policies
                .entry(name.to_owned())
                .or_insert_with(|| (**policy).clone());
            return Access::Policy(name.to_owned());
        }
        self.report(
            "PolicyNotFound",
            format!(
                "no AccessPolicy `{name}` in namespace {} and no ClusterAccessPolicy `{name}`: \
                 no one is let through until it exists",
                self.key.namespace
            ),
        );
        Access::Policy(NO_POLICY.to_owned())
    }

    /// The upstream of a backend, named `namespace/service:port`, or a report.
    fn upstream(&mut self, backend: &IngressBackend) -> Option<String> {
        let Some(service) = &backend.service else {
            self.report(
                "UnsupportedBackend",
                "only Service backends are served (not `resource`)".to_owned(),
            );
            return None;
        };
        let port = service.port.clone().unwrap_or_default();
        let label = match backend::port_label(&port) {
            Ok(label) => label,
            Err(error) => {
                self.report("BadBackend", format!("Service {}: {error}", service.name));
                return None;
            }
        };
        let key = Key::new(&self.key.namespace, &service.name);
        let name = format!("{key}:{label}");
        if self.out.upstreams.contains_key(&name) {
            return Some(name);
        }
        let Some(found) = self.cluster.services.get(&key) else {
            self.report(
                "ServiceNotFound",
                backend::BackendError::NoService(key.to_string()).to_string(),
            );
            return None;
        };
        let slices: Vec<&EndpointSlice> = self
            .cluster
            .slices
            .get(&key)
            .map(|s| s.iter().map(AsRef::as_ref).collect())
            .unwrap_or_default();
        match backend::upstream(found, &port, &slices) {
            Ok(upstream) => {
                self.out.upstreams.insert(name.clone(), upstream);
                Some(name)
            }
            Err(error) => {
                self.report("BadBackend", error.to_string());
                None
            }
        }
    }

    /// Whether this Ingress's namespace owns `host` (or nobody does yet), or may share it.
    fn namespace_may_serve(&self, host: &str, hosts: &BTreeMap<String, HostBuild>) -> bool {
        let namespace = &self.key.namespace;
        hosts.get(host).is_none_or(|b| b.owner == *namespace)
            || self
                .cluster
                .shared_hosts
                .get(host)
                .is_some_and(|n| n.contains(namespace))
    }

    /// The host's build when this Ingress's namespace may serve paths on it; the first
    /// claimant owns it.
    fn may_serve<'h>(
        &mut self,
        host: &str,
        hosts: &'h mut BTreeMap<String, HostBuild>,
    ) -> Option<&'h mut HostBuild> {
        let namespace = &self.key.namespace;
        let build = hosts.entry(host.to_owned()).or_insert_with(|| HostBuild {
            owner: namespace.clone(),
            paths: Vec::new(),
            claimed: HashMap::new(),
            default: None,
        });
        let shared = self
            .cluster
            .shared_hosts
            .get(host)
            .is_some_and(|namespaces| namespaces.contains(namespace));
        if build.owner != *namespace && !shared {
            let owner = build.owner.clone();
            self.report(
                "HostOwnedElsewhere",
                format!(
                    "the host {host} belongs to namespace {owner} (its first Ingress); a \
                     SharedHost naming namespace {namespace} would let this Ingress add paths"
                ),
            );
            return None;
        }
        Some(build)
    }

    fn add_rules(
        &mut self,
        ingress: &Ingress,
        access: &Access,
        hosts: &mut BTreeMap<String, HostBuild>,
    ) {
        let spec = ingress.spec.clone().unwrap_or_default();
        let mut named_hosts = Vec::new();
        for rule in spec.rules.as_deref().unwrap_or_default() {
            let host = match rule.host.as_deref() {
                None | Some("") => ANY_HOST.to_owned(),
                Some(host) => {
                    let host = host.to_ascii_lowercase();
                    if let Err(message) = check_host_pattern(&host) {
                        self.report("BadHost", message);
                        continue;
                    }
                    host
                }
            };
            if !named_hosts.contains(&host) {
                named_hosts.push(host.clone());
            }
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default();
            for path in paths {
                let path_type = match path.path_type.as_str() {
                    "Exact" => PathType::Exact,
                    _ => PathType::Prefix,
                };
                let written = path.path.as_deref().unwrap_or("/");
                let normal = match config_path(written) {
                    Ok(normal) => normal,
                    Err(message) => {
                        self.report("BadPath", format!("{host}: {message}"));
                        continue;
                    }
                };
                if normal.starts_with(OWN_PREFIX) || normal == OWN_PREFIX.trim_end_matches('/') {
                    self.report(
                        "ReservedPath",
                        format!("{host}{normal}: paths under {OWN_PREFIX} are the proxy's own"),
                    );
                    continue;
                }
                let Some(upstream) = self.upstream(&path.backend) else {
                    continue;
                };
                let key = self.key.clone();
                let Some(build) = self.may_serve(&host, hosts) else {
                    continue;
                };
                if let Some(winner) = build.claimed.get(&(normal.clone(), path_type)) {
                    let winner = winner.clone();
                    self.report(
                        "PathConflict",
                        format!(
                            "{host}{normal} ({path_type:?}) is served by Ingress {winner}, which \
                             is older"
                        ),
                    );
                    continue;
                }
                build.claimed.insert((normal.clone(), path_type), key);
                build
                    .paths
                    .push(path_config(normal, path_type, upstream, access));
            }
        }
        if let Some(backend) = &spec.default_backend {
            let Some(upstream) = self.upstream(backend) else {
                return;
            };
            // The Ingress's own hosts fall back to it, and so does every host no rule names.
            if !named_hosts.contains(&ANY_HOST.to_owned()) {
                named_hosts.push(ANY_HOST.to_owned());
            }
            for host in &named_hosts {
                let key = self.key.clone();
                let Some(build) = self.may_serve(host, hosts) else {
                    continue;
                };
                match &build.default {
                    None => build.default = Some((upstream.clone(), access.clone(), key)),
                    Some((_, _, winner)) if *winner != key => {
                        let winner = winner.clone();
                        self.report(
                            "DefaultBackendConflict",
                            format!(
                                "the default backend of {host} is Ingress {winner}'s, which is \
                                 older"
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        self.add_tls(&spec, &named_hosts, hosts);
    }

    fn add_tls(
        &mut self,
        spec: &k8s_openapi::api::networking::v1::IngressSpec,
        named_hosts: &[String],
        hosts: &BTreeMap<String, HostBuild>,
    ) {
        for tls in spec.tls.as_deref().unwrap_or_default() {
            let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let wanted: Vec<String> = match tls.hosts.as_deref() {
                Some(list) if !list.is_empty() => {
                    list.iter().map(|h| h.to_ascii_lowercase()).collect()
                }
                _ => named_hosts
                    .iter()
                    .filter(|h| *h != ANY_HOST)
                    .cloned()
                    .collect(),
            };
            // A certificate serves only hosts this namespace may serve.
            let owned: Vec<String> = wanted
                .into_iter()
                .filter(|h| self.namespace_may_serve(h, hosts))
                .collect();
            if owned.is_empty() {
                continue;
            }
            self.out.tls.push(TlsClaim {
                secret: Key::new(&self.key.namespace, secret),
                hosts: owned,
                ingress: self.key.clone(),
            });
        }
    }

    /// A solver's paths under `/.well-known/acme-challenge/`, public, on the plain-HTTP listener.
    fn add_acme(
        &mut self,
        ingress: &Ingress,
        hosts: &BTreeMap<String, HostBuild>,
        acme: &mut BTreeMap<String, HostBuild>,
    ) {
        let spec = ingress.spec.clone().unwrap_or_default();
        for rule in spec.rules.as_deref().unwrap_or_default() {
            let Some(host) = rule.host.as_deref().map(str::to_ascii_lowercase) else {
                continue;
            };
            if check_host_pattern(&host).is_err() || host.starts_with("*.") {
                continue;
            }
            if !self.namespace_may_serve(&host, hosts) {
                self.report(
                    "HostOwnedElsewhere",
                    format!("the host {host} belongs to another namespace; its challenges are not answered here"),
                );
                continue;
            }
            for path in rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default()
            {
                let Ok(normal) = config_path(path.path.as_deref().unwrap_or("/")) else {
                    continue;
                };
                if !normal.starts_with(ACME_PREFIX) || normal.len() == ACME_PREFIX.len() {
                    self.report(
                        "NotAnAcmeChallenge",
                        format!(
                            "{host}{normal}: a solver Ingress serves only paths under \
                             {ACME_PREFIX}"
                        ),
                    );
                    continue;
                }
                let Some(upstream) = self.upstream(&path.backend) else {
                    continue;
                };
                let key = self.key.clone();
                let build = acme.entry(host.clone()).or_insert_with(|| HostBuild {
                    owner: key.namespace.clone(),
                    paths: Vec::new(),
                    claimed: HashMap::new(),
                    default: None,
                });
                if build
                    .claimed
                    .insert((normal.clone(), PathType::Exact), key)
                    .is_none()
                {
                    build.paths.push(path_config(
                        normal,
                        PathType::Exact,
                        upstream,
                        &Access::Public,
                    ));
                }
            }
        }
    }
}

fn path_config(path: String, path_type: PathType, upstream: String, access: &Access) -> PathConfig {
    let (public, policy) = match access {
        Access::Public => (Some(true), None),
        Access::Policy(name) => (Some(false), Some(name.clone())),
    };
    PathConfig {
        path,
        path_type,
        upstream,
        public,
        policy,
        bearer: None,
        max_session_age: None,
        session_idle_timeout: None,
        webhook: None,
        allow_encoded_slashes: None,
        upgrades: None,
        websocket_origins: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressClassParametersReference, IngressClassSpec,
        IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
    };
    use k8s_openapi::jiff::Timestamp;
    use kube::api::ObjectMeta;

    use super::*;

    /// An Ingress `namespace/name`, created `age` seconds after the epoch, with `rules` of
    /// `(host, path, pathType, service)`.
    struct Fixture {
        ingress: Ingress,
    }

    fn ingress(namespace: &str, name: &str, age: i64) -> Fixture {
        Fixture {
            ingress: Ingress {
                metadata: ObjectMeta {
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    creation_timestamp: Some(Time(Timestamp::from_second(age).unwrap())),
                    ..ObjectMeta::default()
                },
                spec: Some(IngressSpec {
                    ingress_class_name: Some("sekisho".into()),
                    ..IngressSpec::default()
                }),
                status: None,
            },
        }
    }

    fn backend(service: &str, port: i32) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: service.into(),
                port: Some(ServiceBackendPort {
                    number: Some(port),
                    name: None,
                }),
            }),
            resource: None,
        }
    }

    impl Fixture {
        fn rule(mut self, host: Option<&str>, path: &str, path_type: &str, service: &str) -> Self {
            let spec = self.ingress.spec.as_mut().unwrap();
            spec.rules.get_or_insert_default().push(IngressRule {
                host: host.map(str::to_owned),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(path.into()),
                        path_type: path_type.into(),
                        backend: backend(service, 80),
                    }],
                }),
            });
            self
        }

        fn class(mut self, class: Option<&str>) -> Self {
            self.ingress.spec.as_mut().unwrap().ingress_class_name = class.map(str::to_owned);
            self
        }

        fn annotate(mut self, key: &str, value: &str) -> Self {
            self.ingress
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(key.into(), value.into());
            self
        }

        fn label(mut self, key: &str, value: &str) -> Self {
            self.ingress
                .metadata
                .labels
                .get_or_insert_default()
                .insert(key.into(), value.into());
            self
        }

        fn default_backend(mut self, service: &str) -> Self {
            self.ingress.spec.as_mut().unwrap().default_backend = Some(backend(service, 80));
            self
        }

        fn tls(mut self, secret: &str, hosts: &[&str]) -> Self {
            self.ingress
                .spec
                .as_mut()
                .unwrap()
                .tls
                .get_or_insert_default()
                .push(IngressTLS {
                    secret_name: Some(secret.into()),
                    hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                });
            self
        }
    }

    fn class(
        name: &str,
        controller: &str,
        default: bool,
        parameters: Option<&str>,
    ) -> IngressClass {
        let mut annotations = BTreeMap::new();
        if default {
            annotations.insert(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned());
        }
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(controller.into()),
                parameters: parameters.map(|p| IngressClassParametersReference {
                    api_group: Some(super::super::object::GROUP.into()),
                    kind: "IngressClassParameters".into(),
                    name: p.into(),
                    ..IngressClassParametersReference::default()
                }),
            }),
        }
    }

    fn service(namespace: &str, name: &str) -> (Key, Arc<Service>) {
        let svc = Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        (Key::new(namespace, name), Arc::new(svc))
    }

    /// A cluster with the `sekisho` class and Services `web` and `api` in `shop` and `blog`.
    fn cluster(ingresses: Vec<Fixture>) -> Cluster {
        Cluster {
            classes: vec![Arc::new(class("sekisho", CONTROLLER, false, None))],
            ingresses: ingresses.into_iter().map(|f| Arc::new(f.ingress)).collect(),
            services: ["shop", "blog"]
                .iter()
                .flat_map(|ns| [service(ns, "web"), service(ns, "api")])
                .collect(),
            ..Cluster::default()
        }
    }

    /// `host path type -> upstream [access]` lines, sorted.
    fn table(routes: &Routes) -> Vec<String> {
        let access = |public: Option<bool>, policy: &Option<String>| match (public, policy) {
            (Some(true), _) => "public".to_owned(),
            (_, Some(p)) if p.is_empty() => "no-policy".to_owned(),
            (_, Some(p)) => format!("policy {p}"),
            _ => "host's".to_owned(),
        };
        let mut lines: Vec<String> = routes
            .hosts
            .iter()
            .flat_map(|h| {
                let paths = h.paths.iter().map(move |p| {
                    format!(
                        "{} {} {:?} -> {} [{}]",
                        h.host,
                        p.path,
                        p.path_type,
                        p.upstream,
                        access(p.public, &p.policy)
                    )
                });
                let default = h.default.iter().map(move |d| {
                    format!(
                        "{} default -> {d} [{}]",
                        h.host,
                        access(Some(h.public), &h.policy)
                    )
                });
                paths.chain(default).collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines
    }

    fn reasons(routes: &Routes) -> Vec<(String, &'static str)> {
        let mut reasons: Vec<_> = routes
            .reports
            .iter()
            .map(|r| (r.ingress.to_string(), r.reason))
            .collect();
        reasons.sort();
        reasons
    }

    #[test]
    fn path_types_hosts_and_the_default_backend_become_routes() {
        let routes = routes(
            &cluster(vec![
                ingress("shop", "a", 1)
                    .annotate(POLICY_ANNOTATION, "public")
                    .rule(Some("Shop.Example.com"), "/cart", "Exact", "web")
                    .rule(Some("shop.example.com"), "/api/", "Prefix", "api")
                    .rule(
                        Some("*.shop.example.com"),
                        "/",
                        "ImplementationSpecific",
                        "web",
                    )
                    .rule(None, "/status", "Prefix", "web")
                    .default_backend("web"),
            ]),
            &Settings::default(),
        );
        assert_eq!(
            table(&routes),
            [
                "* /status Prefix -> shop/web:80 [public]",
                "* default -> shop/web:80 [public]",
                "*.shop.example.com / Prefix -> shop/web:80 [public]",
                "*.shop.example.com default -> shop/web:80 [public]",
                "shop.example.com /api/ Prefix -> shop/api:80 [public]",
                "shop.example.com /cart Exact -> shop/web:80 [public]",
                "shop.example.com default -> shop/web:80 [public]",
            ]
        );
        assert!(routes.reports.is_empty(), "{:?}", routes.reports);
        assert_eq!(routes.served, [Key::new("shop", "a")]);
    }

    #[test]
    fn two_ingresses_for_one_host_are_merged_and_the_older_wins_a_conflict() {
        let routes = routes(
            &cluster(vec![
                ingress("shop", "newer", 20)
                    .rule(Some("shop.example.com"), "/a", "Prefix", "api")
                    .rule(Some("shop.example.com"), "/b", "Prefix", "api"),
                ingress("shop", "older", 10).rule(Some("shop.example.com"), "/a", "Prefix", "web"),
                // Same age: namespace/name decides.
                ingress("shop", "b-same", 30).rule(Some("shop.example.com"), "/c", "Exact", "api"),
                ingress("shop", "a-same", 30).rule(Some("shop.example.com"), "/c", "Exact", "web"),
            ]),
            &Settings::default(),
        );
        assert_eq!(
            table(&routes),
            [
                "shop.example.com /a Prefix -> shop/web:80 [no-policy]",
                "shop.example.com /b Prefix -> shop/api:80 [no-policy]",
                "shop.example.com /c Exact -> shop/web:80 [no-policy]",
            ]
        );
        assert_eq!(
            reasons(&routes),
            [
                ("shop/b-same".to_owned(), "PathConflict"),
                ("shop/newer".to_owned(), "PathConflict"),
            ]
        );
        let message = &routes
            .reports
            .iter()
            .find(|r| r.ingress.name == "newer")
            .unwrap()
            .message;
        assert!(
            message.contains("served by Ingress shop/older"),
            "{message}"
        );
    }

    #[test]
    fn only_ingresses_of_our_classes_are_served_and_the_default_class_takes_classless_ones() {
        let ingresses = || {
            vec![
                ingress("shop", "ours", 1).rule(Some("a.example.com"), "/", "Prefix", "web"),
                ingress("shop", "theirs", 1).class(Some("nginx")).rule(
                    Some("b.example.com"),
                    "/",
                    "Prefix",
                    "web",
                ),
                ingress("shop", "classless", 1).class(None).rule(
                    Some("c.example.com"),
                    "/",
                    "Prefix",
                    "web",
                ),
                ingress("shop", "legacy", 1)
                    .class(None)
                    .annotate(LEGACY_CLASS_ANNOTATION, "sekisho")
                    .rule(Some("d.example.com"), "/", "Prefix", "web"),
            ]
        };
        let mut c = cluster(ingresses());
        c.classes
            .push(Arc::new(class("nginx", "k8s.io/ingress-nginx", true, None)));
        let served = |c: &Cluster| {
            let mut names: Vec<String> = routes(c, &Settings::default())
                .served
                .iter()
                .map(|k| k.name.clone())
                .collect();
            names.sort();
            names
        };
        assert_eq!(served(&c), ["legacy", "ours"]);
        c.classes[0] = Arc::new(class("sekisho", CONTROLLER, true, None));
        c.classes.pop();
        assert_eq!(served(&c), ["classless", "legacy", "ours"]);
        // Another controller name: nothing is ours.
        let settings = Settings {
            controller: "example.com/other".into(),
            ..Settings::default()
        };
        assert!(routes(&c, &settings).served.is_empty());
    }

    #[test]
    fn the_policy_comes_from_the_annotation_then_the_class_then_the_proxy() {
        let mut c = cluster(vec![
            ingress("shop", "named", 1)
                .annotate(POLICY_ANNOTATION, "staff")
                .rule(Some("a.example.com"), "/", "Prefix", "web"),
            ingress("shop", "cluster-named", 1)
                .annotate(POLICY_ANNOTATION, "everyone")
                .rule(Some("b.example.com"), "/", "Prefix", "web"),
            ingress("shop", "unknown", 1)
                .annotate(POLICY_ANNOTATION, "nobody-wrote-this")
                .rule(Some("c.example.com"), "/", "Prefix", "web"),
            ingress("shop", "plain", 1).rule(Some("d.example.com"), "/", "Prefix", "web"),
            ingress("blog", "other-namespace", 1)
                .annotate(POLICY_ANNOTATION, "staff")
                .rule(Some("e.example.com"), "/", "Prefix", "web"),
        ]);
        c.policies
            .insert(Key::new("shop", "staff"), Arc::new(AccessPolicy::default()));
        c.cluster_policies
            .insert("everyone".into(), Arc::new(AccessPolicy::default()));
        let lines = table(&routes(&c, &Settings::default()));
        assert_eq!(
            lines,
            [
                "a.example.com / Prefix -> shop/web:80 [policy shop/staff]",
                "b.example.com / Prefix -> shop/web:80 [policy everyone]",
                "c.example.com / Prefix -> shop/web:80 [no-policy]",
                "d.example.com / Prefix -> shop/web:80 [no-policy]",
                // Another namespace's AccessPolicy is not reachable by name.
                "e.example.com / Prefix -> blog/web:80 [no-policy]",
            ]
        );
        let r = routes(&c, &Settings::default());
        assert_eq!(
            reasons(&r),
            [
                ("blog/other-namespace".to_owned(), "PolicyNotFound"),
                ("shop/unknown".to_owned(), "PolicyNotFound"),
            ]
        );
        assert_eq!(
            r.policies.keys().collect::<Vec<_>>(),
            ["everyone", "shop/staff"]
        );

        // The class's parameters give a default; the proxy's default comes after it.
        c.classes[0] = Arc::new(class("sekisho", CONTROLLER, false, Some("sites")));
        c.class_parameters
            .insert("sites".into(), Some("public".into()));
        let settings = Settings {
            default_policy: Some("everyone".into()),
            ..Settings::default()
        };
        let lines = table(&routes(&c, &settings));
        assert!(lines.contains(&"d.example.com / Prefix -> shop/web:80 [public]".to_owned()));
        c.class_parameters.insert("sites".into(), None);
        let lines = table(&routes(&c, &settings));
        assert!(
            lines.contains(&"d.example.com / Prefix -> shop/web:80 [policy everyone]".to_owned())
        );
    }

    #[test]
    fn a_host_belongs_to_the_namespace_that_claimed_it_first_unless_shared() {
        let mut c = cluster(vec![
            ingress("shop", "owner", 1)
                .rule(Some("shop.example.com"), "/", "Prefix", "web")
                .tls("shop-tls", &["shop.example.com"]),
            ingress("blog", "takeover", 2)
                .rule(Some("shop.example.com"), "/admin", "Prefix", "web")
                .default_backend("web")
                .tls("stolen-tls", &["shop.example.com"]),
        ]);
        let r = routes(&c, &Settings::default());
        assert_eq!(
            table(&r),
            [
                // The takeover's default backend still serves the hosts no rule names.
                "* default -> blog/web:80 [no-policy]",
                "shop.example.com / Prefix -> shop/web:80 [no-policy]",
            ]
        );
        assert!(reasons(&r).contains(&("blog/takeover".to_owned(), "HostOwnedElsewhere")));
        assert_eq!(
            r.tls,
            [TlsClaim {
                secret: Key::new("shop", "shop-tls"),
                hosts: vec!["shop.example.com".into()],
                ingress: Key::new("shop", "owner"),
            }]
        );

        c.shared_hosts.insert(
            "shop.example.com".into(),
            BTreeSet::from(["blog".to_owned()]),
        );
        let r = routes(&c, &Settings::default());
        assert!(
            table(&r)
                .contains(&"shop.example.com /admin Prefix -> blog/web:80 [no-policy]".to_owned()),
            "{:?}",
            table(&r)
        );
        assert_eq!(r.tls.len(), 2);
    }

    #[test]
    fn the_namespace_serving_a_host_keeps_it_against_an_ingress_of_the_same_second() {
        // Same creation second: by name, `a-intruder` would come before `z-owner`.
        let ingresses = || {
            vec![
                ingress("z-owner", "site", 5).rule(Some("shop.example.com"), "/", "Prefix", "web"),
                ingress("a-intruder", "site", 5).rule(
                    Some("shop.example.com"),
                    "/admin",
                    "Exact",
                    "web",
                ),
            ]
        };
        let mut c = cluster(ingresses());
        c.services
            .extend([service("z-owner", "web"), service("a-intruder", "web")]);
        let fresh = routes(&c, &Settings::default());
        assert_eq!(
            fresh.owners["shop.example.com"], "a-intruder",
            "without history, names decide"
        );

        c.previous_owners = BTreeMap::from([("shop.example.com".to_owned(), "z-owner".to_owned())]);
        let kept = routes(&c, &Settings::default());
        assert_eq!(kept.owners["shop.example.com"], "z-owner");
        assert_eq!(
            reasons(&kept),
            [("a-intruder/site".to_owned(), "HostOwnedElsewhere")]
        );

        // Once the owner has no Ingress for it, the host is free again.
        c.ingresses
            .retain(|i| i.metadata.namespace.as_deref() != Some("z-owner"));
        let freed = routes(&c, &Settings::default());
        assert_eq!(freed.owners["shop.example.com"], "a-intruder");
    }

    #[test]
    fn an_ingress_serving_a_path_keeps_it_against_one_of_the_same_second() {
        let mut c = cluster(vec![
            ingress("shop", "z-served", 5).rule(Some("a.example.com"), "/", "Prefix", "web"),
            ingress("shop", "a-newcomer", 5).rule(Some("a.example.com"), "/", "Prefix", "api"),
        ]);
        let fresh = routes(&c, &Settings::default());
        assert_eq!(
            reasons(&fresh),
            [("shop/z-served".to_owned(), "PathConflict")]
        );
        c.previous_served = [Key::new("shop", "z-served")].into_iter().collect();
        let kept = routes(&c, &Settings::default());
        assert_eq!(
            reasons(&kept),
            [("shop/a-newcomer".to_owned(), "PathConflict")]
        );
        assert_eq!(
            table(&kept),
            ["a.example.com / Prefix -> shop/web:80 [no-policy]"]
        );
    }

    #[test]
    fn paths_that_are_not_normal_or_are_the_proxys_own_are_refused() {
        let r = routes(
            &cluster(vec![
                ingress("shop", "a", 1)
                    .rule(Some("a.example.com"), "/x/../admin", "Prefix", "web")
                    .rule(Some("a.example.com"), "/.sekisho/login", "Prefix", "web")
                    .rule(Some("a.example.com"), "/ok", "Prefix", "missing")
                    .rule(Some("bad host!"), "/", "Prefix", "web"),
            ]),
            &Settings::default(),
        );
        assert!(table(&r).is_empty(), "{:?}", table(&r));
        let mut got: Vec<&str> = r.reports.iter().map(|r| r.reason).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            ["BadHost", "BadPath", "ReservedPath", "ServiceNotFound"]
        );
    }

    #[test]
    fn acme_solvers_answer_only_challenges_of_hosts_their_namespace_may_serve() {
        let r = routes(
            &cluster(vec![
                ingress("shop", "site", 1).rule(Some("shop.example.com"), "/", "Prefix", "web"),
                ingress("shop", "solver", 2)
                    .label(SOLVER_LABEL, "true")
                    .rule(
                        Some("shop.example.com"),
                        "/.well-known/acme-challenge/tok3n",
                        "ImplementationSpecific",
                        "api",
                    )
                    .rule(Some("shop.example.com"), "/other", "Prefix", "api"),
                ingress("blog", "solver", 3)
                    .label(SOLVER_LABEL, "true")
                    .rule(
                        Some("shop.example.com"),
                        "/.well-known/acme-challenge/evil",
                        "ImplementationSpecific",
                        "api",
                    ),
            ]),
            &Settings::default(),
        );
        let acme: Vec<String> = r
            .acme
            .iter()
            .flat_map(|h| {
                h.paths
                    .iter()
                    .map(move |p| format!("{}{} {:?} {}", h.host, p.path, p.public, p.upstream))
            })
            .collect();
        assert_eq!(
            acme,
            ["shop.example.com/.well-known/acme-challenge/tok3n Some(true) shop/api:80"]
        );
        // The solver's paths are not routes of the HTTPS listener.
        assert_eq!(
            table(&r),
            ["shop.example.com / Prefix -> shop/web:80 [no-policy]"]
        );
        assert_eq!(
            reasons(&r),
            [
                ("blog/solver".to_owned(), "HostOwnedElsewhere"),
                ("shop/solver".to_owned(), "NotAnAcmeChallenge"),
            ]
        );
    }
}
