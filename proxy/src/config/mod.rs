//! The proxy's configuration file: parsed straight into typed values, then validated.
//!
//! Parsing rejects unknown fields; validation checks what serde cannot (references between
//! sections, host and path syntax, endpoint URLs). Every error names the file, the field and the
//! problem, so an operator can fix an edit without guessing. Each section is a module that
//! validates itself; this one reads the file and checks what crosses sections. Configuration
//! is data: these modules may use the pure parts of the proxy (`routing::path`,
//! `routing::table`, `policy`) and nothing that serves requests.

mod host;
mod identity;
mod listen;
pub(crate) mod origin;
pub(crate) mod problem;
mod read;
mod tls;
pub(crate) mod tunnel;
pub(crate) mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

pub(crate) use host::{HostConfig, InlineWebhookSecret, PathConfig, WebhookConfig};
pub use identity::IdentityConfig;
pub(crate) use listen::{HttpMode, Limits, Listen};
pub use problem::Problem;
use problem::{Names, Problems};
pub(crate) use tls::{CertificateFiles, Tls};
pub(crate) use tunnel::{AgentConfig, TunnelConfig};
pub(crate) use upstream::{Ejection, UpstreamConfig, UpstreamProtocol, UpstreamTls};

use crate::policy::AccessPolicy;

/// The default configuration used when no `--config` is given: the local example.
pub(crate) const EMBEDDED_DEFAULT: &str = include_str!("../../../deploy/examples/local.yaml");

/// The static settings of Kubernetes mode when no `--config` is given: listeners on every
/// address (the pod's), plain HTTP redirecting to HTTPS (and serving ACME challenges), no login.
pub(crate) const KUBERNETES_DEFAULT: &str = "
listen:
  https: '[::]:8443'
  http: '[::]:8080'
  admin: '[::]:9901'
";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What the configuration names could not be set up (a key file, a certificate).
    #[error("{path}: {message}")]
    Setup { path: PathBuf, message: String },
    /// Every problem, each as `file:line: field: message` (`file: field: message` when the
    /// line is not known), separated by `; `.
    #[error("{}", join_problems(path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn join_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| located(path, problem))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) use read::locate as locate_problems;

/// `file:line: field: message`, as compilers write it.
pub(crate) fn located(path: &Path, problem: &Problem) -> String {
    match problem.line {
        Some(line) => format!("{}:{line}: {problem}", path.display()),
        None => format!("{}: {problem}", path.display()),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    /// Worker threads serving traffic, each with its own runtime and listening socket.
    #[serde(default = "listen::default_workers")]
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
    /// Agents that may connect, by name; see [`tunnel`].
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Byte-stream routes for `sekisho tunnel`; see [`tunnel`].
    #[serde(default)]
    pub tunnels: Vec<TunnelConfig>,
    /// The HTTPS listeners (`IP:PORT`) of this gate's replicas, as they reach one another: a
    /// tunnel stream for an agent connected to none of this replica's links is relayed through
    /// them (this replica's own address may be listed too). Kubernetes mode finds its replicas
    /// through Leases instead. See `docs/tunnels.md`.
    #[serde(default)]
    pub replicas: Vec<std::net::SocketAddr>,
    /// ACME HTTP-01 challenge routes (cert-manager's solvers): public, answered on the
    /// plain-HTTP listener alone, whatever its `http_mode` (see
    /// [`crate::routing::snapshot::Snapshot::acme`]). Their upstreams are entries of
    /// `upstreams`. A route source fills them (Kubernetes mode); the file cannot, so a typo in
    /// a file never serves anything without login on plain HTTP.
    #[serde(skip)]
    pub(crate) acme_challenges: Vec<HostConfig>,
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
        let invalid = |mut problems: Vec<Problem>| {
            read::locate(text, &mut problems);
            ConfigError::Invalid {
                path: origin.to_owned(),
                problems,
            }
        };
        let mut config: Self = read::read(text).map_err(invalid)?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        config.resolve_paths(base);
        config.canonicalize_request_paths();
        Ok(config)
    }

    /// A problem for each section that Kubernetes mode takes from the API instead.
    pub(crate) fn route_sections(&self) -> Vec<Problem> {
        let taken = "comes from the Kubernetes API in Kubernetes mode (Ingresses, Secrets and \
                     Sekisho's resources): leave it out of the file";
        let mut problems = Vec::new();
        for (field, given) in [
            ("hosts", !self.hosts.is_empty()),
            ("upstreams", !self.upstreams.is_empty()),
            ("policies", !self.policies.is_empty()),
            ("agents", !self.agents.is_empty()),
            ("tunnels", !self.tunnels.is_empty()),
            ("tls.certificates", !self.tls.certificates.is_empty()),
        ] {
            if given {
                problems.push(Problem::new(field, taken));
            }
        }
        problems
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
        let mut problems = Problems::default();
        let names = Names {
            upstreams: self.upstreams.keys().map(String::as_str).collect(),
            policies: self.policies.keys().map(String::as_str).collect(),
            agents: self.agents.keys().map(String::as_str).collect(),
            identity: self.identity.is_some(),
        };
        listen::validate_workers(self.workers, &mut problems);
        self.limits.validate(&mut problems);
        self.listen.validate(&mut problems);
        for (name, upstream) in &self.upstreams {
            upstream.validate(name, &names, &mut problems);
        }
        let mut seen_hosts = std::collections::HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            host.validate(
                &format!("hosts[{i}]"),
                &names,
                &mut seen_hosts,
                &mut problems,
            );
        }
        problems.extend(crate::policy::validate_policies(&self.policies));
        tunnel::validate_agents(&self.agents, &mut problems);
        tunnel::validate_tunnels(&self.tunnels, &names, &mut problems);
        match &self.identity {
            Some(identity) => identity.validate(&self.hosts, &mut problems),
            None if self.hosts.iter().any(HostConfig::is_guarded) => problems.add(
                "identity",
                "routes name policies, but no `identity` section says how people log in",
            ),
            None => {}
        }
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::problem::check_host_pattern;
    use super::upstream::Endpoint;
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
        assert_eq!(
            config.hosts[0].paths[0].path_type,
            crate::routing::table::PathType::Prefix
        );
        assert_eq!(config.upstreams["app"].endpoints[0].port(), 3000);
    }

    #[test]
    fn unknown_field_is_an_error_that_names_the_file_and_the_field() {
        let text = MINIMAL.replace("paths: [{path: /", "paths: [{pth: /, path: /");
        let message = parse(&text).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "test.yaml:7: hosts[0].paths[0].pth: `pth` is not a field here (did you mean `path`?)"
            ),
            "{message}"
        );
    }

    #[test]
    fn dangling_upstream_reference_names_the_field() {
        let text = MINIMAL.replace("upstream: app", "upstream: nope");
        let message = parse(&text).unwrap_err().to_string();
        assert_eq!(
            message,
            "test.yaml:7: hosts[0].paths[0].upstream: no upstream named `nope`"
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
