//! Kubernetes mode: the routes, certificates and policies come from the API, watched with
//! kube-runtime reflectors (no polling), and build the same [`Snapshot`] the file does. The
//! process's static settings (listeners, identity, limits) still come from the file.
//!
//! Every watched change wakes one task, which waits a moment for the burst to end
//! ([`COALESCE`]), then rebuilds from the stores and swaps the snapshot and the certificates in.
//! Nothing half-built is ever served: a snapshot that cannot be built is logged and the last good
//! one keeps serving, and so does the last good certificate of a Secret that turned bad. While
//! the API cannot be reached the watchers retry with backoff and the last state keeps serving.
//!
//! What is wrong with an Ingress is told on it, as an Event, once per distinct problem.
//! Secrets are watched only of type `kubernetes.io/tls`, and held with their data only while
//! an Ingress names them.

mod backend;
mod certificate;
mod device;
mod ingress;
mod leases;
mod object;
mod once;
mod policy;
pub(crate) mod replicas;
mod revocation;
mod status;
mod tunnel;
mod webhook;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt as _};
use sekisho_api as api;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::frontdoor::tls::{CertTable, LoadedCert};
use crate::observe::metrics::{KindLabels, KubernetesMetrics, Metrics};
use crate::routing::snapshot::Snapshot;
use crate::state::Shared;

pub(crate) use ingress::Settings;
use object::Key;

/// How long a burst of changes may last before the routes are rebuilt once for all of it.
const COALESCE: Duration = Duration::from_millis(100);
/// What `kubectl apply` keeps of the last object it applied: a second copy, unread here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The reason of the Event on an Ingress whose certificate cannot be served.
const BAD_CERTIFICATE: &str = "BadCertificate";
/// How long stopping waits for the status Lease to be released.
const RELEASE: Duration = Duration::from_secs(2);
/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How Kubernetes mode was asked for.
pub struct KubernetesOptions {
    /// How to reach the API; `None` finds out as every controller does (in the cluster, else
    /// `KUBECONFIG`). The client is built in the proxy's own runtime.
    pub config: Option<kube::Config>,
    /// The controller name of the IngressClasses to serve (`sekisho.dev/ingress-controller`).
    pub controller: String,
    /// The ClusterAccessPolicy (or `public`) of Ingresses that name none and whose class has
    /// no default. Without it such Ingresses let no one through (after sign-in).
    pub default_policy: Option<String>,
    /// `namespace/name` of the Service whose load balancer addresses go into the served
    /// Ingresses' `status.loadBalancer`.
    pub publish_service: Option<String>,
    /// Addresses (IPs or host names) for the served Ingresses' `status.loadBalancer`, instead
    /// of a Service's.
    pub publish_addresses: Vec<String>,
    /// The namespace of the Lease whose holder writes that status (the proxy's own); by
    /// default the published Service's, else `default`.
    pub lease_namespace: Option<String>,
    /// `namespace/name` of a `kubernetes.io/tls` Secret served for names no Ingress's
    /// certificate covers (and to clients that send no name).
    pub default_certificate: Option<String>,
    /// Where the other replicas reach this one's HTTPS listener, to relay tunnel streams for
    /// the agents it holds; by default the pod's IP (`POD_IP`) at the HTTPS port, else the
    /// HTTPS listener's address when it is a specific one.
    pub relay_address: Option<std::net::SocketAddr>,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            config: None,
            controller: ingress::CONTROLLER.to_owned(),
            default_policy: None,
            publish_service: None,
            publish_addresses: Vec::new(),
            lease_namespace: None,
            default_certificate: None,
            relay_address: None,
        }
    }
}

impl fmt::Debug for KubernetesOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesOptions")
            .field("controller", &self.controller)
            .field("default_policy", &self.default_policy)
            .finish_non_exhaustive()
    }
}

/// The stores the watchers fill.
struct Stores {
    classes: Store<IngressClass>,
    ingresses: Store<Ingress>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    policies: Store<api::AccessPolicy>,
    cluster_policies: Store<api::ClusterAccessPolicy>,
    class_parameters: Store<api::IngressClassParameters>,
    shared_hosts: Store<api::SharedHost>,
    agents: Store<api::Agent>,
    tunnels: Store<api::Tunnel>,
    webhooks: Store<api::GitHubWebhook>,
    /// Secrets of other types than TLS, each held with its data only while a GitHubWebhook
    /// names it.
    webhook_secrets: Store<Secret>,
}

