//! The cluster's objects: what the bench creates in the control plane before the proxy starts
//! (per site an Ingress with its own host, a `kubernetes.io/tls` Secret as cert-manager writes
//! it, a Service without a selector and a hand-made EndpointSlice; plus unrelated Opaque
//! Secrets), the edits it times, and what the API server counts.
//!
//! Services are headless (`clusterIP: None`): the test control plane allocates Service IPs
//! from a /24, too few for 1,000 Services, and the proxy dials the EndpointSlices' addresses
//! either way.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use rand::RngCore as _;
use sekisho_testkit::Leaf;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, timeout};

use crate::outcome::{Created, ObjectSize};

/// The controller name Sekisho serves by default.
pub(crate) const CONTROLLER: &str = "sekisho.dev/ingress-controller";
const CLASS: &str = "sekisho";
/// The Service (in every namespace) that edited paths lead to.
const EDITED: &str = "edited";
/// One request to the API may take this long (a loaded 2-core machine is slow, not stuck).
const REQUEST: Duration = Duration::from_secs(30);
const ATTEMPTS: u32 = 3;

/// Where the sites' objects are and what they are called.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) namespaces: usize,
    pub(crate) sites: usize,
}

impl Layout {
    pub(crate) fn namespace(&self, i: usize) -> String {
        format!("bench-{:02}", i % self.namespaces)
    }

    pub(crate) fn host(i: usize) -> String {
        format!("site-{i:04}.bench.test")
    }

    fn name(i: usize) -> String {
        format!("site-{i:04}")
    }

    fn secret(i: usize) -> String {
        format!("site-{i:04}-tls")
    }
}

/// What to create.
pub(crate) struct Plan<'a> {
    pub(crate) layout: Layout,
    /// The upstream every site's EndpointSlice names.
    pub(crate) site: SocketAddr,
    /// The upstream of the `edited` Services.
    pub(crate) edited: SocketAddr,
    /// One leaf per site.
    pub(crate) leaves: &'a [Leaf],
    pub(crate) ca_pem: &'a str,
    pub(crate) opaque: usize,
    pub(crate) opaque_bytes: usize,
    /// Requests to the API in flight at once.
    pub(crate) concurrency: usize,
    /// Creation gives up after this.
    pub(crate) deadline: Instant,
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    }
}

/// Creates everything, kind by kind, and says how long each kind took.
pub(crate) async fn populate(client: &Client, plan: &Plan<'_>) -> anyhow::Result<Vec<Created>> {
    let layout = plan.layout;
    let mut created = Vec::new();
    let namespaces = Api::<Namespace>::all(client.clone());
    let started = Instant::now();
    for n in 0..layout.namespaces {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(layout.namespace(n)),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .context("creating a namespace")?;
    }
    let class = IngressClass {
        metadata: ObjectMeta {
            name: Some(CLASS.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(CONTROLLER.to_owned()),
            parameters: None,
        }),
    };
    Api::<IngressClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .context("creating the IngressClass")?;
    created.push(Created {
        kind: "Namespaces and the IngressClass".to_owned(),
        count: layout.namespaces + 1,
        elapsed: started.elapsed(),
    });

    let edited_namespaces = (0..layout.namespaces).map(|n| layout.namespace(n));
    created.push(
        create_all(
            client,
            "Services `edited` (one per namespace) with their EndpointSlices",
            edited_namespaces.flat_map(|namespace| {
                [
                    Object::Service(Box::new(service(&namespace, EDITED))),
                    Object::Slice(Box::new(slice(&namespace, EDITED, plan.edited))),
                ]
            }),
            plan,
        )
        .await?,
    );
    let bytes = plan.opaque_bytes;
    created.push(
        create_all(
            client,
            &format!("Opaque Secrets of {} KiB (named by nothing)", bytes / 1024),
            (0..plan.opaque).map(|i| {
                let mut blob = vec![0; bytes];
                rand::rng().fill_bytes(&mut blob);
                Object::Secret(Box::new(Secret {
                    metadata: meta(&layout.namespace(i), &format!("unrelated-{i:05}")),
                    type_: Some("Opaque".into()),
                    data: Some(BTreeMap::from([("blob".to_owned(), ByteString(blob))])),
                    ..Secret::default()
                }))
            }),
            plan,
        )
        .await?,
    );
    created.push(
        create_all(
            client,
            "TLS Secrets (cert-manager's form, one certificate each)",
            (0..layout.sites).map(|i| {
                Object::Secret(Box::new(tls_secret(
                    &layout.namespace(i),
                    i,
                    &plan.leaves[i],
                    plan.ca_pem,
                )))
            }),
            plan,
        )
        .await?,
    );
    created.push(
        create_all(
            client,
            "Services (headless, no selector)",
            (0..layout.sites).map(|i| {
                Object::Service(Box::new(service(&layout.namespace(i), &Layout::name(i))))
            }),
            plan,
        )
        .await?,
    );
    created.push(
        create_all(
            client,
            "EndpointSlices (one ready pod-network address)",
            (0..layout.sites).map(|i| {
                Object::Slice(Box::new(slice(
                    &layout.namespace(i),
                    &Layout::name(i),
                    plan.site,
                )))
            }),
            plan,
        )
        .await?,
    );
    created.push(
        create_all(
            client,
            "Ingresses (own host, TLS, `sekisho.dev/access-policy: public`)",
            (0..layout.sites).map(|i| Object::Ingress(Box::new(ingress(&layout, i, &[])))),
            plan,
        )
        .await?,
    );
    Ok(created)
}

