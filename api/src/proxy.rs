//! `Proxy`: one gate that the operator deploys and keeps: its pods, Services, RBAC,
//! IngressClass, certificate and keys (`operator/`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{DOMAIN, HOST, HOST_OR_WILDCARD, LABEL, OBJECT_NAME};

/// A gate: the operator deploys the proxy for it and keeps what the proxy needs.
// Clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "Proxy",
    plural = "proxies",
    namespaced,
    status = "ProxyStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "A Sekisho gate. The operator deploys its proxy pods in the Proxy's namespace, with their Services, ServiceAccount and RBAC, the IngressClass whose Ingresses they serve, a cert-manager Certificate for the login host, the session and signing keys, a PodDisruptionBudget and, when the Prometheus operator is installed, a ServiceMonitor.",
    validation = Rule::new("size(self.metadata.name) <= 40")
        .message("metadata.name: a Proxy's name prefixes its objects' names, at most 40 characters"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.availableReplicas"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Proxy pods. Default 2, so that a node going away or a rollout leaves one serving.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    /// The public domain the gate serves, such as `example.org`: the login host defaults to
    /// `auth.` and this domain.
    #[schemars(length(max = 253), pattern(HOST))]
    pub domain: String,
    /// The host people log in on. Default `auth.<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(HOST))]
    pub auth_host: Option<String>,
    /// The OpenID providers people log in with, in the order the login page lists them.
    #[schemars(length(min = 1, max = 8))]
    pub identity_providers: Vec<IdentityProvider>,
    /// The cert-manager issuer of the login host's certificate. Without it, the proxy serves
    /// a development certificate for names no Ingress's certificate covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSpec>,
    /// The IngressClass whose Ingresses this gate serves.
    #[serde(default)]
    pub ingress_class: IngressClassSpec,
    /// The proxy's image repository. Default `ghcr.io/sekisho/sekisho-proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub image: Option<String>,
    /// The proxy's version: the image tag. Default: the operator's own version. Changing it
    /// rolls the pods one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"))]
    pub version: Option<String>,
    /// The proxy container's CPU and memory requests and limits. Default: requests of 100m
    /// CPU and 64Mi memory, a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The public Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Metrics scraping by the Prometheus operator.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// NetworkPolicies that let the upstreams of the listed namespaces accept traffic only from
    /// the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// The session and signing keys, which the operator generates and keeps in a Secret.
    #[serde(default)]
    pub keys: KeysSpec,
    /// How long a stopping pod lets requests in flight finish before it closes connections,
    /// as a Go duration. Default 30s. The pods' termination grace period is this and 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('1h')",
        "message": "must be a Go duration from 1s to 1h, such as 30s",
    }]))]
    pub shutdown_grace: Option<Duration>,
}

fn default_replicas() -> i32 {
    2
}

/// One OpenID provider.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind == 'google' || has(self.issuer)",
    "message": "issuer is required unless kind is google",
}, {
    "rule": "self.kind == 'google' || !has(self.hostedDomains) || size(self.hostedDomains) == 0",
    "message": "hostedDomains are Google's: set kind to google",
}]))]
pub struct IdentityProvider {
    /// The provider's name in URLs and logs: lowercase letters, digits and `-`.
    #[schemars(length(max = 63), pattern(LABEL))]
    pub name: String,
    /// What the login page calls it. Default: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub display_name: Option<String>,
    /// `google` adds Google's rules (its issuer by default, verified email, hosted domains);
    /// `generic` is any OpenID provider.
    #[serde(default)]
    pub kind: ProviderKind,
    /// The issuer URL, exactly as the provider writes it in tokens. Required for `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https://[^\s]+$"))]
    pub issuer: Option<String>,
    /// The client id registered at the provider.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// The Secret, in the Proxy's namespace, that holds the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Google Workspace domains whose accounts may log in (the `hd` claim). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253), pattern(DOMAIN)))]
    pub hosted_domains: Vec<String>,
    /// The claim that holds the user's groups. Default `groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub groups_claim: Option<String>,
    /// Scopes to ask for besides `openid`. Default `email profile`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 128), pattern(r"^[!#-\[\]-~]+$")))]
    pub scopes: Vec<String>,
}

