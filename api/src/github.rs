//! `GitHubWebhook`: GitHub repositories whose webhooks the operator keeps pointing at a route
//! of the gate, with the route's secret (`operator/src/github/`). The proxy checks the
//! deliveries' signatures with the same secret (`X-Hub-Signature-256`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{HOST, OBJECT_NAME};

/// The GitHub API the operator talks to when a GitHubWebhook names none.
pub const GITHUB_API_URL: &str = "https://api.github.com";

/// A GitHub repository, `owner/name`: an owner of letters, digits and `-` (at most 39), a
/// name of letters, digits, `-`, `_` and `.` that is neither `.` nor `..`.
const REPOSITORY: &str = r"^[A-Za-z0-9][-A-Za-z0-9]{0,38}/(\.?[-_A-Za-z0-9][-._A-Za-z0-9]{0,99}|\.\.[-._A-Za-z0-9]{1,98})$";
/// A GitHub webhook event name (`push`, `pull_request`, …) or `*`, every event.
const EVENT: &str = r"^(\*|[a-z][a-z_]*)$";
/// `https://` and a host, or `http://` to a loopback address (a test's stand-in for GitHub).
const API_URL_RULE: &str = r"self.matches(r'^https://[^\s/?#@]+(/[^\s?#]*)?$') || self.matches(r'^http://(127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\]|localhost)(:[0-9]{1,5})?(/[^\s?#]*)?$')";

/// GitHub webhooks that deliver to a route of the gate.
// Clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "GitHubWebhook",
    plural = "githubwebhooks",
    namespaced,
    status = "GitHubWebhookStatus",
    derive = "PartialEq",
    category = "sekisho",
    doc = "Webhooks of GitHub repositories that deliver to https://HOST/PATH with a shared secret. The operator creates them through a GitHub App installed on the repositories, keeps their URL, secret and events as this spec says, records their ids in status and deletes them when a repository leaves the list or the object is deleted.",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
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
pub struct GitHubWebhookSpec {
    /// The route's host: the exact, lowercase DNS name GitHub delivers to over HTTPS.
    #[schemars(length(max = 253), pattern(HOST))]
    pub host: String,
    /// The route's path, starting with `/`, without query or fragment. Default `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self.startsWith('/')", "message": "must start with '/'" },
        {
            "rule": "!self.contains('?') && !self.contains('#')",
            "message": "a path cannot hold a query or a fragment",
        },
    ]))]
    pub path: String,
    /// The repositories, `owner/name`, each of which gets one webhook. The GitHub App must be
    /// installed on each with the repository permission "Webhooks: read and write".
    #[schemars(
        length(min = 1, max = 100),
        inner(length(max = 140), pattern(REPOSITORY))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub repositories: Vec<String>,
    /// The events delivered, by GitHub's names (`push`, `pull_request`, `release`, …; `*`
    /// for all). Default `push`.
    #[serde(default = "default_events")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 64), pattern(EVENT)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub events: Vec<String>,
    /// The webhook secret, which GitHub signs deliveries with and the route checks them
    /// with. When the Secret does not exist, the operator creates it with 32 random bytes
    /// (64 hex digits) and deletes it with this object.
    pub secret_ref: WebhookSecretRef,
    /// The GitHub App the operator acts as.
    pub app: GitHubApp,
    /// The GitHub REST API: `https://api.github.com` (the default) or a GitHub Enterprise
    /// Server's `https://HOST/api/v3`. Plain `http` only to a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": API_URL_RULE,
        "message": "must be an https URL (http only to 127.0.0.0/8, [::1] or localhost)",
    }]))]
    pub api_url: Option<String>,
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_events() -> Vec<String> {
    vec!["push".to_owned()]
}

impl GitHubWebhookSpec {
    /// The URL GitHub delivers to: `https://`, the host and the path.
    pub fn delivery_url(&self) -> String {
        format!("https://{}{}", self.host, self.path)
    }

    /// The GitHub API's base URL, without a trailing `/`.
    pub fn api_url(&self) -> &str {
        self.api_url
            .as_deref()
            .unwrap_or(GITHUB_API_URL)
            .trim_end_matches('/')
    }
}

/// The key of a Secret, in the object's namespace, that holds the webhook secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretRef {
    /// The Secret's name.
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub name: String,
    /// The key in the Secret's data. Default `secret`.
    #[serde(default = "default_webhook_secret_key")]
    #[schemars(length(max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_webhook_secret_key() -> String {
    "secret".to_owned()
}

/// A GitHub App's credentials.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitHubApp {
    /// A Secret, in the object's namespace, with the keys `app-id` (the App's numeric id) and
    /// `private-key` (a private key of the App, the PEM file GitHub gives).
    pub secret_ref: AppSecretRef,
}

/// A Secret in the object's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppSecretRef {
    /// The Secret's name.
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub name: String,
}

/// The webhooks as the operator last left them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitHubWebhookStatus {
    /// `Ready` is `True` when every repository has its webhook as the spec says; when it is
    /// `False`, its reason and message say what is in the way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The webhooks the operator made or took over, which it deletes when their repository
    /// leaves the list or this object is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<GitHubHook>,
}

/// One repository's webhook.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct GitHubHook {
    /// The repository, `owner/name`, as the spec writes it.
    pub repository: String,
    /// The webhook's id at GitHub.
    pub id: i64,
}