/// What the rebuild keeps between rounds.
#[derive(Default)]
struct Memory {
    /// The last good certificate of each Secret, by the Secret and its resourceVersion.
    certificates: HashMap<Key, (Option<String>, LoadedCert)>,
    /// The webhook Secrets read from the API (the watch held them without their data), by
    /// resourceVersion: read again only when they change.
    webhook_secrets: HashMap<Key, Arc<Secret>>,
    /// The Ingresses that served a path or default in the last routes built.
    served: HashSet<Key>,
    /// The namespace that owned each host in the last routes built.
    owners: std::collections::BTreeMap<String, String>,
    /// Whether the default certificate's problem was logged (until it serves again).
    default_told: bool,
    /// Notes already told (object, reason, message), so each distinct one becomes one Event.
    told: HashSet<(String, &'static str, String)>,
}

pub(crate) struct KubeSource {
    default_certificate: Option<Key>,
    /// Who this process is to the API (the status Lease, Agents' `replica`).
    replica: String,
    publish: status::Publish,
    lease_namespace: Option<String>,
    /// Where the other replicas reach this one.
    relay_address: Option<std::net::SocketAddr>,
    /// Whether this process holds the status Lease (and so writes Ingresses' status).
    leader: Arc<std::sync::atomic::AtomicBool>,
    shared: Arc<Shared>,
    base: Config,
    settings: Settings,
    config: Option<kube::Config>,
    /// The certificate served for names no Secret covers (the development one).
    fallback: Option<LoadedCert>,
}

impl KubeSource {
    pub(crate) fn new(
        shared: Arc<Shared>,
        base: Config,
        options: KubernetesOptions,
        fallback: Option<LoadedCert>,
    ) -> Self {
        let publish = match (options.publish_service, options.publish_addresses) {
            (_, addresses) if !addresses.is_empty() => status::Publish::Addresses(addresses),
            (Some(service), _) => match service.split_once('/') {
                Some((namespace, name)) => status::Publish::Service(Key::new(namespace, name)),
                None => status::Publish::Service(Key::new("default", &service)),
            },
            (None, _) => status::Publish::Nothing,
        };
        let default_certificate =
            options
                .default_certificate
                .map(|text| match text.split_once('/') {
                    Some((namespace, name)) => Key::new(namespace, name),
                    None => Key::new("default", &text),
                });
        Self {
            default_certificate,
            replica: identity(),
            publish,
            lease_namespace: options.lease_namespace,
            relay_address: options.relay_address,
            leader: Arc::default(),
            shared,
            base,
            settings: Settings {
                controller: options.controller,
                default_policy: options.default_policy,
            },
            config: options.config,
            fallback,
        }
    }

