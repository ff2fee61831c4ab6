//! The proxy's configuration file: parsed straight into typed values, then validated.
//!
//! Parsing rejects unknown fields; validation checks what serde cannot (references between
//! sections, host and path syntax, endpoint URLs). Every error names the file, the field and the
//! problem, so an operator can fix an edit without guessing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;
use sekisho_identity::bearer::BearerIssuerConfig;
use sekisho_identity::oidc::ProviderConfig;
use serde::Deserialize;

use crate::forward::websocket::origin::Origin;
use crate::policy::AccessPolicy;

/// The default configuration used when no `--config` is given: the local example.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../deploy/examples/local.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {}", join_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One validation failure: the field (as a path into the document) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    /// Worker threads serving traffic, each with its own runtime and listening socket.
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub tls: Tls,
    /// Peers whose `X-Forwarded-*` headers are kept and extended instead of replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub limits: Limits,
    /// One JSON line per request on standard output.
    #[serde(default = "yes")]
    pub access_log: bool,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    /// Login, sessions and tokens; see `docs/identity.md`.
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    /// Access policies that routes name with `policy:`.
    #[serde(default)]
    pub policies: BTreeMap<String, AccessPolicy>,
    /// Agents that may connect, by name; see [`crate::hub::config`].
    #[serde(default)]
    pub agents: BTreeMap<String, crate::hub::config::AgentConfig>,
    /// Byte-stream routes for `sekisho tunnel`; see [`crate::hub::config`].
    #[serde(default)]
    pub tunnels: Vec<crate::hub::config::TunnelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The host people log in on (`/.sekisho/login`, `/.sekisho/callback`).
    pub auth_host: String,
    /// Session sealing keys (`ID:BASE64URL` lines, newest first). Generated at start when
    /// absent, so sessions then end with the process.
    #[serde(default)]
    pub session_keys_file: Option<PathBuf>,
    /// ES256 keys (PKCS#8 PEM, newest first) for identity assertions. Generated when absent.
    #[serde(default)]
    pub signing_keys_file: Option<PathBuf>,
    #[serde(default = "default_session_lifetime", with = "humantime_serde")]
    pub session_lifetime: Duration,
    #[serde(default = "default_session_idle_timeout", with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// Identity headers, beyond the built-in ones, that clients must not send upstream.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Accept OpenID providers on plain `http://` (development only).
    #[serde(default)]
    pub dangerous_allow_http_issuers: bool,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub bearer_issuers: Vec<BearerIssuerConfig>,
}

/// A GitHub webhook path: a valid `X-Hub-Signature-256` instead of a login.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub secret_file: PathBuf,
    /// The largest body accepted (bytes); the whole body is checked before it is forwarded.
    #[serde(default = "default_webhook_max_body")]
    pub max_body: u64,
}

fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_session_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_webhook_max_body() -> u64 {
    sekisho_identity::webhook::DEFAULT_MAX_BODY
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The public TLS listener.
    pub https: SocketAddr,
    /// An optional plain-HTTP listener.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// What the plain-HTTP listener does: redirect to HTTPS (default) or serve routes.
    #[serde(default)]
    pub http_mode: HttpMode,
    /// The internal listener for health and metrics; never the public one.
    pub admin: SocketAddr,
    /// The HTTPS port written into redirects, when clients reach the proxy on another port
    /// than it listens on (443 in front of 8443). Default: the HTTPS listener's port.
    #[serde(default)]
    pub redirect_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    #[default]
    Redirect,
    Serve,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate and key files; SNI names come from each certificate's DNS names.
    /// Empty: a self-signed development certificate for `localhost` is generated.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time allowed for a client to send a complete request head (slowloris defence), and for
    /// the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger heads get 431.
    pub max_header_bytes: usize,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections across all workers; further clients wait in the accept queue.
    pub max_connections: usize,
    /// HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// How long in-flight requests may run after SIGTERM before connections are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(75),
            max_connections: 50_000,
            max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://` or `https://` base URLs (scheme, host and port only).
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending the request until the response head arrives.
    #[serde(default = "default_response_header_timeout", with = "humantime_serde")]
    pub response_header_timeout: Duration,
    #[serde(default)]
    pub tls: UpstreamTls,
    #[serde(default)]
    pub ejection: Ejection,
    /// The agent that reaches the endpoints (`http://` only, as the agent sees them); requests
    /// go over the agent's links instead of a connection from the proxy.
    #[serde(default)]
    pub agent: Option<String>,
}

