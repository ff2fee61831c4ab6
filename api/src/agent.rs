//! `Agent`: a `sekisho-agent` that may connect to the proxy, and what the proxy may ask it to
//! dial (the file configuration's `agents:`, `proxy/src/config/tunnel.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{AGENT_PUBLIC_KEY, items_are_host_ports};

/// The keys an agent proves itself with, and the targets the proxy may ask it to dial.
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "Agent",
    plural = "agents",
    namespaced,
    status = "AgentStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "A sekisho-agent that may hold a connection to the proxy: the object's name is the agent's name (sekisho-agent --name), at most 63 characters. Deleting the Agent, or removing the key a connection proved itself with, cuts that connection.",
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name: an Agent's name is its agent's name, at most 63 characters"),
    printcolumn(name = "Connected", type_ = "boolean", json_path = ".status.connected"),
    printcolumn(name = "Replica", type_ = "string", json_path = ".status.replica"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The public keys the agent may prove itself with: `ed25519:` and 43 base64url
    /// characters, as `sekisho-agent init` (or `sekisho-agent public-key`) prints them. More
    /// than one while a key is being rotated.
    #[schemars(length(min = 1, max = 16), inner(pattern(AGENT_PUBLIC_KEY)))]
    pub public_keys: Vec<String>,
    /// The `host:port` targets, as the agent sees them, that the proxy may ask this agent to
    /// dial. Empty: any target the agent itself allows (the agent checks its own list too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), transform = items_are_host_ports)]
    pub targets: Vec<String>,
}

/// What the proxy last saw of the agent.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Whether the agent holds a connection to one of the proxy's replicas.
    #[serde(default)]
    pub connected: bool,
    /// The replica (pod name) that holds the agent's connection, while it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// When the current connection was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<Time>,
    /// Why the agent's last connection was refused or ended, if it was not a clean close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The latest observations of the agent's state. `Ready` is `True` while it is connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