    /// The proxy's own namespace (`--lease-namespace`), else the published Service's, else
    /// `default`: where its Lease and its replicas' Revocations are.
    fn namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| match &self.publish {
                status::Publish::Service(key) => Some(key.namespace.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The Lease whose holder writes the Ingresses' status: one per controller name, in the
    /// proxy's namespace.
    fn lease(&self) -> Key {
        let namespace = self.namespace();
        let mut name: String = self
            .settings
            .controller
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        name.truncate(200);
        Key::new(
            &namespace,
            &format!("sekisho-status-{}", name.trim_matches('-')),
        )
    }

    /// Watches and rebuilds until `stop`.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let client = loop {
            let client = match self.config.clone() {
                Some(config) => Client::try_from(config),
                None => Client::try_default().await,
            };
            {
                match client {
                    Ok(client) => break client,
                    Err(error) => {
                        tracing::error!(error = %crate::error_chain(&error), "cannot find the Kubernetes API (in the cluster or through KUBECONFIG); trying again");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = crate::state::stopped(&mut stop) => return,
            }
        };
        let changed = Arc::new(Notify::new());
        let metrics = Health {
            metrics: self.shared.metrics.kubernetes.clone(),
            failing: Arc::default(),
        };
        let wanted = Wanted::default();
        let stores = Stores {
            classes: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            ingresses: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            services: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            slices: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            secrets: watch_secrets(
                client.clone(),
                "type=kubernetes.io/tls",
                wanted.certificates.clone(),
                &changed,
                &metrics,
            ),
            webhook_secrets: watch_secrets(
                client.clone(),
                "type!=kubernetes.io/tls",
                wanted.webhook_secrets.clone(),
                &changed,
                &metrics,
            ),
            webhooks: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            policies: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            cluster_policies: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            class_parameters: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            shared_hosts: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            agents: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
            tunnels: watch_all(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &metrics,
            ),
        };
        // Revocations wake their own task, not the routes' rebuild.
        let revocations_changed = Arc::new(Notify::new());
        let revocations: Store<api::Revocation> = watch_all(
            Api::namespaced(client.clone(), &self.namespace()),
            watcher::Config::default(),
            &revocations_changed,
            &metrics,
        );
        // The other replicas' Leases: where agents held elsewhere are relayed to.
        let lease_api = Api::namespaced(client.clone(), &self.namespace());
        let leases = watch_all(
            lease_api.clone(),
            watcher::Config::default().labels(replicas::LABEL),
            &Arc::new(Notify::new()),
            &metrics,
        );
        let ready = async {
            // Before the first request: a replica that starts must not let in what another
            // signed out, nor turn away a stream for an agent another replica holds.
            let _ = revocations.wait_until_ready().await;
            let _ = leases.wait_until_ready().await;
            let _ = stores.classes.wait_until_ready().await;
            let _ = stores.ingresses.wait_until_ready().await;
            let _ = stores.services.wait_until_ready().await;
            let _ = stores.slices.wait_until_ready().await;
            let _ = stores.secrets.wait_until_ready().await;
            let _ = stores.policies.wait_until_ready().await;
            let _ = stores.cluster_policies.wait_until_ready().await;
            let _ = stores.class_parameters.wait_until_ready().await;
            let _ = stores.shared_hosts.wait_until_ready().await;
            let _ = stores.agents.wait_until_ready().await;
            let _ = stores.tunnels.wait_until_ready().await;
            let _ = stores.webhooks.wait_until_ready().await;
            let _ = stores.webhook_secrets.wait_until_ready().await;
        };
        tokio::select! {
            () = ready => {}
            () = crate::state::stopped(&mut stop) => return,
        }
        tracing::info!("the Kubernetes watches are in sync");
        tokio::spawn(revocation::run(
            client.clone(),
            self.namespace(),
            revocations,
            revocations_changed,
            self.shared.clone(),
            stop.clone(),
        ));
        tokio::spawn(replicas::run(
            lease_api,
            leases,
            self.replica.clone(),
            self.relay_address,
            self.shared.clone(),
            stop.clone(),
        ));
        tokio::spawn(once::run(
            client.clone(),
            self.namespace(),
            self.replica.clone(),
            self.shared.clone(),
            stop.clone(),
        ));
        let rebuilt = Arc::new(Notify::new());
        tokio::spawn(report_agents(
            client.clone(),
            stores.agents.clone(),
            self.shared.clone(),
            self.replica.clone(),
            rebuilt.clone(),
            stop.clone(),
        ));
        let leading = (self.publish != status::Publish::Nothing).then(|| {
            tokio::spawn(status::lead(
                client.clone(),
                self.lease(),
                self.replica.clone(),
                self.leader.clone(),
                changed.clone(),
                stop.clone(),
            ))
        });
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "sekisho-proxy".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let mut memory = Memory::default();
        loop {
            self.rebuild(&stores, &client, &wanted, &recorder, &mut memory)
                .await;
            rebuilt.notify_one();
            tokio::select! {
                () = changed.notified() => {}
                () = crate::state::stopped(&mut stop) => break,
            }
            tokio::time::sleep(COALESCE).await;
        }
        // Let the Lease go, so that another replica writes the status at once.
        if let Some(leading) = leading {
            let _ = tokio::time::timeout(RELEASE, leading).await;
        }
    }

    async fn rebuild(
        &self,
        stores: &Stores,
        client: &Client,
        wanted: &Wanted,
        recorder: &Recorder,
        memory: &mut Memory,
    ) {
        let mut notes = Vec::new();
        let mut rejected = Rejected::default();
        let mut cluster = cluster(stores, &mut notes, &mut rejected);
        cluster.previous_owners = std::mem::take(&mut memory.owners);
        cluster.previous_served = std::mem::take(&mut memory.served);
        cluster.webhooks =
            webhook_marks(stores, client, &wanted.webhook_secrets, memory, &mut notes).await;
        let mut routes = ingress::routes(&cluster, &self.settings);
        memory.owners = routes.owners.clone();
        memory.served = routes.winners.clone();
        let (agents, tunnel_objects) = (stores.agents.state(), stores.tunnels.state());
        let mut tunnels = tunnel::tunnels(&tunnel::Inputs {
            agents: &agents,
            tunnels: &tunnel_objects,
            policies: &cluster.policies,
            cluster_policies: &cluster.cluster_policies,
            host_owners: &routes.owners,
        });
        let mut config = self.base.clone();
        config.hosts = std::mem::take(&mut routes.hosts);
        config.acme_challenges = std::mem::take(&mut routes.acme);
        config.upstreams = std::mem::take(&mut routes.upstreams);
        config.policies = std::mem::take(&mut routes.policies);
        config.policies.append(&mut tunnels.policies);
        config.agents = std::mem::take(&mut tunnels.agents);
        config.tunnels = std::mem::take(&mut tunnels.tunnels);
        let previous = self.shared.snapshot.load_full();
        match Snapshot::build(
            &config,
            Some(&previous),
            config.workers,
            &self.shared.metrics,
        ) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.shared.snapshot.store(snapshot.clone());
                // Agents (or keys) that are gone lose their connections now.
                self.shared.hub.prune(&snapshot);
                count(&self.shared, true);
            }
            Err(error) => {
                tracing::error!(error = %crate::error_chain(&error), "cannot build the routes from the Kubernetes objects; keeping the last good ones");
                count(&self.shared, false);
            }
        }
        // The default certificate first: it is what clients get for names nothing else covers.
        let claims: Vec<ingress::TlsClaim> = self
            .default_certificate
            .iter()
            .map(|secret| ingress::TlsClaim {
                secret: secret.clone(),
                hosts: Vec::new(),
                ingress: Key::new("", ""),
            })
            .chain(routes.tls.iter().cloned())
            .collect();
        {
            let mut wanted = wanted
                .certificates
                .write()
                .unwrap_or_else(|e| e.into_inner());
            *wanted = claims.iter().map(|c| c.secret.clone()).collect();
        }
        let entries = self
            .certificates(stores, client, &claims, &mut routes.reports, memory)
            .await;
        self.shared.certs.replace(CertTable::new(entries));
        // Ready once the first round has put in both the routes and their certificates.
        self.shared.synced.store(true, Ordering::Relaxed);
        for report in routes.reports {
            let Some(found) = stores.ingresses.get(
                &reflector::ObjectRef::new(&report.ingress.name).within(&report.ingress.namespace),
            ) else {
                continue;
            };
            notes.push(Note {
                object: found.object_ref(&()),
                warning: report.warning,
                reason: report.reason,
                message: report.message,
            });
        }
        let webhooks = stores.webhooks.state();
        for finding in routes.webhook_findings {
            if let Some(object) = webhooks
                .iter()
                .find(|w| Key::of(&w.metadata).as_ref() == Some(&finding.key))
            {
                notes.push(Note {
                    object: object.object_ref(&()),
                    warning: true,
                    reason: finding.reason,
                    message: finding.message,
                });
            }
        }
        for finding in &tunnels.findings {
            let object = match finding.kind {
                tunnel::Kind::Agent => agents
                    .iter()
                    .find(|a| Key::of(&a.metadata).as_ref() == Some(&finding.key))
                    .map(|a| a.object_ref(&())),
                tunnel::Kind::Tunnel => tunnel_objects
                    .iter()
                    .find(|t| Key::of(&t.metadata).as_ref() == Some(&finding.key))
                    .map(|t| t.object_ref(&())),
            };
            if let (Some(object), false) = (object, finding.ready) {
                notes.push(Note {
                    object,
                    warning: true,
                    reason: finding.reason,
                    message: finding.message.clone(),
                });
            }
        }
        tell(recorder, notes, memory, &self.shared.metrics).await;
        if self.leader.load(Ordering::Relaxed)
            && let Some(addresses) = status::addresses(&self.publish, |key| {
                stores
                    .services
                    .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
            })
        {
            status::write(
                client,
                &stores.ingresses.state(),
                &routes.served,
                &addresses,
            )
            .await;
        }
        write_policy_status(client, stores, &rejected).await;
        write_tunnel_status(client, &tunnel_objects, &tunnels.findings).await;
    }