/// The protocol spoken to an upstream. `http2` on an `http://` endpoint is h2c (prior knowledge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 for `http://`; ALPN chooses between h2 and HTTP/1.1 for `https://`.
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// A PEM bundle of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name to verify (and send as SNI) instead of the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate from the upstream. Only for development.
    #[serde(default)]
    pub dangerous_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ejection {
    /// Consecutive connection failures after which an endpoint is taken out of rotation.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint stays out before it is tried again.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            duration: Duration::from_secs(10),
        }
    }
}

/// An upstream base URL, parsed and checked at load time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Endpoint {
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    pub fn host(&self) -> &str {
        self.authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let uri: http::Uri = value
            .parse()
            .map_err(|e| format!("`{value}` is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("`{value}` needs a scheme (http:// or https://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("`{value}`: the scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{value}` needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{value}`: credentials in URLs are not supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "`{value}`: give only scheme, host and port (no path or query)"
            ));
        }
        Ok(Self { scheme, authority })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum PathType {
    #[default]
    Prefix,
    Exact,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_response_header_timeout() -> Duration {
    Duration::from_secs(60)
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates a configuration file. Relative file paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                problems,
            });
        }
        config.resolve_paths(base);
        config.canonicalize_request_paths();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for files in &mut self.tls.certificates {
            resolve(&mut files.cert);
            resolve(&mut files.key);
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(ca) = &mut upstream.tls.ca {
                resolve(ca);
            }
        }
        if let Some(identity) = &mut self.identity {
            for file in [
                &mut identity.session_keys_file,
                &mut identity.signing_keys_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(file);
            }
            for provider in &mut identity.providers {
                resolve(&mut provider.client_secret_file);
            }
        }
        for host in &mut self.hosts {
            for path in &mut host.paths {
                if let Some(webhook) = &mut path.webhook {
                    resolve(&mut webhook.secret_file);
                }
            }
        }
    }

    /// Writes every route and policy path in the form requests are matched in (validation
    /// has checked that each has one).
    fn canonicalize_request_paths(&mut self) {
        let canonical = |path: &mut String| {
            if let Ok(normal) = crate::routing::path::config_path(path) {
                *path = normal;
            }
        };
        for host in &mut self.hosts {
            for path in &mut host.paths {
                canonical(&mut path.path);
            }
        }
        for policy in self.policies.values_mut() {
            for rule in &mut policy.rules {
                for path in &mut rule.paths {
                    canonical(&mut path.path);
                }
            }
        }
    }

    /// Every problem the file has, not just the first.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(Problem { field, message });

        if self.workers == 0 || self.workers > 256 {
            problem("workers".into(), "must be between 1 and 256".into());
        }
        let limits = &self.limits;
        if limits.max_header_bytes < 1024 || limits.max_header_bytes > 1024 * 1024 {
            problem(
                "limits.max_header_bytes".into(),
                "must be between 1024 and 1048576".into(),
            );
        }
        if limits.max_connections == 0 {
            problem("limits.max_connections".into(), "must be at least 1".into());
        }
        if limits.max_concurrent_streams == 0 {
            problem(
                "limits.max_concurrent_streams".into(),
                "must be at least 1".into(),
            );
        }
        for (field, value) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
        ] {
            if value.is_zero() {
                problem(field.into(), "must be longer than zero".into());
            }
        }
        let fixed = |a: &SocketAddr| a.port() != 0;
        let listen = &self.listen;
        if (listen.admin == listen.https && fixed(&listen.admin))
            || listen
                .http
                .is_some_and(|h| fixed(&h) && (h == listen.https || h == listen.admin))
        {
            problem(
                "listen".into(),
                "https, http and admin need different addresses".into(),
            );
        }

        for (name, upstream) in &self.upstreams {
            let field = format!("upstreams.{name}");
            if !is_name(name) {
                problem(
                    field.clone(),
                    "names use lowercase letters, digits, '-', '_' and '.'".into(),
                );
            }
            if upstream.endpoints.is_empty() {
                problem(
                    format!("{field}.endpoints"),
                    "needs at least one endpoint".into(),
                );
            }
            let schemes: Vec<bool> = upstream.endpoints.iter().map(Endpoint::is_https).collect();
            if schemes.windows(2).any(|w| w[0] != w[1]) {
                problem(
                    format!("{field}.endpoints"),
                    "mixes http:// and https:// endpoints".into(),
                );
            }
            if upstream.connect_timeout.is_zero() || upstream.response_header_timeout.is_zero() {
                problem(field.clone(), "timeouts must be longer than zero".into());
            }
            if upstream.ejection.consecutive_failures == 0 {
                problem(
                    format!("{field}.ejection.consecutive_failures"),
                    "must be at least 1".into(),
                );
            }
            if let Some(agent) = &upstream.agent {
                if !self.agents.contains_key(agent) {
                    problem(
                        format!("{field}.agent"),
                        format!("no agent named `{agent}` under `agents`"),
                    );
                }
                if schemes.iter().any(|&s| s) {
                    problem(
                        format!("{field}.endpoints"),
                        "an agent reaches its endpoints over plain http://".into(),
                    );
                }
            }
            let tls = &upstream.tls;
            let any_https = schemes.iter().any(|&s| s);
            if !any_https
                && (tls.ca.is_some() || tls.server_name.is_some() || tls.dangerous_skip_verify)
            {
                problem(
                    format!("{field}.tls"),
                    "TLS settings need https:// endpoints".into(),
                );
            }
            if tls.dangerous_skip_verify && tls.ca.is_some() {
                problem(
                    format!("{field}.tls"),
                    "ca and dangerous_skip_verify exclude each other".into(),
                );
            }
            if let Some(name) = &tls.server_name
                && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                problem(
                    format!("{field}.tls.server_name"),
                    format!("`{name}` is not a valid DNS name or IP address"),
                );
            }
        }

        let mut seen_hosts = std::collections::HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let field = format!("hosts[{i}]");
            if let Err(message) = check_host_pattern(&host.host) {
                problem(format!("{field}.host"), message);
            } else if !seen_hosts.insert(host.host.to_ascii_lowercase()) {
                problem(
                    format!("{field}.host"),
                    format!("`{}` is listed twice; merge its paths", host.host),
                );
            }
            if host.default.is_none() && host.paths.is_empty() {
                problem(field.clone(), "needs paths or a default upstream".into());
            }
            if let Some(default) = &host.default
                && !self.upstreams.contains_key(default)
            {
                problem(
                    format!("{field}.default"),
                    format!("no upstream named `{default}`"),
                );
            }
            let mut seen_paths = std::collections::HashSet::new();
            for (j, path) in host.paths.iter().enumerate() {
                let field = format!("{field}.paths[{j}]");
                if let Err(message) = check_path(&path.path) {
                    problem(format!("{field}.path"), message);
                }
                let canonical = crate::routing::path::config_path(&path.path)
                    .unwrap_or_else(|_| path.path.clone());
                if !seen_paths.insert((canonical, path.path_type)) {
                    problem(
                        format!("{field}.path"),
                        format!("`{}` is listed twice for this host", path.path),
                    );
                }
                if !self.upstreams.contains_key(&path.upstream) {
                    problem(
                        format!("{field}.upstream"),
                        format!("no upstream named `{}`", path.upstream),
                    );
                }
                let guard = (path.public.is_some_and(|p| p), path.policy.is_some());
                if guard == (true, true) {
                    problem(
                        field.clone(),
                        "`public: true` and a `policy` exclude each other".into(),
                    );
                }
                if path.webhook.is_some() && (guard.0 || guard.1 || path.bearer == Some(true)) {
                    problem(
                        format!("{field}.webhook"),
                        "a webhook path is guarded by its signature alone: drop `public`, `policy` and `bearer`".into(),
                    );
                }
                if let Some(message) = self.unknown_policy(path.policy.as_deref()) {
                    problem(format!("{field}.policy"), message);
                }
                for (k, token) in path.upgrades.iter().flatten().enumerate() {
                    if let Err(message) = check_upgrade_token(token) {
                        problem(format!("{field}.upgrades[{k}]"), message);
                    }
                }
                for (k, origin) in path.websocket_origins.iter().flatten().enumerate() {
                    if let Err(error) = Origin::parse(origin) {
                        problem(format!("{field}.websocket_origins[{k}]"), error.to_string());
                    }
                }
            }
            for (k, token) in host.upgrades.iter().flatten().enumerate() {
                if let Err(message) = check_upgrade_token(token) {
                    problem(format!("{field}.upgrades[{k}]"), message);
                }
            }
            for (k, origin) in host.websocket_origins.iter().enumerate() {
                if let Err(error) = Origin::parse(origin) {
                    problem(format!("{field}.websocket_origins[{k}]"), error.to_string());
                }
            }
            if host.public && host.policy.is_some() {
                problem(
                    field.clone(),
                    "`public: true` and a `policy` exclude each other".into(),
                );
            }
            if let Some(message) = self.unknown_policy(host.policy.as_deref()) {
                problem(format!("{field}.policy"), message);
            }
        }
        problems.extend(crate::policy::validate_policies(&self.policies));
        problems.extend(crate::hub::config::validate(self));
        match &self.identity {
            Some(identity) => {
                if let Err(message) = check_host_pattern(&identity.auth_host).and_then(|()| {
                    match identity.auth_host.starts_with("*.") {
                        true => Err("must be one exact host name".to_owned()),
                        false => Ok(()),
                    }
                }) {
                    problems.push(Problem {
                        field: "identity.auth_host".into(),
                        message,
                    });
                } else if self
                    .hosts
                    .iter()
                    .any(|h| h.host.eq_ignore_ascii_case(&identity.auth_host))
                {
                    problems.push(Problem {
                        field: "identity.auth_host".into(),
                        message:
                            "the auth host serves the login itself; it cannot also be a route host"
                                .into(),
                    });
                }
                let mut names = std::collections::HashSet::new();
                for (i, provider) in identity.providers.iter().enumerate() {
                    if !names.insert(provider.name.as_str()) {
                        problems.push(Problem {
                            field: format!("identity.providers[{i}].name"),
                            message: format!("`{}` is listed twice", provider.name),
                        });
                    }
                }
                for (i, issuer) in identity.bearer_issuers.iter().enumerate() {
                    let field = format!("identity.bearer_issuers[{i}]");
                    if issuer.audiences.is_empty() {
                        problems.push(Problem {
                            field: format!("{field}.audiences"),
                            message: "name at least one audience (client id) to accept".into(),
                        });
                    }
                    for (j, domain) in issuer.hosted_domains.iter().enumerate() {
                        if !sekisho_identity::oidc::is_hosted_domain(domain) {
                            problems.push(Problem {
                                field: format!("{field}.hosted_domains[{j}]"),
                                message: format!("`{domain}` is not a domain name"),
                            });
                        }
                    }
                }
                if identity.session_idle_timeout.is_zero() || identity.session_lifetime.is_zero() {
                    problems.push(Problem {
                        field: "identity".into(),
                        message: "session_lifetime and session_idle_timeout must be positive"
                            .into(),
                    });
                }
            }
            None => {
                let guarded = self.hosts.iter().any(|h| {
                    h.policy.is_some()
                        || h.paths
                            .iter()
                            .any(|p| p.policy.is_some() || p.bearer == Some(true))
                });
                if guarded {
                    problems.push(Problem {
                        field: "identity".into(),
                        message:
                            "routes name policies, but no `identity` section says how people log in"
                                .into(),
                    });
                }
            }
        }
        problems
    }

    /// The problem with a `policy:` reference, if it names no policy.
    fn unknown_policy(&self, name: Option<&str>) -> Option<String> {
        name.filter(|name| !self.policies.contains_key(*name))
            .map(|name| format!("no policy named `{name}`"))
    }
}

