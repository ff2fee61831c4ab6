//! The Proxy controller: for each Proxy, read what exists, decide the children
//! ([`crate::desired`]), apply them with server-side apply, remove the ones no longer wanted,
//! and say how it went in the Proxy's status and Events.

mod apply;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt as _};
use sekisho_api::Proxy;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::desired::{self, MANAGER, Names, SpecError, World};
use crate::keys::{self, OsRandom, Ring, Step};
use crate::metrics::Metrics;

/// The finalizer that removes what owner references cannot: cluster-scoped children and
/// NetworkPolicies in other namespaces.
pub(crate) const FINALIZER: &str = "sekisho.dev/cleanup";
/// How often a settled Proxy is looked at again (drift is also seen through the watches).
const SETTLED: Duration = Duration::from_secs(300);
/// How often a Proxy whose pods are rolling is looked at.
const ROLLING: Duration = Duration::from_secs(5);
/// The default of `spec.keys.overlap`: the session lifetime and an hour.
const DEFAULT_OVERLAP: SignedDuration = SignedDuration::from_hours(13);
/// The first retry after a failure; each further one doubles, up to [`SETTLED`].
const FIRST_RETRY: Duration = Duration::from_secs(2);

pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) version: String,
    /// Failures in a row, per Proxy.
    backoff: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "the keys Secret cannot be read: {0}; fix or delete it (deleting makes new keys and ends every session)"
    )]
    Keys(#[from] keys::ReadError),
    #[error(transparent)]
    Random(#[from] keys::GenerateError),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The metric label and the Event reason.
    fn reason(&self) -> &'static str {
        match self {
            Error::Api(_) => "ApiError",
            Error::Keys(_) => "KeysUnreadable",
            Error::Random(_) => "RandomUnavailable",
            Error::Finalizer(_) => "CleanupFailed",
        }
    }
}

/// Runs the controller until `stop` turns true.
pub(crate) async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    options: crate::Options,
    mut stop: watch::Receiver<bool>,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
    let namespace = options.watch_namespace.as_deref();
    let children = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={MANAGER},app.kubernetes.io/name=sekisho-proxy"
    ));
    // Cluster-scoped children name their Proxy in labels (owner references cannot).
    let by_labels = |object: IngressClass| {
        let labels = object.labels();
        Some(
            ObjectRef::<Proxy>::new(labels.get("app.kubernetes.io/instance")?)
                .within(labels.get(desired::NAMESPACE_LABEL)?),
        )
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(options.identity),
            },
        ),
        client: client.clone(),
        metrics,
        version: options.proxy_version,
        backoff: Backoff::new(FIRST_RETRY, SETTLED),
    });
    let controller = Controller::new(api::<Proxy>(&client, namespace), watcher::Config::default())
        .owns(api::<Deployment>(&client, namespace), children.clone())
        .owns(api::<Secret>(&client, namespace), children.clone())
        .owns(api::<Service>(&client, namespace), children.clone())
        .owns(api::<ConfigMap>(&client, namespace), children.clone())
        .owns(api::<ServiceAccount>(&client, namespace), children.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        )
        .watches(
            Api::<IngressClass>::all(client.clone()),
            children,
            by_labels,
        )
        .graceful_shutdown_on(async move { crate::until(&mut stop, true).await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile");
            }
        });
    controller.await;
}

async fn reconcile(proxy: Arc<Proxy>, context: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = proxy.namespace().unwrap_or_default();
    let api = Api::<Proxy>::namespaced(context.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, proxy, |event| async {
        match event {
            finalizer::Event::Apply(proxy) => apply_proxy(&proxy, &context).await,
            finalizer::Event::Cleanup(proxy) => cleanup(&proxy, &context).await,
        }
    })
    .await;
    context.metrics.reconciled(started.elapsed());
    match result {
        Ok(action) => Ok(action),
        Err(finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error)) => {
            Err(error)
        }
        Err(error) => Err(Error::Finalizer(error.to_string())),
    }
}

fn error_policy(proxy: Arc<Proxy>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.failed(error.reason());
    let key = (proxy.namespace().unwrap_or_default(), proxy.name_any());
    let delay = context.backoff.failed(key);
    tracing::warn!(
        namespace = proxy.namespace().unwrap_or_default(),
        name = proxy.name_any(),
        error = %error,
        retry_in = ?delay,
        "cannot reconcile a Proxy"
    );
    Action::requeue(delay)
}