    /// Each claimed Secret's certificate, for the hosts claimed; a broken or missing one keeps
    /// its last good certificate and is reported on the Ingress. A Secret is parsed once per
    /// resourceVersion, and read from the API only when the store holds it without its data
    /// (it was not named when it arrived) and its version is new.
    async fn certificates(
        &self,
        stores: &Stores,
        client: &Client,
        claims: &[ingress::TlsClaim],
        reports: &mut Vec<ingress::Report>,
        memory: &mut Memory,
    ) -> Vec<LoadedCert> {
        let mut entries: Vec<LoadedCert> = Vec::new();
        // Secret -> (the resourceVersion parsed, the whole certificate with all its names).
        let mut kept: HashMap<Key, (Option<String>, LoadedCert)> = HashMap::new();
        for claim in claims {
            let key = &claim.secret;
            let whole = match kept.get(key) {
                Some((_, cert)) => Ok(cert.clone()),
                None => {
                    let loaded = load_secret(stores, client, key, memory).await;
                    if let Ok((version, cert)) = &loaded {
                        if memory
                            .certificates
                            .get(key)
                            .is_none_or(|(seen, _)| seen != version)
                        {
                            count_certificate(&self.shared.metrics);
                        }
                        kept.insert(key.clone(), (version.clone(), cert.clone()));
                    }
                    loaded.map(|(_, cert)| cert)
                }
            };
            let served = whole.and_then(|cert| certificate::for_hosts(key, cert, &claim.hosts));
            let default = claim.ingress.name.is_empty();
            match served {
                Ok(cert) => {
                    if default {
                        memory.default_told = false;
                    }
                    entries.push(cert);
                    continue;
                }
                // The default certificate: no Ingress to tell; the log says it once.
                Err(error) if default => {
                    if !memory.default_told {
                        tracing::warn!(secret = %key, error = %crate::error_chain(&error), "the default certificate cannot be served; the last good one (or the development one) serves instead");
                        memory.default_told = true;
                    }
                }
                Err(error) => reports.push(ingress::Report {
                    ingress: claim.ingress.clone(),
                    warning: true,
                    reason: BAD_CERTIFICATE,
                    message: format!(
                        "{}; the last good certificate keeps serving, if there was one",
                        crate::error_chain(&error)
                    ),
                }),
            }
            if let Some((seen, cert)) = memory.certificates.get(key) {
                kept.entry(key.clone())
                    .or_insert_with(|| (seen.clone(), cert.clone()));
                if let Ok(cert) = certificate::for_hosts(key, cert.clone(), &claim.hosts) {
                    entries.push(cert);
                }
            }
        }
        memory.certificates = kept;
        // The development certificate answers what nothing else does (after the default one).
        let at = usize::from(self.default_certificate.is_some() && !entries.is_empty());
        if let Some(fallback) = &self.fallback {
            entries.insert(at.min(entries.len()), fallback.clone());
        }
        entries
    }
}

/// The Secrets whose data the watches keep: those the served Ingresses' TLS sections (and the
/// default certificate) name, and those the GitHubWebhooks name.
#[derive(Default)]
struct Wanted {
    certificates: Arc<RwLock<HashSet<Key>>>,
    webhook_secrets: Arc<RwLock<HashSet<Key>>>,
}

/// Each GitHubWebhook's path and secret, after telling the Secret watch which Secrets to keep
/// the data of. An object whose path cannot be served is a note.
async fn webhook_marks(
    stores: &Stores,
    client: &Client,
    wanted: &RwLock<HashSet<Key>>,
    memory: &mut Memory,
    notes: &mut Vec<Note>,
) -> Vec<webhook::Mark> {
    let objects = stores.webhooks.state();
    let secret_of = |object: &api::GitHubWebhook| {
        let namespace = object.metadata.namespace.as_deref()?;
        Some(Key::new(namespace, &object.spec.secret_ref.name))
    };
    let named: HashSet<Key> = objects.iter().filter_map(|o| secret_of(o)).collect();
    memory.webhook_secrets.retain(|key, _| named.contains(key));
    *wanted.write().unwrap_or_else(|e| e.into_inner()) = named;
    let mut marks = Vec::with_capacity(objects.len());
    for object in objects {
        let Some(key) = secret_of(&object) else {
            continue;
        };
        let data = webhook_secret(stores, client, &key, memory)
            .await
            .map(|secret| {
                secret
                    .and_then(|s| s.data.clone())
                    .and_then(|d| d.get(&object.spec.secret_ref.key).map(|v| v.0.clone()))
            });
        match webhook::mark(&object, data) {
            Ok(mark) => marks.push(mark),
            Err(finding) => notes.push(Note {
                object: object.object_ref(&()),
                warning: true,
                reason: finding.reason,
                message: finding.message,
            }),
        }
    }
    marks
}

/// Secret `key` with its data: the store's copy, or, when the store holds it without (it was
/// named only after the watch last saw it), the API's, read once per resourceVersion. `None`
/// when it does not exist.
async fn webhook_secret(
    stores: &Stores,
    client: &Client,
    key: &Key,
    memory: &mut Memory,
) -> Result<Option<Arc<Secret>>, String> {
    let reference = reflector::ObjectRef::new(&key.name).within(&key.namespace);
    let Some(stored) = stores.webhook_secrets.get(&reference) else {
        return Ok(None);
    };
    if stored.data.is_some() {
        return Ok(Some(stored));
    }
    if let Some(read) = memory.webhook_secrets.get(key)
        && read.resource_version() == stored.resource_version()
    {
        return Ok(Some(read.clone()));
    }
    let read = Api::<Secret>::namespaced(client.clone(), &key.namespace)
        .get_opt(&key.name)
        .await
        .map_err(|error| crate::error_chain(&error))?
        .map(Arc::new);
    if let Some(read) = &read {
        memory.webhook_secrets.insert(key.clone(), read.clone());
    }
    Ok(read)
}

/// The whole certificate of Secret `key` and the resourceVersion it came from: the one parsed
/// before when the version is the same, else parsed from the store's copy, or from the API when
/// the store holds the Secret without its data.
async fn load_secret(
    stores: &Stores,
    client: &Client,
    key: &Key,
    memory: &Memory,
) -> Result<(Option<String>, LoadedCert), certificate::CertificateError> {
    let stored = stores
        .secrets
        .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
        .ok_or_else(|| certificate::CertificateError::Missing(key.clone()))?;
    let version = stored.resource_version();
    if let Some((seen, cert)) = memory.certificates.get(key)
        && version.is_some()
        && *seen == version
    {
        return Ok((version, cert.clone()));
    }
    let secret = if stored.data.is_some() {
        stored
    } else {
        Api::<Secret>::namespaced(client.clone(), &key.namespace)
            .get_opt(&key.name)
            .await
            .ok()
            .flatten()
            .map(Arc::new)
            .ok_or_else(|| certificate::CertificateError::Missing(key.clone()))?
    };
    let version = secret.resource_version();
    certificate::from_secret(key, &secret).map(|cert| (version, cert))
}

/// Counts a certificate read anew from a Secret (a first one or a renewal).
fn count_certificate(metrics: &Metrics) {
    metrics
        .certificate_reloads
        .get_or_create(&Metrics::result(true))
        .inc();
}

/// Keeps each Agent's status to what this process sees: connected (and since when) while it
/// holds the agent's links; not connected once the links it held are gone. An Agent connected
/// to another replica is that replica's to report. Runs until `stop`.
async fn report_agents(
    client: Client,
    agents: Store<api::Agent>,
    shared: Arc<Shared>,
    replica: String,
    rebuilt: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for agent in agents.state() {
            let (Some(name), Some(namespace)) = (
                agent.metadata.name.as_deref(),
                agent.metadata.namespace.as_deref(),
            ) else {
                continue;
            };
            let current = agent.status.clone().unwrap_or_default();
            let since = shared.hub.connected_since(name);
            let mine = current.replica.as_deref() == Some(replica.as_str());
            let mut next = current.clone();
            match since {
                Some(since) => {
                    next.connected = true;
                    next.replica = Some(replica.clone());
                    next.connected_since = Some(Time(
                        Timestamp::try_from(since).unwrap_or_else(|_| Timestamp::now()),
                    ));
                }
                None if mine || current.replica.is_none() => {
                    next.connected = false;
                    next.replica = None;
                    next.connected_since = None;
                }
                None => continue,
            }
            let (reason, message) = if next.connected {
                (
                    api::condition::reason::CONNECTED,
                    format!("connected to {replica}"),
                )
            } else {
                (
                    api::condition::reason::NOT_CONNECTED,
                    "the agent holds no connection to the proxy".to_owned(),
                )
            };
            let condition = api::condition::ready(
                next.connected,
                reason,
                message,
                agent.metadata.generation,
                Time(Timestamp::now()),
            );
            api::condition::set(&mut next.conditions, condition);
            next.observed_generation = agent.metadata.generation;
            // The transition time of a Ready condition that did not change stays, so an equal
            // status compares equal.
            if next == current {
                continue;
            }
            let patch = serde_json::json!({ "status": next });
            let api = Api::<api::Agent>::namespaced(client.clone(), namespace);
            if let Err(error) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(agent = name, error = %crate::error_chain(&error), "cannot write an Agent's status");
            }
        }
        tokio::select! {
            () = shared.hub.links_changed.notified() => {}
            () = rebuilt.notified() => {}
            () = crate::state::stopped(&mut stop) => return,
        }
    }
}

