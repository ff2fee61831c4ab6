//! The vocabulary of the desired children: their kinds, names and labels, what the operator
//! knows of the world, and how a child object is put together.

use std::collections::BTreeMap;

use kube::ResourceExt as _;
use sekisho_api::Proxy;
use serde_json::{Value, json};

use crate::keys::Ring;

/// The field manager of every apply, and the `managed-by` label.
pub(crate) const MANAGER: &str = "sekisho-operator";
/// The label that names the Proxy's namespace on cluster-scoped children and those in other
/// namespaces (`app.kubernetes.io/instance` names the Proxy).
pub(crate) const NAMESPACE_LABEL: &str = "sekisho.dev/proxy-namespace";
/// The annotation on the pod template that changes when anything the pods read changes.
pub(crate) const INPUTS_ANNOTATION: &str = "sekisho.dev/inputs";
/// The default image repository of the proxy.
pub(crate) const DEFAULT_IMAGE: &str = "ghcr.io/sekisho/sekisho-proxy";

/// What exists besides the Proxy, as far as its children depend on it.
#[derive(Debug, Clone)]
pub(crate) struct World {
    /// cert-manager's `certificates.cert-manager.io` CRD is installed.
    pub(crate) cert_manager: bool,
    /// The Prometheus operator's `servicemonitors.monitoring.coreos.com` CRD is installed.
    pub(crate) service_monitors: bool,
    /// The keys, as they are to be written.
    pub(crate) keys: Ring,
    /// A digest of the client secrets the pods read, so that changing one rolls them.
    pub(crate) client_secrets_digest: String,
    /// The proxy version when the Proxy names none: the operator's own.
    pub(crate) default_version: String,
}

/// The kinds of children, with what the API needs to address them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    ServiceAccount,
    ConfigMap,
    Secret,
    Service,
    Deployment,
    PodDisruptionBudget,
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
    IngressClassParameters,
    IngressClass,
    NetworkPolicy,
    Certificate,
    ServiceMonitor,
}

/// Where a child lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// In the Proxy's namespace, with an owner reference.
    Owned,
    /// Cluster-scoped.
    Cluster,
    /// In another namespace.
    Elsewhere,
}

impl Kind {
    /// Every kind, in the order children are applied (what others refer to first).
    pub(crate) const ALL: [Kind; 15] = [
        Kind::ServiceAccount,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Service,
        Kind::Deployment,
        Kind::PodDisruptionBudget,
        Kind::IngressClassParameters,
        Kind::IngressClass,
        Kind::NetworkPolicy,
        Kind::Certificate,
        Kind::ServiceMonitor,
    ];

    /// `(group, version, kind, plural)`.
    pub(crate) fn gvkp(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::ServiceAccount => ("", "v1", "ServiceAccount", "serviceaccounts"),
            Kind::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
            Kind::Secret => ("", "v1", "Secret", "secrets"),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::PodDisruptionBudget => (
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            Kind::Role => ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
            Kind::RoleBinding => (
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
            ),
            Kind::ClusterRole => (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
            ),
            Kind::ClusterRoleBinding => (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
            ),
            Kind::IngressClassParameters => (
                "sekisho.dev",
                "v1alpha1",
                "IngressClassParameters",
                "ingressclassparameters",
            ),
            Kind::IngressClass => ("networking.k8s.io", "v1", "IngressClass", "ingressclasses"),
            Kind::NetworkPolicy => (
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
            Kind::Certificate => ("cert-manager.io", "v1", "Certificate", "certificates"),
            Kind::ServiceMonitor => (
                "monitoring.coreos.com",
                "v1",
                "ServiceMonitor",
                "servicemonitors",
            ),
        }
    }

    pub(crate) fn scope(self) -> Scope {
        match self {
            Kind::ClusterRole
            | Kind::ClusterRoleBinding
            | Kind::IngressClass
            | Kind::IngressClassParameters => Scope::Cluster,
            Kind::NetworkPolicy => Scope::Elsewhere,
            _ => Scope::Owned,
        }
    }

    pub(crate) fn api_version(self) -> String {
        match self.gvkp() {
            ("", version, ..) => version.to_owned(),
            (group, version, ..) => format!("{group}/{version}"),
        }
    }
}

/// One child to apply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Child {
    pub(crate) kind: Kind,
    /// `None` for cluster-scoped children.
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    /// The whole object, as applied.
    pub(crate) object: Value,
}