/// The objects of one creation stream (one enum, so that one stream may mix kinds).
enum Object {
    Secret(Box<Secret>),
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Ingress(Box<Ingress>),
}

async fn create_all(
    client: &Client,
    kind: &str,
    objects: impl Iterator<Item = Object>,
    plan: &Plan<'_>,
) -> anyhow::Result<Created> {
    let started = Instant::now();
    let mut count = 0;
    let mut results = futures_util::stream::iter(objects)
        .map(|object| async move {
            match object {
                Object::Secret(o) => create(client, *o, plan.deadline).await,
                Object::Service(o) => create(client, *o, plan.deadline).await,
                Object::Slice(o) => create(client, *o, plan.deadline).await,
                Object::Ingress(o) => create(client, *o, plan.deadline).await,
            }
        })
        .buffer_unordered(plan.concurrency);
    while let Some(result) = results.next().await {
        result?;
        count += 1;
    }
    Ok(Created {
        kind: kind.to_owned(),
        count,
        elapsed: started.elapsed(),
    })
}

/// Creates one object, trying again after a failure (at most [`ATTEMPTS`] times, never past
/// `deadline`). A conflict on a later attempt means an earlier one went through.
async fn create<K>(client: &Client, object: K, deadline: Instant) -> anyhow::Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = object.meta().namespace.clone().context("a namespace")?;
    let name = object.meta().name.clone().unwrap_or_default();
    let api = Api::<K>::namespaced(client.clone(), &namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if Instant::now() >= deadline {
            bail!("creating the objects took longer than allowed");
        }
        let error = match timeout(REQUEST, api.create(&PostParams::default(), &object)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 && attempt > 1 => {
                return Ok(());
            }
            Ok(Err(error)) => anyhow::Error::from(error),
            Err(_) => anyhow::anyhow!("no answer within {REQUEST:?}"),
        };
        if attempt >= ATTEMPTS {
            return Err(error.context(format!("creating {} {namespace}/{name}", K::kind(&()))));
        }
        tokio::time::sleep(Duration::from_millis(500) * attempt).await;
    }
}

/// A `kubernetes.io/tls` Secret as cert-manager writes it.
fn tls_secret(namespace: &str, i: usize, leaf: &Leaf, ca_pem: &str) -> Secret {
    let mut metadata = meta(namespace, &Layout::secret(i));
    metadata.annotations = Some(BTreeMap::from([
        (
            "cert-manager.io/certificate-name".to_owned(),
            Layout::name(i),
        ),
        (
            "cert-manager.io/issuer-name".to_owned(),
            "bench-ca".to_owned(),
        ),
        (
            "cert-manager.io/issuer-kind".to_owned(),
            "ClusterIssuer".to_owned(),
        ),
        (
            "cert-manager.io/issuer-group".to_owned(),
            "cert-manager.io".to_owned(),
        ),
        ("cert-manager.io/common-name".to_owned(), Layout::host(i)),
        ("cert-manager.io/alt-names".to_owned(), Layout::host(i)),
        ("cert-manager.io/ip-sans".to_owned(), String::new()),
        ("cert-manager.io/uri-sans".to_owned(), String::new()),
    ]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data(leaf, ca_pem)),
        ..Secret::default()
    }
}