/// Who this process is to the Lease: the pod's name, else the host's, with a random part so
/// that two processes on one host differ.
fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "sekisho-proxy".to_owned());
    format!("{base}-{:08x}", rand::random::<u32>())
}

fn count(shared: &Shared, ok: bool) {
    shared
        .metrics
        .config_reloads
        .get_or_create(&Metrics::result(ok))
        .inc();
}

/// A reflector over `api`, driven on its own task, waking `changed` on every event.
fn watch_all<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    health: &Health,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields say who wrote which field: nothing the proxy reads, often half an object.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| {
            let meta = object.meta_mut();
            meta.managed_fields = None;
            if let Some(annotations) = &mut meta.annotations {
                annotations.remove(LAST_APPLIED);
            }
        })
        .reflect(writer);
    tokio::spawn(drive(
        stream,
        changed.clone(),
        K::kind(&()).into_owned(),
        health.clone(),
    ));
    reader
}

/// The Secrets whose `type` the field selector `types` picks, each held with its data only
/// while something names it (`wanted`).
fn watch_secrets(
    client: Client,
    types: &str,
    wanted: Arc<RwLock<HashSet<Key>>>,
    changed: &Arc<Notify>,
    health: &Health,
) -> Store<Secret> {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().fields(types);
    let stream = watcher(Api::<Secret>::all(client), config)
        .default_backoff()
        .modify(move |secret: &mut Secret| {
            let named = Key::of(&secret.metadata).is_some_and(|key| {
                wanted
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&key)
            });
            secret.metadata.managed_fields = None;
            if !named {
                secret.data = None;
                secret.string_data = None;
            }
        })
        .reflect(writer);
    tokio::spawn(drive(
        stream,
        changed.clone(),
        "Secret".to_owned(),
        health.clone(),
    ));
    reader
}

