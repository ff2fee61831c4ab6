//! The agent's configuration: a YAML file and command-line flags, parsed straight into typed
//! [`Settings`].
//!
//! Parsing rejects unknown fields; validation checks what serde cannot (names, URLs, targets,
//! ranges) and reports every problem at once, each naming the file and the field. Flags are
//! parsed into the same types by the command line, so they cannot be invalid here; they replace
//! (`--name`, `--key`, `--ca`) or extend (`--proxy`, `--allow-tcp`, `--allow-http`) the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::Deserialize;

use crate::target::{AllowList, Target};

/// The most connections per proxy a configuration may ask for.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the file", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {}", join_problems(.problems))]
    Invalid {
        /// The file, or "the command line" when there is none.
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The validation problems, if validation is what failed.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
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

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The file as written. Everything is optional here so that flags can fill it in; validation
/// decides what is missing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The agent's name, as registered under `agents:` in the proxy's configuration.
    #[serde(default)]
    pub name: Option<String>,
    /// The private key (PKCS#8 PEM, from `sekisho-agent init`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub proxies: Vec<ProxyConfig>,
    /// Trust this CA (PEM) for the proxies instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Live connections kept to each proxy.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// How long dialing a target (or a proxy's TCP port) may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long open streams may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub allow: AllowConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub url: String,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    #[serde(default)]
    pub tcp: Vec<String>,
    #[serde(default)]
    pub http: Vec<String>,
}

fn default_connections() -> usize {
    1
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Reads and parses `path` (not yet validated: see [`Config::settings`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::empty());
        }
        serde_yaml_ng::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }

    /// No file: every field at its default, for flags alone.
    pub fn empty() -> Self {
        Self {
            connections: default_connections(),
            connect_timeout: default_connect_timeout(),
            shutdown_grace: default_shutdown_grace(),
            ..Self::default()
        }
    }

    /// Validates the file (read from `path`, if any) with `overrides` applied. Relative paths in
    /// the file resolve against its directory; those in flags are taken as given.
    pub fn settings(
        self,
        path: Option<&Path>,
        overrides: Overrides,
    ) -> Result<Settings, ConfigError> {
        let base = path
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        let resolve = |file: PathBuf| {
            if file.is_relative() {
                base.join(file)
            } else {
                file
            }
        };
        let mut problems = Vec::new();

        let name = match overrides.name.or(self.name) {
            None => {
                problems.push(Problem::new("name", "missing (set it here or pass --name)"));
                String::new()
            }
            Some(name) if !sekisho_wire::is_name(&name) => {
                problems.push(Problem::new(
                    "name",
                    format!("`{name}` is not a name: 1 to 63 of a-z, 0-9, `-`, `_` and `.`"),
                ));
                name
            }
            Some(name) => name,
        };

        let key_file = match (overrides.key_file, self.key_file) {
            (Some(file), _) => file,
            (None, Some(file)) => resolve(file),
            (None, None) => {
                problems.push(Problem::new(
                    "key_file",
                    "missing (set it here or pass --key)",
                ));
                PathBuf::new()
            }
        };

        let mut proxies = Vec::new();
        let written = self.proxies.len();
        for (i, proxy) in self.proxies.into_iter().enumerate() {
            let url = proxy
                .url
                .parse::<ProxyUrl>()
                .map_err(|error| Problem::new(format!("proxies[{i}].url"), error.to_string()));
            let address = proxy
                .address
                .as_deref()
                .map(Target::from_str)
                .transpose()
                .map_err(|error| Problem::new(format!("proxies[{i}].address"), error.to_string()));
            match (url, address) {
                (Ok(url), Ok(address)) => proxies.push(Proxy { url, address }),
                (url, address) => problems.extend(url.err().into_iter().chain(address.err())),
            }
        }
        proxies.extend(overrides.proxies);
        if proxies.is_empty() && written == 0 {
            problems.push(Problem::new(
                "proxies",
                "at least one proxy is needed (set it here or pass --proxy)",
            ));
        }

        let ca_file = overrides.ca_file.or(self.ca_file.map(resolve));

        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            problems.push(Problem::new(
                "connections",
                format!("must be from 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if self.connect_timeout.is_zero() {
            problems.push(Problem::new("connect_timeout", "must be more than 0"));
        }

        let tcp = targets("allow.tcp", &self.allow.tcp, &mut problems);
        let http = targets("allow.http", &self.allow.http, &mut problems);
        let mut allow = AllowList::new(tcp, http);
        allow.extend_tcp(overrides.allow_tcp);
        allow.extend_http(overrides.allow_http);

        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: path.map_or_else(
                    || "the command line".to_owned(),
                    |p| p.display().to_string(),
                ),
                problems,
            });
        }
        Ok(Settings {
            name,
            key_file,
            proxies,
            ca_file,
            connections: self.connections,
            connect_timeout: self.connect_timeout,
            shutdown_grace: self.shutdown_grace,
            allow,
        })
    }
}