fn secret_data(leaf: &Leaf, ca_pem: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (
            "tls.crt".to_owned(),
            ByteString(leaf.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(leaf.key_pem.clone().into_bytes()),
        ),
        ("ca.crt".to_owned(), ByteString(ca_pem.as_bytes().to_vec())),
    ])
}

/// A Service without a selector, port 80 named `http`.
fn service(namespace: &str, name: &str) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The EndpointSlice of Service `name`: one ready endpoint, `addr`.
fn slice(namespace: &str, name: &str, addr: SocketAddr) -> EndpointSlice {
    let mut metadata = meta(namespace, &format!("{name}-slice"));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        name.to_owned(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![addr.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(addr.port())),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn backend(service: &str) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: service.to_owned(),
            port: Some(ServiceBackendPort {
                name: Some("http".into()),
                number: None,
            }),
        }),
        resource: None,
    }
}

/// Site `i`'s Ingress: `/` (Prefix) to its own Service, and each of `edits` (Exact) to
/// `edited`.
fn ingress(layout: &Layout, i: usize, edits: &[String]) -> Ingress {
    let mut metadata = meta(&layout.namespace(i), &Layout::name(i));
    metadata.annotations = Some(BTreeMap::from([(
        "sekisho.dev/access-policy".to_owned(),
        "public".to_owned(),
    )]));
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(CLASS.to_owned()),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![Layout::host(i)]),
                secret_name: Some(Layout::secret(i)),
            }]),
            rules: Some(vec![rule(i, edits)]),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

fn rule(i: usize, edits: &[String]) -> IngressRule {
    let mut paths = vec![HTTPIngressPath {
        path: Some("/".into()),
        path_type: "Prefix".into(),
        backend: backend(&Layout::name(i)),
    }];
    paths.extend(edits.iter().map(|path| HTTPIngressPath {
        path: Some(path.clone()),
        path_type: "Exact".into(),
        backend: backend(EDITED),
    }));
    IngressRule {
        host: Some(Layout::host(i)),
        http: Some(HTTPIngressRuleValue { paths }),
    }
}