/// Which watches fail now: `sekisho_kubernetes_api_reachable` is 1 only while none does.
#[derive(Clone, Default)]
struct Health {
    metrics: KubernetesMetrics,
    failing: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Health {
    fn watch(&self, kind: &str, ok: bool) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            failing.remove(kind);
        } else {
            failing.insert(kind.to_owned());
        }
        self.metrics
            .api_reachable
            .set(i64::from(failing.is_empty()));
    }
}

/// Drives one watch, waking `changed` on every change and keeping `health` up to date.
async fn drive<S, K>(stream: S, changed: Arc<Notify>, kind: String, health: Health)
where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let failures = health
        .metrics
        .watch_errors
        .get_or_create(&KindLabels { kind: kind.clone() })
        .clone();
    while let Some(event) = stream.next().await {
        health.watch(&kind, event.is_ok());
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => changed.notify_one(),
            Err(error) => {
                failures.inc();
                tracing::warn!(kind, error = %crate::error_chain(&error), "watching the Kubernetes API failed; retrying, the last state keeps serving");
            }
        }
    }
}

/// The policy objects that cannot be used, with why: read once per rebuild, for their Events
/// and their status.
#[derive(Default)]
struct Rejected {
    policies: HashMap<Key, Vec<crate::config::Problem>>,
    cluster_policies: HashMap<String, Vec<crate::config::Problem>>,
}

