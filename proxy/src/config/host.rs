//! The `hosts:` section: which host and path go to which upstream, and who may pass.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::origin::Origin;
use super::problem::{Names, Problems, check_host_pattern};
use crate::routing::table::PathType;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// An exact host name or a `*.` wildcard covering one label.
    pub host: String,
    /// The upstream for requests on this host that no path matches.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub paths: Vec<PathConfig>,
    /// Defaults for the host's paths (and its `default` route).
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub bearer: bool,
    #[serde(default, with = "humantime_serde")]
    pub max_session_age: Option<Duration>,
    /// A shorter idle timeout than `identity.session_idle_timeout` for this host's routes.
    #[serde(default, with = "humantime_serde")]
    pub session_idle_timeout: Option<Duration>,
    /// Let `%2F` through to the upstream instead of refusing the request (decided on the
    /// decoded path; see `docs/paths.md`).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// The `Upgrade` protocols passed to the upstream; `[websocket]` when absent.
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
    /// Origins whose pages may open WebSockets on the host's routes, besides each route's own.
    #[serde(default)]
    pub websocket_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    pub path: String,
    /// Kubernetes Ingress `pathType`: `Prefix` (element-wise) or `Exact`.
    #[serde(rename = "type", default)]
    pub path_type: PathType,
    pub upstream: String,
    /// Anyone may pass, without login. Overrides the host's `policy`.
    #[serde(default)]
    pub public: Option<bool>,
    /// The access policy; the host's when absent.
    #[serde(default)]
    pub policy: Option<String>,
    /// Also accept `Authorization: Bearer` JWTs from `identity.bearer_issuers`.
    #[serde(default)]
    pub bearer: Option<bool>,
    /// Ask for a fresh login when the session's last one is older.
    #[serde(default, with = "humantime_serde")]
    pub max_session_age: Option<Duration>,
    /// A shorter idle timeout than `identity.session_idle_timeout` for this route.
    #[serde(default, with = "humantime_serde")]
    pub session_idle_timeout: Option<Duration>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The host's `allow_encoded_slashes` for this route.
    #[serde(default)]
    pub allow_encoded_slashes: Option<bool>,
    /// The host's `upgrades` for this route.
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
    /// Origins besides the route's own whose pages may open WebSockets here (bare origins:
    /// `https://host[:port]`); the host's when absent. See [`crate::forward::websocket::origin`].
    #[serde(default)]
    pub websocket_origins: Option<Vec<String>>,
}

/// A GitHub webhook path: a valid `X-Hub-Signature-256` instead of a login.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The file that holds the secret; in Kubernetes mode, names the Secret it came from.
    pub secret_file: PathBuf,
    /// The largest body accepted (bytes); the whole body is checked before it is forwarded.
    #[serde(default = "default_webhook_max_body")]
    pub max_body: u64,
    /// The secret itself, when it comes from the API rather than a file (Kubernetes mode).
    #[serde(skip)]
    pub(crate) inline: Option<InlineWebhookSecret>,
}

/// A webhook secret read from a Kubernetes Secret. Two are equal when their bytes are (by
/// digest), so that an unchanged Secret keeps the route as it is.
#[derive(Clone)]
pub(crate) struct InlineWebhookSecret {
    pub(crate) secret: std::sync::Arc<sekisho_identity::webhook::WebhookSecret>,
    digest: [u8; 32],
}

impl InlineWebhookSecret {
    pub(crate) fn new(
        stored: &[u8],
    ) -> Result<Self, sekisho_identity::webhook::WebhookSecretError> {
        let secret = sekisho_identity::webhook::WebhookSecret::stored(stored)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, stored).as_ref());
        Ok(Self {
            secret: std::sync::Arc::new(secret),
            digest,
        })
    }
}

impl PartialEq for InlineWebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl std::fmt::Debug for InlineWebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineWebhookSecret(<redacted>)")
    }
}

fn default_webhook_max_body() -> u64 {
    sekisho_identity::webhook::DEFAULT_MAX_BODY
}

