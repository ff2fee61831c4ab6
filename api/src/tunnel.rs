//! `Tunnel`: a host that `sekisho tunnel HOST` reaches, and where its byte stream goes (the
//! file configuration's `tunnels:`, `proxy/src/config/tunnel.rs`).

use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::PUBLIC_POLICY;
use crate::schema::{HOST, HOST_PORT_MAX, HOST_PORT_MESSAGE, HOST_PORT_RULE, OBJECT_NAME};
use crate::status::ObservedStatus;

/// Where `sekisho tunnel HOST` goes, and who may open it.
// Clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "Tunnel",
    plural = "tunnels",
    namespaced,
    status = "ObservedStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "A host that `sekisho tunnel HOST` (ssh's ProxyCommand) reaches: the proxy checks the user's token against the policy, then opens a byte stream to the target, directly or through an agent. One Tunnel per host.",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agent"),
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
pub struct TunnelSpec {
    /// The host name users give `sekisho tunnel` (ssh's `%h`): one exact, lowercase DNS name.
    #[schemars(length(max = 253), pattern(HOST))]
    pub host: String,
    /// The `host:port` the byte stream goes to, as the agent sees it (or the proxy, without
    /// an agent).
    #[schemars(length(max = HOST_PORT_MAX))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": HOST_PORT_RULE, "message": HOST_PORT_MESSAGE },
    ]))]
    pub target: String,
    /// The Agent, in this namespace, that dials the target. Without one, the proxy dials it
    /// itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(OBJECT_NAME))]
    pub agent: Option<String>,
    /// Who may open the tunnel: the name of an AccessPolicy in this namespace or, when there
    /// is none of that name, of a ClusterAccessPolicy. Required, and never `public`: a tunnel
    /// is only for people who logged in with `sekisho login`.
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": format!("self != '{PUBLIC_POLICY}'"),
        "message": "a tunnel cannot be public: name an AccessPolicy or a ClusterAccessPolicy",
    }]))]
    pub policy: String,
    /// How long dialing the target may take, as a Go duration (`5s`, `1m30s`). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) > duration('0s')",
        "message": "must be a Go duration longer than zero, such as 5s",
    }]))]
    pub connect_timeout: Option<Duration>,
}