fn targets(field: &str, texts: &[String], problems: &mut Vec<Problem>) -> Vec<Target> {
    let mut targets = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match text.parse::<Target>() {
            Ok(target) => targets.push(target),
            Err(error) => problems.push(Problem::new(format!("{field}[{i}]"), error.to_string())),
        }
    }
    targets
}

/// What flags change in the file; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub key_file: Option<PathBuf>,
    /// Added after the file's proxies.
    pub proxies: Vec<Proxy>,
    pub ca_file: Option<PathBuf>,
    pub allow_tcp: Vec<Target>,
    pub allow_http: Vec<Target>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub name: String,
    pub key_file: PathBuf,
    pub proxies: Vec<Proxy>,
    pub ca_file: Option<PathBuf>,
    /// Per proxy, from 1 to [`MAX_CONNECTIONS`].
    pub connections: usize,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub allow: AllowList,
}

/// One proxy to keep connections to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub url: ProxyUrl,
    /// Dial this instead of resolving the URL's host; SNI and `Host` still come from the URL.
    pub address: Option<Target>,
}

impl Proxy {
    /// Where to open the TCP connection.
    pub fn dial_target(&self) -> Target {
        self.address
            .clone()
            .unwrap_or_else(|| Target::new(self.url.host(), self.url.port()))
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(address) => write!(f, "{} (at {address})", self.url),
            None => write!(f, "{}", self.url),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("`{0}` is not a URL")]
    NotUrl(String),
    #[error("`{0}`: only https:// proxy URLs are supported")]
    NotHttps(String),
    #[error("`{0}`: a proxy URL is https://host[:port] with no user, path or query")]
    Extra(String),
    #[error("`{0}`: the host is not a DNS name or an IP address")]
    BadHost(String),
}