/// The stores' objects, grouped as the translation wants them; what cannot be used becomes a
/// note and is in `rejected`.
fn cluster(stores: &Stores, notes: &mut Vec<Note>, rejected: &mut Rejected) -> ingress::Cluster {
    let mut invalid = |object: ObjectReference, problems: &[crate::config::Problem]| {
        notes.push(Note {
            object,
            warning: true,
            reason: api::condition::reason::INVALID,
            message: problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
    };
    let mut policies = HashMap::new();
    for object in stores.policies.state() {
        let Some(key) = Key::of(&object.metadata) else {
            continue;
        };
        match policy::access_policy(&object.spec) {
            Ok(found) => {
                policies.insert(key, Arc::new(found));
            }
            Err(problems) => {
                invalid(object.object_ref(&()), &problems);
                rejected.policies.insert(key, problems);
            }
        }
    }
    let mut cluster_policies = HashMap::new();
    for object in stores.cluster_policies.state() {
        let Some(name) = object.metadata.name.clone() else {
            continue;
        };
        match policy::access_policy(&object.spec.0) {
            Ok(found) => {
                cluster_policies.insert(name, Arc::new(found));
            }
            Err(problems) => {
                invalid(object.object_ref(&()), &problems);
                rejected.cluster_policies.insert(name, problems);
            }
        }
    }
    let class_parameters = stores
        .class_parameters
        .state()
        .into_iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p.spec.default_policy.clone())))
        .collect();
    let mut shared_hosts: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for shared in stores.shared_hosts.state() {
        shared_hosts
            .entry(shared.spec.host.to_ascii_lowercase())
            .or_default()
            .extend(shared.spec.namespaces.iter().cloned());
    }
    let services = stores
        .services
        .state()
        .into_iter()
        .filter_map(|s| Some((Key::of(&s.metadata)?, s)))
        .collect();
    let mut slices: HashMap<Key, Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in stores.slices.state() {
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str);
        if let (Some(namespace), Some(service)) = (namespace, service) {
            slices
                .entry(Key::new(namespace, service))
                .or_default()
                .push(slice);
        }
    }
    ingress::Cluster {
        classes: stores.classes.state(),
        ingresses: stores.ingresses.state(),
        services,
        slices,
        policies,
        cluster_policies,
        class_parameters,
        shared_hosts,
        previous_owners: std::collections::BTreeMap::new(),
        previous_served: HashSet::new(),
        webhooks: Vec::new(),
    }
}

/// Something to tell about an object, as an Event on it.
#[derive(Debug, Clone)]
struct Note {
    object: ObjectReference,
    warning: bool,
    reason: &'static str,
    message: String,
}