/// A Proxy the operator cannot build, in words for its `Degraded` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SpecError {
    #[error("the Proxy has no namespace")]
    NoNamespace,
    #[error("two identity providers are named `{0}`")]
    DuplicateProvider(String),
    #[error("the login host {0} is not a host name the proxy can serve")]
    AuthHost(String),
}

/// The names of a gate's children.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl Names {
    pub(crate) fn of(proxy: &Proxy) -> Result<Self, SpecError> {
        Ok(Self {
            namespace: proxy.namespace().ok_or(SpecError::NoNamespace)?,
            name: proxy.name_any(),
        })
    }

    pub(crate) fn suffixed(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// The proxy's ClusterRole and ClusterRoleBinding.
    pub(crate) fn cluster_role(&self) -> String {
        format!("sekisho-proxy:{}:{}", self.namespace, self.name)
    }

    /// The NetworkPolicy in each upstream namespace.
    pub(crate) fn network_policy(&self) -> String {
        format!("sekisho-upstreams.{}.{}", self.namespace, self.name)
    }

    /// The IngressClass's `spec.controller`: which proxy serves it.
    pub(crate) fn controller(&self) -> String {
        format!("sekisho.dev/proxy/{}/{}", self.namespace, self.name)
    }

    /// The TLS Secret cert-manager writes.
    pub(crate) fn tls_secret(&self) -> String {
        self.suffixed("tls")
    }
}

/// The labels every child carries; the pods carry [`selector`]'s too.
pub(crate) fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector(names);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "sekisho".into());
    labels.insert(NAMESPACE_LABEL.into(), names.namespace.clone());
    labels
}

/// The labels that select a gate's pods.
pub(crate) fn selector(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sekisho-proxy".into()),
        ("app.kubernetes.io/instance".into(), names.name.clone()),
    ])
}

/// The label selector (`key=value,...`) that finds a gate's children.
pub(crate) fn children_selector(names: &Names) -> String {
    format!(
        "app.kubernetes.io/managed-by={MANAGER},app.kubernetes.io/instance={},{NAMESPACE_LABEL}={}",
        names.name, names.namespace
    )
}

/// The login host: `spec.authHost`, else `auth.` and the domain.
pub(crate) fn auth_host(proxy: &Proxy) -> String {
    proxy
        .spec
        .auth_host
        .clone()
        .unwrap_or_else(|| format!("auth.{}", proxy.spec.domain))
}

/// A child with its apiVersion, kind and metadata around `body`.
pub(crate) fn child(names: &Names, kind: Kind, name: String, body: Value) -> Child {
    let namespace = match kind.scope() {
        Scope::Owned => Some(names.namespace.clone()),
        Scope::Cluster => None,
        Scope::Elsewhere => unreachable!("children elsewhere are made by `child_in`"),
    };
    child_in(names, kind, namespace, name, body)
}

pub(crate) fn child_in(
    names: &Names,
    kind: Kind,
    namespace: Option<String>,
    name: String,
    body: Value,
) -> Child {
    let mut object = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.gvkp().2,
        "metadata": {"name": name, "labels": labels(names)},
    });
    if let Some(namespace) = &namespace {
        object["metadata"]["namespace"] = json!(namespace);
    }
    if let (Value::Object(object), Value::Object(mut body)) = (&mut object, body) {
        if let (Some(Value::Object(metadata)), Some(Value::Object(more))) =
            (object.get_mut("metadata"), body.remove("metadata"))
        {
            metadata.extend(more);
        }
        object.extend(body);
    }
    Child {
        kind,
        namespace,
        name,
        object,
    }
}

/// The first 16 bytes of the SHA-256 of `input`, in hex: what the pod template's inputs
/// annotation and the client secrets' digest are written as.
pub(crate) fn short_digest(input: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, input);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