/// The naming rule for upstreams and policies.
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A host is an exact DNS name, or `*.` followed by a DNS name (one label wildcard).
pub(crate) fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{host}` is not a DNS name or a `*.` wildcard of one"
        ));
    }
    Ok(())
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

fn check_path(path: &str) -> Result<(), String> {
    crate::routing::path::config_path(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"), Path::new("/etc/sekisho"))
    }

    const MINIMAL: &str = "
listen: {https: '127.0.0.1:8443', admin: '127.0.0.1:9901'}
upstreams:
  app: {endpoints: ['http://127.0.0.1:3000']}
hosts:
  - host: app.example.com
    paths: [{path: /, upstream: app}]
";

    #[test]
    fn minimal_file_parses_with_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert!(config.access_log);
        assert_eq!(config.hosts[0].paths[0].path_type, PathType::Prefix);
        assert_eq!(config.upstreams["app"].endpoints[0].port(), 3000);
    }

    #[test]
    fn unknown_field_is_an_error_that_names_the_file_and_the_field() {
        let text = MINIMAL.replace("paths: [{path: /", "paths: [{pth: /, path: /");
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.starts_with("test.yaml: "), "{message}");
        assert!(message.contains("unknown field `pth`"), "{message}");
    }

    #[test]
    fn dangling_upstream_reference_names_the_field() {
        let text = MINIMAL.replace("upstream: app", "upstream: nope");
        let message = parse(&text).unwrap_err().to_string();
        assert_eq!(
            message,
            "test.yaml: hosts[0].paths[0].upstream: no upstream named `nope`"
        );
    }

    #[test]
    fn endpoints_with_paths_or_other_schemes_are_rejected() {
        for bad in [
            "ftp://x:1",
            "http://x:1/api",
            "127.0.0.1:80",
            "http://u:p@x",
        ] {
            assert!(Endpoint::try_from(bad.to_string()).is_err(), "{bad}");
        }
        let ok = Endpoint::try_from("https://[::1]:8443".to_string()).unwrap();
        assert_eq!((ok.host(), ok.port(), ok.is_https()), ("::1", 8443, true));
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = MINIMAL
            .replace("host: app.example.com", "host: 'bad host'")
            .replace("path: /", "path: foo");
        let ConfigError::Invalid { problems, .. } = parse(&text).unwrap_err() else {
            panic!("expected a validation error");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["hosts[0].host", "hosts[0].paths[0].path"]);
    }

    #[test]
    fn host_patterns_allow_one_leading_wildcard_only() {
        assert!(check_host_pattern("a.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        for bad in ["*", "a.*.com", "**.x", "-a.com", "a..b", "", "a_b.com"] {
            assert!(check_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_certificate_paths_resolve_against_the_config_directory() {
        let text = format!("{MINIMAL}tls: {{certificates: [{{cert: a.crt, key: /abs/a.key}}]}}\n");
        let config = parse(&text).unwrap();
        let files = &config.tls.certificates[0];
        assert_eq!(files.cert, Path::new("/etc/sekisho/a.crt"));
        assert_eq!(files.key, Path::new("/abs/a.key"));
    }

    #[test]
    fn embedded_default_is_valid() {
        parse(EMBEDDED_DEFAULT).unwrap();
    }

    /// The problems' `field: message` strings for a file made from `MINIMAL` plus `extra`.
    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_policy_reference_must_name_a_policy_and_needs_an_identity_section() {
        let text = MINIMAL.replace("upstream: app}", "upstream: app, policy: staff}");
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p == "hosts[0].paths[0].policy: no policy named `staff`"),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("identity: ")),
            "{found:?}"
        );
    }

    #[test]
    fn public_and_a_policy_on_one_route_exclude_each_other() {
        let text = format!(
            "{}policies: {{staff: {{allow: [{{group: staff}}]}}}}\nidentity: {{auth_host: auth.example.com}}\n",
            MINIMAL.replace(
                "upstream: app}",
                "upstream: app, policy: staff, public: true}"
            )
        );
        let found = problems(&text);
        assert_eq!(
            found,
            ["hosts[0].paths[0]: `public: true` and a `policy` exclude each other"]
        );
    }

    #[test]
    fn the_auth_host_cannot_also_be_a_route_host_or_a_wildcard() {
        for (auth, expected) in [
            ("app.example.com", "the auth host serves the login itself"),
            ("'*.example.com'", "must be one exact host name"),
        ] {
            let text = format!("{MINIMAL}identity: {{auth_host: {auth}}}\n");
            let found = problems(&text);
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with("identity.auth_host: ") && p.contains(expected)),
                "{auth}: {found:?}"
            );
        }
    }

    #[test]
    fn a_bearer_issuer_needs_an_audience_and_hosted_domains_that_are_domains() {
        let text = format!(
            "{MINIMAL}identity:\n  auth_host: auth.example.com\n  bearer_issuers:\n    - {{issuer: 'https://id.example.com', audiences: [api], hosted_domains: [uniqe.example]}}\n    - {{issuer: 'https://id.other.example', audiences: [], hosted_domains: [ok.example, 'not a domain']}}\n"
        );
        assert_eq!(
            problems(&text),
            [
                "identity.bearer_issuers[1].audiences: name at least one audience (client id) to accept",
                "identity.bearer_issuers[1].hosted_domains[1]: `not a domain` is not a domain name",
            ]
        );
    }

    #[test]
    fn a_webhook_path_cannot_also_be_public() {
        let text = MINIMAL.replace(
            "upstream: app}",
            "upstream: app, public: true, webhook: {secret_file: hook}}",
        );
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("hosts[0].paths[0].webhook: ")),
            "{found:?}"
        );
    }

    #[test]
    fn websocket_origins_must_be_bare_origins_and_errors_name_the_entry() {
        let text = MINIMAL.replace(
            "paths: [{path: /, upstream: app}]",
            "websocket_origins: ['https://tools.example.com']\n    paths: [{path: /, upstream: app}, {path: /ws, upstream: app, websocket_origins: ['https://a.example:8443', 'https://b.example/app']}]",
        );
        let text = text.replace("['https://tools.example.com']", "['tools.example.com']");
        assert_eq!(
            problems(&text),
            [
                "hosts[0].paths[1].websocket_origins[1]: `https://b.example/app`: an origin has no path, query, fragment or user name, not even a final '/'",
                "hosts[0].websocket_origins[0]: `tools.example.com` is not an origin: give scheme, host and optional port (https://host[:port])",
            ]
        );

        let text = text
            .replace("'https://b.example/app'", "'HTTPS://B.example'")
            .replace("['tools.example.com']", "['https://tools.example.com']");
        parse(&text).unwrap();
    }

    #[test]
    fn identity_file_paths_resolve_against_the_config_directory() {
        let text = format!(
            "{MINIMAL}identity:\n  auth_host: auth.example.com\n  session_keys_file: keys\n  providers:\n    - {{name: corp, issuer: 'https://id.example.com', client_id: c, client_secret_file: secret}}\n"
        );
        let config = parse(&text).unwrap();
        let identity = config.identity.unwrap();
        assert_eq!(
            identity.session_keys_file.unwrap(),
            Path::new("/etc/sekisho/keys")
        );
        assert_eq!(
            identity.providers[0].client_secret_file,
            Path::new("/etc/sekisho/secret")
        );
    }
}