/// Publishes each note not told before as an Event on its object (and logs it).
async fn tell(recorder: &Recorder, notes: Vec<Note>, memory: &mut Memory, metrics: &Metrics) {
    let id = |note: &Note| {
        let o = &note.object;
        let object = format!(
            "{}/{}/{}/{}",
            o.kind.as_deref().unwrap_or_default(),
            o.namespace.as_deref().unwrap_or_default(),
            o.name.as_deref().unwrap_or_default(),
            o.uid.as_deref().unwrap_or_default()
        );
        (object, note.reason, note.message.clone())
    };
    let mut now = HashSet::new();
    for note in &notes {
        if !now.insert(id(note)) || memory.told.contains(&id(note)) {
            continue;
        }
        if note.reason == BAD_CERTIFICATE {
            metrics
                .certificate_reloads
                .get_or_create(&Metrics::result(false))
                .inc();
        }
        tracing::warn!(
            kind = note.object.kind.as_deref().unwrap_or_default(),
            namespace = note.object.namespace.as_deref().unwrap_or_default(),
            name = note.object.name.as_deref().unwrap_or_default(),
            reason = note.reason,
            message = %note.message,
            "an object is not served as written"
        );
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(note.message.chars().take(1000).collect()),
            action: "Serve".to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &note.object).await {
            tracing::warn!(error = %crate::error_chain(&error), "cannot record an Event");
        }
    }
    memory.told = now;
}

/// Writes each policy object's `Ready` condition (valid or not, and why) when it changed.
async fn write_policy_status(client: &Client, stores: &Stores, rejected: &Rejected) {
    let verdict = |problems: Option<&Vec<crate::config::Problem>>| match problems {
        Some(problems) => Err(problems.clone()),
        None => Ok(()),
    };
    for object in stores.policies.state() {
        let (Some(key), Some(namespace)) = (
            Key::of(&object.metadata),
            object.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let api = Api::<api::AccessPolicy>::namespaced(client.clone(), namespace);
        let verdict = verdict(rejected.policies.get(&key));
        write_ready(&api, &object.metadata, object.status.as_ref(), verdict).await;
    }
    for object in stores.cluster_policies.state() {
        let api = Api::<api::ClusterAccessPolicy>::all(client.clone());
        let name = object.metadata.name.as_deref().unwrap_or_default();
        let verdict = verdict(rejected.cluster_policies.get(name));
        write_ready(&api, &object.metadata, object.status.as_ref(), verdict).await;
    }
}

/// Writes each Tunnel's `Ready` condition when it changed.
async fn write_tunnel_status(
    client: &Client,
    objects: &[Arc<api::Tunnel>],
    findings: &[tunnel::Finding],
) {
    for object in objects {
        let (Some(key), Some(namespace)) = (
            Key::of(&object.metadata),
            object.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let Some(finding) = findings
            .iter()
            .find(|f| f.kind == tunnel::Kind::Tunnel && f.key == key)
        else {
            continue;
        };
        let condition = api::condition::ready(
            finding.ready,
            finding.reason,
            finding.message.clone(),
            object.metadata.generation,
            Time(Timestamp::now()),
        );
        let api = Api::<api::Tunnel>::namespaced(client.clone(), namespace);
        write_condition(&api, &object.metadata, object.status.as_ref(), condition).await;
    }
}

async fn write_ready<K>(
    api: &Api<K>,
    meta: &kube::api::ObjectMeta,
    status: Option<&api::ObservedStatus>,
    verdict: Result<(), Vec<crate::config::Problem>>,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
{
    let condition = match &verdict {
        Ok(()) => api::condition::ready(
            true,
            api::condition::reason::ACCEPTED,
            "the proxy serves this policy",
            meta.generation,
            Time(Timestamp::now()),
        ),
        Err(problems) => api::condition::ready(
            false,
            api::condition::reason::INVALID,
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            meta.generation,
            Time(Timestamp::now()),
        ),
    };
    write_condition(api, meta, status, condition).await;
}

/// Puts `condition` in the object's status, with `observedGeneration`, when that changes it.
async fn write_condition<K>(
    api: &Api<K>,
    meta: &kube::api::ObjectMeta,
    status: Option<&api::ObservedStatus>,
    condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
{
    let Some(name) = meta.name.as_deref() else {
        return;
    };
    let mut status = status.cloned().unwrap_or_default();
    let changed = api::condition::set(&mut status.conditions, condition);
    if !changed && status.observed_generation == meta.generation {
        return;
    }
    status.observed_generation = meta.generation;
    let patch = serde_json::json!({ "status": status });
    if let Err(error) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(name, error = %crate::error_chain(&error), "cannot write an object's status");
    }
}
