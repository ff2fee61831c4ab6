//! The `identity:` section: how people log in, how long sessions last, and which tokens are
//! accepted.

use std::path::PathBuf;
use std::time::Duration;

use sekisho_identity::bearer::BearerIssuerConfig;
use sekisho_identity::oidc::ProviderConfig;
use serde::Deserialize;

use super::host::HostConfig;
use super::problem::{Problems, check_host_pattern};

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

fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_session_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl IdentityConfig {
    pub(crate) fn validate(&self, hosts: &[HostConfig], problems: &mut Problems) {
        if let Err(message) = check_host_pattern(&self.auth_host).and_then(|()| {
            match self.auth_host.starts_with("*.") {
                true => Err("must be one exact host name".to_owned()),
                false => Ok(()),
            }
        }) {
            problems.add("identity.auth_host", message);
        } else if hosts
            .iter()
            .any(|h| h.host.eq_ignore_ascii_case(&self.auth_host))
        {
            problems.add(
                "identity.auth_host",
                "the auth host serves the login itself; it cannot also be a route host",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            if !names.insert(provider.name.as_str()) {
                problems.add(
                    format!("identity.providers[{i}].name"),
                    format!("`{}` is listed twice", provider.name),
                );
            }
        }
        for (i, issuer) in self.bearer_issuers.iter().enumerate() {
            let field = format!("identity.bearer_issuers[{i}]");
            if issuer.audiences.is_empty() {
                problems.add(
                    format!("{field}.audiences"),
                    "name at least one audience (client id) to accept",
                );
            }
            for (j, domain) in issuer.hosted_domains.iter().enumerate() {
                if !sekisho_identity::oidc::is_hosted_domain(domain) {
                    problems.add(
                        format!("{field}.hosted_domains[{j}]"),
                        format!("`{domain}` is not a domain name"),
                    );
                }
            }
        }
        if self.session_idle_timeout.is_zero() || self.session_lifetime.is_zero() {
            problems.add(
                "identity",
                "session_lifetime and session_idle_timeout must be positive",
            );
        }
    }
}