impl HostConfig {
    /// The host's problems; `seen_hosts` catches a host listed twice.
    pub(crate) fn validate(
        &self,
        field: &str,
        names: &Names<'_>,
        seen_hosts: &mut HashSet<String>,
        problems: &mut Problems,
    ) {
        if let Err(message) = check_host_pattern(&self.host) {
            problems.add(format!("{field}.host"), message);
        } else if !seen_hosts.insert(self.host.to_ascii_lowercase()) {
            problems.add(
                format!("{field}.host"),
                format!("`{}` is listed twice; merge its paths", self.host),
            );
        }
        if self.default.is_none() && self.paths.is_empty() {
            problems.add(field, "needs paths or a default upstream");
        }
        if let Some(default) = &self.default
            && !names.upstreams.contains(default.as_str())
        {
            problems.add(
                format!("{field}.default"),
                format!("no upstream named `{default}`"),
            );
        }
        let mut seen_paths = HashSet::new();
        for (j, path) in self.paths.iter().enumerate() {
            path.validate(
                &format!("{field}.paths[{j}]"),
                names,
                &mut seen_paths,
                problems,
            );
        }
        check_upgrades(field, self.upgrades.as_deref(), problems);
        check_origins(field, Some(&self.websocket_origins), problems);
        if self.public && self.policy.is_some() {
            problems.add(field, "`public: true` and a `policy` exclude each other");
        }
        if let Some(message) = names.unknown_policy(self.policy.as_deref()) {
            problems.add(format!("{field}.policy"), message);
        }
    }

    /// Whether any of the host's routes needs a login or a token.
    pub(crate) fn is_guarded(&self) -> bool {
        self.policy.is_some()
            || self
                .paths
                .iter()
                .any(|p| p.policy.is_some() || p.bearer == Some(true))
    }
}

impl PathConfig {
    fn validate(
        &self,
        field: &str,
        names: &Names<'_>,
        seen_paths: &mut HashSet<(String, PathType)>,
        problems: &mut Problems,
    ) {
        if let Err(message) = crate::routing::path::config_path(&self.path) {
            problems.add(format!("{field}.path"), message);
        }
        let canonical =
            crate::routing::path::config_path(&self.path).unwrap_or_else(|_| self.path.clone());
        if !seen_paths.insert((canonical, self.path_type)) {
            problems.add(
                format!("{field}.path"),
                format!("`{}` is listed twice for this host", self.path),
            );
        }
        if !names.upstreams.contains(self.upstream.as_str()) {
            problems.add(
                format!("{field}.upstream"),
                format!("no upstream named `{}`", self.upstream),
            );
        }
        let guard = (self.public.is_some_and(|p| p), self.policy.is_some());
        if guard == (true, true) {
            problems.add(field, "`public: true` and a `policy` exclude each other");
        }
        if self.webhook.is_some() && (guard.0 || guard.1 || self.bearer == Some(true)) {
            problems.add(
                format!("{field}.webhook"),
                "a webhook path is guarded by its signature alone: drop `public`, `policy` and `bearer`",
            );
        }
        if let Some(message) = names.unknown_policy(self.policy.as_deref()) {
            problems.add(format!("{field}.policy"), message);
        }
        check_upgrades(field, self.upgrades.as_deref(), problems);
        check_origins(field, self.websocket_origins.as_deref(), problems);
    }
}

fn check_upgrades(field: &str, upgrades: Option<&[String]>, problems: &mut Problems) {
    for (k, token) in upgrades.into_iter().flatten().enumerate() {
        if let Err(message) = check_upgrade_token(token) {
            problems.add(format!("{field}.upgrades[{k}]"), message);
        }
    }
}

fn check_origins(field: &str, origins: Option<&[String]>, problems: &mut Problems) {
    for (k, origin) in origins.into_iter().flatten().enumerate() {
        if let Err(error) = Origin::parse(origin) {
            problems.add(format!("{field}.websocket_origins[{k}]"), error.to_string());
        }
    }
}

/// An `Upgrade` protocol name: an HTTP token (RFC 9110 §5.6.2), optionally `/version`.
fn check_upgrade_token(token: &str) -> Result<(), String> {
    let is_token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (name, version) = token.split_once('/').unwrap_or((token, "x"));
    if is_token(name) && is_token(version) {
        Ok(())
    } else {
        Err(format!(
            "`{token}` is not a protocol name (like `websocket`)"
        ))
    }
}