/// One pass over a Proxy that is not being deleted.
async fn apply_proxy(proxy: &Proxy, context: &Context) -> Result<Action, Error> {
    let client = &context.client;
    let names = match Names::of(proxy) {
        Ok(names) => names,
        Err(error) => return spec_error(proxy, context, &error).await,
    };
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let cert_manager = crds
        .get_opt("certificates.cert-manager.io")
        .await?
        .is_some();
    let service_monitors = crds
        .get_opt("servicemonitors.monitoring.coreos.com")
        .await?
        .is_some();

    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let (client_secrets_digest, missing_secrets) = client_secrets(proxy, &secrets).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &names.namespace);
    let deployment = deployments.get_opt(&names.name).await?;

    // The keys: read (never overwritten when unreadable), or made on first sight.
    let now = Timestamp::now();
    let wanted_rotation = proxy.spec.keys.rotation.as_deref();
    let (mut ring, first) = match secrets.get_opt(&names.suffixed("keys")).await? {
        Some(secret) => match read_ring(&secret) {
            Ok(ring) => (ring, false),
            Err(error) => {
                // Never overwritten: those keys open every session there is.
                let error = Error::Keys(error);
                let problem = status::Problem::new("KeysUnreadable", error.to_string());
                status::halt(context, proxy, &problem).await?;
                return Err(error);
            }
        },
        None => (Ring::first(wanted_rotation, now, &mut OsRandom)?, true),
    };
    let mut world = World {
        cert_manager,
        service_monitors,
        keys: ring.clone(),
        client_secrets_digest,
        default_version: context.version.clone(),
    };
    let rolled_out = !first
        && deployment
            .as_ref()
            .is_some_and(|d| status::rolled_out(d, &desired::inputs_digest(proxy, &names, &world)));
    let overlap = proxy
        .spec
        .keys
        .overlap
        .map(|d| SignedDuration::try_from(std::time::Duration::from(d)).unwrap_or(DEFAULT_OVERLAP))
        .unwrap_or(DEFAULT_OVERLAP);
    let step = ring.advance(wanted_rotation, overlap, now, rolled_out, &mut OsRandom)?;
    world.keys = ring.clone();
    if first {
        status::event(
            context,
            proxy,
            EventType::Normal,
            "KeysGenerated",
            "made the session and signing keys from the OS random number generator",
        )
        .await;
    }
    let told = match step {
        Step::Keep => None,
        Step::Generated => Some((
            "KeysIntroduced",
            "new keys are being rolled out; the old ones still seal and sign",
        )),
        Step::Promoted => Some((
            "KeysPromoted",
            "every pod has the new keys: they seal and sign now; the old ones keep opening \
             what they made until the overlap has passed",
        )),
        Step::Retired => Some((
            "KeysRetired",
            "the overlap has passed: the old keys are removed",
        )),
    };
    if let Some((reason, message)) = told {
        status::event(context, proxy, EventType::Normal, reason, message).await;
    }

    let children = match desired::children(proxy, &world) {
        Ok(children) => children,
        Err(error) => return spec_error(proxy, context, &error).await,
    };
    let mut problems = Vec::new();
    let taken = apply::class_taken(client, proxy, &names).await?;
    if let Some(owner) = &taken {
        problems.push(status::Problem::new(
            "IngressClassTaken",
            format!(
                "IngressClass {} belongs to {owner}: choose another spec.ingressClass.name",
                proxy.spec.ingress_class.name
            ),
        ));
    }
    apply::all(client, proxy, &children, taken.is_some()).await?;
    apply::prune(client, &names, &children, &world).await?;

    if proxy.spec.certificate.is_some() && !cert_manager {
        problems.push(status::Problem::new(
            "CertManagerMissing",
            "spec.certificate names an issuer, but cert-manager's CRDs are not installed: install cert-manager; meanwhile the proxy serves a development certificate".to_owned(),
        ));
    }
    if !missing_secrets.is_empty() {
        problems.push(status::Problem::new(
            "ClientSecretMissing",
            format!(
                "the client secret of {} cannot be read: create the Secret (key `client-secret` unless clientSecretRef.key says otherwise); the pods cannot start without it",
                missing_secrets.join(", ")
            ),
        ));
    }
    for problem in &problems {
        status::warn(context, proxy, problem).await;
    }
    let deployment = deployments.get_opt(&names.name).await?;
    let progressing = status::write(context, proxy, deployment.as_ref(), &ring, &problems).await?;
    context
        .backoff
        .succeeded(&(names.namespace.clone(), names.name.clone()));

    let next = if progressing {
        ROLLING
    } else {
        ring.next_deadline(overlap)
            .and_then(|end| {
                let left = end.duration_since(Timestamp::now());
                std::time::Duration::try_from(left).ok()
            })
            .map_or(SETTLED, |left| left.clamp(Duration::from_secs(1), SETTLED))
    };
    Ok(Action::requeue(next))
}

/// Reports a Proxy that cannot be built, and leaves what exists as it is.
async fn spec_error(proxy: &Proxy, context: &Context, error: &SpecError) -> Result<Action, Error> {
    let problem = status::Problem::new("InvalidSpec", error.to_string());
    status::halt(context, proxy, &problem).await?;
    Ok(Action::await_change())
}

fn read_ring(secret: &Secret) -> Result<Ring, keys::ReadError> {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let annotations = secret.annotations().clone();
    Ring::read(
        text(keys::SESSION_KEYS).as_deref(),
        text(keys::SIGNING_KEYS).as_deref(),
        |name| annotations.get(name).cloned(),
    )
}

/// A digest of the client secrets the pods mount, and the providers whose secret is missing.
async fn client_secrets(
    proxy: &Proxy,
    secrets: &Api<Secret>,
) -> Result<(String, Vec<String>), kube::Error> {
    let mut input = Vec::new();
    let mut missing = Vec::new();
    for provider in &proxy.spec.identity_providers {
        let reference = &provider.client_secret_ref;
        let value = secrets
            .get_opt(&reference.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(&reference.key).cloned());
        match value {
            Some(value) => {
                input.extend_from_slice(provider.name.as_bytes());
                input.push(0);
                input.extend_from_slice(&value.0);
                input.push(0);
            }
            None => missing.push(format!(
                "provider {} (Secret {}, key {})",
                provider.name, reference.name, reference.key
            )),
        }
    }
    Ok((desired::short_digest(&input), missing))
}

/// Removes what owner references cannot: cluster-scoped children and NetworkPolicies in
/// other namespaces. The garbage collector removes the rest.
async fn cleanup(proxy: &Proxy, context: &Context) -> Result<Action, Error> {
    let names = match Names::of(proxy) {
        Ok(names) => names,
        Err(_) => return Ok(Action::await_change()),
    };
    apply::remove_unowned(&context.client, &names).await?;
    status::event(context, proxy, EventType::Normal, "CleanedUp", "removed the IngressClass, the proxy's cluster role and the NetworkPolicies in upstream namespaces").await;
    Ok(Action::await_change())
}