/// A proxy's `https://host[:port]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// As written, lowercased; IPv6 literals keep their brackets.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl ProxyUrl {
    /// The host as in the URL (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header value: the host, and the port when it is not 443. The credential is
    /// signed for this too (the proxy ignores the port).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The name the TLS handshake sends (SNI) and checks the certificate against.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri = http::Uri::from_str(text).map_err(|_| ProxyUrlError::NotUrl(text.into()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ProxyUrlError::NotHttps(text.into()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ProxyUrlError::NotUrl(text.into()))?;
        let path_is_empty = matches!(uri.path(), "" | "/");
        if authority.as_str().contains('@') || !path_is_empty || uri.query().is_some() {
            return Err(ProxyUrlError::Extra(text.into()));
        }
        let host = authority.host().to_ascii_lowercase();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        let server_name = ServerName::try_from(bare.to_owned())
            .map_err(|_| ProxyUrlError::BadHost(text.into()))?;
        let port = match authority.port() {
            None => 443,
            Some(port) if port.as_u16() != 0 => port.as_u16(),
            Some(_) => return Err(ProxyUrlError::NotUrl(text.into())),
        };
        Ok(Self {
            host,
            port,
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(kind: &str) -> Vec<(PathBuf, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(kind);
        let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                (path, text)
            })
            .collect();
        files.sort();
        files
    }

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        let path = Path::new("/etc/sekisho-agent/config.yaml");
        Config::parse(text, path)?.settings(Some(path), Overrides::default())
    }

    #[test]
    fn every_valid_fixture_is_accepted() {
        let files = fixtures("valid");
        assert!(files.len() >= 3, "the valid fixture set is nearly empty");
        for (path, text) in files {
            let config = Config::parse(&text, &path).unwrap();
            if let Err(error) = config.settings(Some(&path), Overrides::default()) {
                panic!("{error}");
            }
        }
    }

    /// Each invalid fixture starts with `# error: <text>`, a part of the message it must give.
    #[test]
    fn every_invalid_fixture_is_refused_with_the_message_it_names() {
        let files = fixtures("invalid");
        assert!(files.len() >= 8, "the invalid fixture set is nearly empty");
        for (path, text) in files {
            let expected = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("# error: "))
                .unwrap_or_else(|| panic!("{}: no `# error:` line", path.display()));
            let error = Config::parse(&text, &path)
                .and_then(|config| config.settings(Some(&path), Overrides::default()))
                .expect_err(&path.display().to_string());
            let message = error.to_string();
            assert!(
                message.contains(expected) && message.starts_with(&*path.to_string_lossy()),
                "{}: {message:?} does not say {expected:?}",
                path.display()
            );
        }
    }

    #[test]
    fn the_example_in_the_readme_shape_becomes_typed_settings() {
        let settings = settings(
            "name: nas\n\
             key_file: agent.key\n\
             proxies:\n  - url: https://Proxy.Example.com\n    address: 192.0.2.10:443\n  \
             - url: https://other.example:8443/\n\
             ca_file: /etc/ca.pem\n\
             connections: 2\n\
             connect_timeout: 2s 500ms\n\
             allow:\n  tcp: [\"127.0.0.1:22\"]\n  http: [\"LOCALHOST:8080\"]\n",
        )
        .unwrap();
        assert_eq!(settings.name, "nas");
        assert_eq!(settings.key_file, Path::new("/etc/sekisho-agent/agent.key"));
        assert_eq!(settings.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(settings.connections, 2);
        assert_eq!(settings.connect_timeout, Duration::from_millis(2500));
        assert_eq!(settings.shutdown_grace, Duration::from_secs(10));
        let [first, second] = &settings.proxies[..] else {
            panic!("{:?}", settings.proxies)
        };
        assert_eq!(first.url.to_string(), "https://proxy.example.com");
        assert_eq!(first.url.authority(), "proxy.example.com");
        assert_eq!(first.dial_target().to_string(), "192.0.2.10:443");
        assert_eq!(second.url.authority(), "other.example:8443");
        assert_eq!(second.dial_target().to_string(), "other.example:8443");
        assert!(settings.allow.allows_tcp(&"127.0.0.1:22".parse().unwrap()));
        assert!(
            settings
                .allow
                .allows_http(&"localhost:8080".parse().unwrap())
        );
    }

    #[test]
    fn all_problems_are_reported_at_once_with_their_fields() {
        let error = settings(
            "name: NAS\nproxies: [{url: \"http://p.example\"}]\nconnections: 0\n\
             allow: {tcp: [\"nope\"], http: [\"h:1\", \"h\"]}\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = error.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "key_file",
                "proxies[0].url",
                "connections",
                "allow.tcp[0]",
                "allow.http[1]"
            ]
        );
        assert!(
            error
                .to_string()
                .starts_with("/etc/sekisho-agent/config.yaml: name: ")
        );
    }

    #[test]
    fn flags_alone_make_a_configuration() {
        let settings = Config::empty()
            .settings(
                None,
                Overrides {
                    name: Some("nas".into()),
                    key_file: Some("rel/agent.key".into()),
                    proxies: vec![Proxy {
                        url: "https://p.example".parse().unwrap(),
                        address: None,
                    }],
                    allow_tcp: vec!["127.0.0.1:22".parse().unwrap()],
                    ..Overrides::default()
                },
            )
            .unwrap();
        assert_eq!(settings.key_file, Path::new("rel/agent.key"));
        assert_eq!(settings.connections, 1);
        assert_eq!(settings.connect_timeout, Duration::from_secs(5));
        assert!(settings.allow.allows_tcp(&"127.0.0.1:22".parse().unwrap()));

        let error = Config::empty()
            .settings(None, Overrides::default())
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("the command line: name: missing"),
            "{message}"
        );
        assert!(
            message.contains("--key") && message.contains("--proxy"),
            "{message}"
        );
    }

    #[test]
    fn flags_replace_scalars_and_extend_lists() {
        let path = Path::new("/etc/a/config.yaml");
        let config = Config::parse(
            "name: nas\nkey_file: k\nproxies: [{url: \"https://a.example\"}]\n\
             allow: {tcp: [\"127.0.0.1:22\"]}\n",
            path,
        )
        .unwrap();
        let settings = config
            .settings(
                Some(path),
                Overrides {
                    name: Some("other".into()),
                    key_file: Some("/k2".into()),
                    proxies: vec![Proxy {
                        url: "https://b.example".parse().unwrap(),
                        address: Some("127.0.0.1:9".parse().unwrap()),
                    }],
                    ca_file: Some("ca.pem".into()),
                    allow_tcp: vec!["127.0.0.1:23".parse().unwrap()],
                    allow_http: vec!["127.0.0.1:80".parse().unwrap()],
                },
            )
            .unwrap();
        assert_eq!(settings.name, "other");
        assert_eq!(settings.key_file, Path::new("/k2"));
        assert_eq!(settings.ca_file.as_deref(), Some(Path::new("ca.pem")));
        let urls: Vec<String> = settings.proxies.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            urls,
            ["https://a.example", "https://b.example (at 127.0.0.1:9)"]
        );
        assert_eq!(settings.allow.tcp(), ["127.0.0.1:22", "127.0.0.1:23"]);
        assert_eq!(settings.allow.http(), ["127.0.0.1:80"]);
    }

    #[test]
    fn proxy_urls_are_https_origins_only() {
        let url: ProxyUrl = "https://[::1]:8443".parse().unwrap();
        assert_eq!(url.host(), "[::1]");
        assert_eq!(url.authority(), "[::1]:8443");
        assert!(matches!(url.server_name(), ServerName::IpAddress(_)));
        let url: ProxyUrl = "https://p.example:443/".parse().unwrap();
        assert_eq!(url.to_string(), "https://p.example");
        for (bad, what) in [
            ("http://p.example", "only https://"),
            ("p.example", "only https://"),
            ("https://p.example/agent", "no user, path or query"),
            ("https://u@p.example", "no user, path or query"),
            ("https://p.example/?a=b", "no user, path or query"),
            ("https://p.example:0", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let error = bad.parse::<ProxyUrl>().unwrap_err().to_string();
            assert!(error.contains(what), "{bad}: {error}");
        }
    }
}
