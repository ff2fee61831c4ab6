//! The `upstreams:` section: where routes send requests, and how.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::problem::{Names, Problems, is_name};

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

pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

pub(crate) fn default_response_header_timeout() -> Duration {
    Duration::from_secs(60)
}

impl UpstreamConfig {
    pub(crate) fn validate(&self, name: &str, names: &Names<'_>, problems: &mut Problems) {
        let field = format!("upstreams.{name}");
        if !is_name(name) {
            problems.add(
                field.clone(),
                "names use lowercase letters, digits, '-', '_' and '.'",
            );
        }
        if self.endpoints.is_empty() {
            problems.add(format!("{field}.endpoints"), "needs at least one endpoint");
        }
        let schemes: Vec<bool> = self.endpoints.iter().map(Endpoint::is_https).collect();
        if schemes.windows(2).any(|w| w[0] != w[1]) {
            problems.add(
                format!("{field}.endpoints"),
                "mixes http:// and https:// endpoints",
            );
        }
        if self.connect_timeout.is_zero() || self.response_header_timeout.is_zero() {
            problems.add(field.clone(), "timeouts must be longer than zero");
        }
        if self.ejection.consecutive_failures == 0 {
            problems.add(
                format!("{field}.ejection.consecutive_failures"),
                "must be at least 1",
            );
        }
        let any_https = schemes.iter().any(|&s| s);
        if let Some(agent) = &self.agent {
            if !names.agents.contains(agent.as_str()) {
                problems.add(
                    format!("{field}.agent"),
                    format!("no agent named `{agent}` under `agents`"),
                );
            }
            if any_https {
                problems.add(
                    format!("{field}.endpoints"),
                    "an agent reaches its endpoints over plain http://",
                );
            }
        }
        let tls = &self.tls;
        if !any_https
            && (tls.ca.is_some() || tls.server_name.is_some() || tls.dangerous_skip_verify)
        {
            problems.add(
                format!("{field}.tls"),
                "TLS settings need https:// endpoints",
            );
        }
        if tls.dangerous_skip_verify && tls.ca.is_some() {
            problems.add(
                format!("{field}.tls"),
                "ca and dangerous_skip_verify exclude each other",
            );
        }
        if let Some(name) = &tls.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            problems.add(
                format!("{field}.tls.server_name"),
                format!("`{name}` is not a valid DNS name or IP address"),
            );
        }
    }
}
