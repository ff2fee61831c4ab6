//! `SharedHost`: which namespaces besides a host's owner may serve paths on it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{HOST_OR_WILDCARD, LABEL};

/// A host that more namespaces than its owner may serve paths on.
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "SharedHost",
    plural = "sharedhosts",
    derive = "PartialEq",
    category = "sekisho",
    doc = "Lets namespaces besides a host's owner serve paths on it. The first namespace to claim a host (its oldest Ingress or Tunnel naming the host) owns it; an Ingress in another namespace that names the host, or any of its paths, is refused (reported by Event and status) while the owner keeps serving, unless a SharedHost for the host lists that namespace. Several SharedHosts for one host add up. Between namespaces allowed on a host, a path claimed twice goes to the oldest Ingress.",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SharedHostSpec {
    /// The host: an exact lowercase DNS name, or `*.` and a DNS name. A wildcard covers the
    /// hosts one label below it (`*.example.com`: `a.example.com`, not `a.b.example.com`)
    /// and an Ingress host written as that same wildcard.
    #[schemars(length(max = 253), pattern(HOST_OR_WILDCARD))]
    pub host: String,
    /// The namespaces that may serve paths on the host besides its owner.
    #[schemars(length(min = 1, max = 256), inner(length(max = 63), pattern(LABEL)))]
    pub namespaces: Vec<String>,
}