/// cert-manager renews site `i`'s certificate: the same Secret, a new certificate and key.
pub(crate) async fn renew(
    client: &Client,
    layout: &Layout,
    i: usize,
    leaf: &Leaf,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let api = Api::<Secret>::namespaced(client.clone(), &layout.namespace(i));
    let patch = serde_json::json!({ "data": secret_data(leaf, ca_pem) });
    timeout(
        REQUEST,
        api.patch(
            &Layout::secret(i),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await
    .context("the API did not answer")?
    .with_context(|| format!("renewing Secret {}", Layout::secret(i)))?;
    Ok(())
}

/// Site `i`'s Ingress gets `edits` as Exact paths to the `edited` Service.
pub(crate) async fn edit(
    client: &Client,
    layout: &Layout,
    i: usize,
    edits: &[String],
) -> anyhow::Result<()> {
    let api = Api::<Ingress>::namespaced(client.clone(), &layout.namespace(i));
    // A merge patch replaces the whole list of rules.
    let patch = serde_json::json!({ "spec": { "rules": [rule(i, edits)] } });
    timeout(
        REQUEST,
        api.patch(
            &Layout::name(i),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await
    .context("the API did not answer")?
    .with_context(|| format!("editing Ingress {}", Layout::name(i)))?;
    Ok(())
}

/// The single-object Secret GETs the API server has answered (`apiserver_request_total`).
pub(crate) async fn secret_gets(client: &Client) -> anyhow::Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = timeout(REQUEST, client.request_text(request))
        .await
        .context("the API did not answer")??;
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if labels.contains(r#"resource="secrets""#)
            && labels.contains(r#"verb="GET""#)
            && labels.contains(r#"scope="resource""#)
        {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total as u64)
}

/// Reads every site's TLS Secret, one GET after the other, as the proxy's rebuild does; how
/// long that took.
pub(crate) async fn read_secrets_one_by_one(
    client: &Client,
    layout: &Layout,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for i in 0..layout.sites {
        let api = Api::<Secret>::namespaced(client.clone(), &layout.namespace(i));
        timeout(REQUEST, api.get_opt(&Layout::secret(i)))
            .await
            .context("the API did not answer")??
            .context("a site's Secret is gone")?;
    }
    Ok(started.elapsed())
}

/// The JSON size of what the proxy's watches receive, by kind, cluster-wide: every Ingress,
/// Service and EndpointSlice, and the `kubernetes.io/tls` Secrets without their data and
/// `managedFields` (the proxy drops both from Secrets no Ingress names).
pub(crate) async fn object_sizes(client: &Client) -> anyhow::Result<Vec<ObjectSize>> {
    fn measure<K: Resource + Serialize>(
        kind: &'static str,
        items: &mut [K],
        strip: impl Fn(&mut K),
    ) -> anyhow::Result<ObjectSize> {
        let mut size = ObjectSize {
            kind,
            count: items.len(),
            bytes: 0,
            managed_fields: 0,
        };
        for item in items {
            strip(item);
            size.bytes += serde_json::to_vec(item)?.len();
            if let Some(fields) = &item.meta().managed_fields {
                size.managed_fields += serde_json::to_vec(fields)?.len();
            }
        }
        Ok(size)
    }
    let all = ListParams::default();
    let mut ingresses = Api::<Ingress>::all(client.clone()).list(&all).await?.items;
    let mut services = Api::<Service>::all(client.clone()).list(&all).await?.items;
    let mut slices = Api::<EndpointSlice>::all(client.clone())
        .list(&all)
        .await?
        .items;
    let mut secrets = Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await?
        .items;
    Ok(vec![
        measure("Ingress", &mut ingresses, |_| {})?,
        measure("Service", &mut services, |_| {})?,
        measure("EndpointSlice", &mut slices, |_| {})?,
        measure(
            "Secret (kubernetes.io/tls, as the proxy keeps one no Ingress names)",
            &mut secrets,
            |s| {
                s.data = None;
                s.metadata.managed_fields = None;
            },
        )?,
    ])
}

/// Clears `managedFields` from every site's Ingress, Service and EndpointSlice (a merge patch
/// that sets them to `[{}]`, as the API documents).
pub(crate) async fn clear_managed_fields(
    client: &Client,
    layout: &Layout,
    concurrency: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let patch = serde_json::json!({ "metadata": { "managedFields": [{}] } });
    let patch = &patch;
    let mut results = futures_util::stream::iter(0..layout.sites)
        .flat_map(|i| {
            futures_util::stream::iter([
                ("Ingress", layout.namespace(i), Layout::name(i)),
                ("Service", layout.namespace(i), Layout::name(i)),
                (
                    "EndpointSlice",
                    layout.namespace(i),
                    format!("{}-slice", Layout::name(i)),
                ),
            ])
        })
        .map(|(kind, namespace, name)| async move {
            let params = PatchParams::default();
            let patch = Patch::Merge(patch);
            let request = async {
                match kind {
                    "Ingress" => Api::<Ingress>::namespaced(client.clone(), &namespace)
                        .patch(&name, &params, &patch)
                        .await
                        .map(drop),
                    "Service" => Api::<Service>::namespaced(client.clone(), &namespace)
                        .patch(&name, &params, &patch)
                        .await
                        .map(drop),
                    _ => Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
                        .patch(&name, &params, &patch)
                        .await
                        .map(drop),
                }
            };
            if Instant::now() >= deadline {
                bail!("clearing managedFields took longer than allowed");
            }
            timeout(REQUEST, request)
                .await
                .context("the API did not answer")?
                .with_context(|| format!("clearing the managedFields of {kind} {namespace}/{name}"))
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}