/// What kind of OpenID provider it is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Generic,
    Google,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub name: String,
    /// The key in the Secret's data. Default `client-secret`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "client-secret".to_owned()
}

/// The login host's certificate, issued by cert-manager.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The cert-manager Issuer (in the Proxy's namespace) or ClusterIssuer that signs it.
    pub issuer_ref: IssuerRef,
    /// Names the certificate covers besides the login host, such as `*.example.org` (a
    /// wildcard needs an issuer that solves DNS-01). It becomes the certificate served for
    /// names no Ingress's certificate covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253), pattern(HOST_OR_WILDCARD)))]
    pub dns_names: Vec<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub name: String,
    /// `ClusterIssuer` (default) or `Issuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IssuerKind {
    #[default]
    ClusterIssuer,
    Issuer,
}

/// The IngressClass the operator creates for this gate.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngressClassSpec {
    /// The class's name, which Ingresses give as `spec.ingressClassName`. Default `sekisho`.
    #[serde(default = "default_class_name")]
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub name: String,
    /// Whether it is the cluster's default class, serving Ingresses that name none.
    #[serde(default)]
    pub default: bool,
    /// The ClusterAccessPolicy (or `public`) of this class's Ingresses that name no policy.
    /// Without it they let no one through, after sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub default_policy: Option<String>,
}

fn default_class_name() -> String {
    "sekisho".to_owned()
}

impl Default for IngressClassSpec {
    fn default() -> Self {
        Self {
            name: default_class_name(),
            default: false,
            default_policy: None,
        }
    }
}

/// The public Service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// `PreferDualStack` (default: IPv4 and IPv6 where the cluster has both), `SingleStack`
    /// or `RequireDualStack`.
    #[serde(default)]
    pub ip_family_policy: IpFamilyPolicy,
    /// The load balancer implementation (`spec.loadBalancerClass`), when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub load_balancer_class: Option<String>,
    /// Annotations for the Service (a load balancer's settings, such as MetalLB's pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    #[serde(rename = "ClusterIP")]
    ClusterIp,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpFamilyPolicy {
    #[default]
    PreferDualStack,
    SingleStack,
    RequireDualStack,
}

/// Metrics scraping.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor when the Prometheus operator's CRD is installed. Default true.
    #[serde(default = "yes")]
    pub service_monitor: bool,
    /// Labels for the ServiceMonitor, for a Prometheus that selects monitors by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            service_monitor: true,
            labels: BTreeMap::new(),
        }
    }
}

/// Upstream namespaces whose pods accept traffic only from the proxy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Namespaces that get a NetworkPolicy admitting, to every pod, only the proxy pods (and
    /// pods of the same namespace). Traffic from elsewhere is dropped by the network plugin.
    #[schemars(length(min = 1, max = 256), inner(length(max = 63), pattern(LABEL)))]
    pub upstream_namespaces: Vec<String>,
}

/// The session and signing keys.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeysSpec {
    /// Change this to any new value to rotate the keys. The new keys are introduced, then
    /// made the ones that sign, and the old ones are kept for `overlap` so that no session
    /// and no assertion made before breaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub rotation: Option<String>,
    /// How long retired keys keep opening sessions and verifying assertions, as a Go
    /// duration. Default 13h (the session lifetime and an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('0s')",
        "message": "must be a Go duration, such as 13h",
    }]))]
    pub overlap: Option<Duration>,
}

/// What the operator last did and saw.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `Ready` (the pods serve), `Progressing` (a rollout or a key rotation is under way) and
    /// `Degraded` (something the operator needs cannot be made; the message says what).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The proxy version the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The key rotation last asked for (`spec.keys.rotation`) and where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysStatus>,
}

/// Where the keys stand.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeysStatus {
    /// The `spec.keys.rotation` value the keys follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
    /// `Stable`, `Introducing` (the new keys are being rolled out to every pod, which accept
    /// them but do not yet use them) or `Retiring` (the new keys seal and sign; the old ones
    /// still open what they made until the overlap has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
