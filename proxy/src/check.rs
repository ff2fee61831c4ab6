//! `sekisho-proxy check-config`: everything start-up would check, without serving, and every
//! problem at once. The file's shape and references (see [`crate::config`]); then each file it
//! names, read and parsed (certificates and keys, client secrets, session and signing keys,
//! webhook secrets, upstream CAs); then the routing snapshot start-up would build; and with
//! `online`, each identity provider's discovery document and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError, Problem, locate_problems, located};

/// What a configuration file is, when it is good.
#[derive(Debug)]
pub struct CheckedConfig {
    pub config: Config,
    /// Each served certificate's first name and expiry (RFC 3339).
    pub certificates: Vec<(String, String)>,
}

/// How long `online` waits for each provider.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks `file` (see the module documentation). On failure, every problem as
/// `file:line: field: message`, in the order of the file.
pub fn check_config(file: &Path, online: bool) -> Result<CheckedConfig, Vec<String>> {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(ConfigError::Invalid { path, problems }) => {
            return Err(problems.iter().map(|p| located(&path, p)).collect());
        }
        Err(error) => return Err(vec![crate::error_chain(&error)]),
    };
    let mut problems = Vec::new();
    let mut certificates = Vec::new();
    for (i, files) in config.tls.certificates.iter().enumerate() {
        match crate::frontdoor::tls::load_certificate(files) {
            Ok(cert) => certificates.push((cert.label().to_owned(), expiry(cert.not_after))),
            Err(error) => problems.push(file_problem(format!("tls.certificates[{i}]"), &error)),
        }
    }
    for (name, upstream) in &config.upstreams {
        if upstream.tls.ca.is_some()
            && let Err(error) = crate::frontdoor::tls::client_config(&upstream.tls, &[])
        {
            problems.push(file_problem(format!("upstreams.{name}.tls.ca"), &error));
        }
    }
    if let Some(identity) = &config.identity {
        for (i, provider) in identity.providers.iter().enumerate() {
            if let Err(error) =
                sekisho_identity::oidc::read_client_secret(&provider.client_secret_file)
            {
                problems.push(file_problem(
                    format!("identity.providers[{i}].client_secret_file"),
                    &error,
                ));
            }
        }
        if let Some(path) = &identity.session_keys_file
            && let Err(error) = crate::auth::session::SessionKeys::load(path)
        {
            problems.push(file_problem("identity.session_keys_file".into(), &error));
        }
        if let Some(path) = &identity.signing_keys_file
            && let Err(error) = sekisho_identity::signing::SigningKeys::load(path)
        {
            problems.push(file_problem("identity.signing_keys_file".into(), &error));
        }
    }
    for (i, host) in config.hosts.iter().enumerate() {
        for (j, path) in host.paths.iter().enumerate() {
            if let Some(webhook) = path.webhook.as_ref().filter(|w| w.inline.is_none())
                && let Err(error) =
                    sekisho_identity::webhook::WebhookSecret::load(&webhook.secret_file)
            {
                problems.push(file_problem(
                    format!("hosts[{i}].paths[{j}].webhook.secret_file"),
                    &error,
                ));
            }
        }
    }
    if problems.is_empty() {
        let metrics = crate::observe::metrics::Metrics::default();
        if let Err(error) = crate::routing::snapshot::Snapshot::build(&config, None, 1, &metrics) {
            problems.push(Problem::new("", crate::error_chain(&error)));
        }
    }
    if online && problems.is_empty() {
        problems.extend(check_providers(&config));
    }
    if problems.is_empty() {
        return Ok(CheckedConfig {
            config,
            certificates,
        });
    }
    let text = std::fs::read_to_string(file).unwrap_or_default();
    locate_problems(&text, &mut problems);
    let file = PathBuf::from(file);
    Err(problems.iter().map(|p| located(&file, p)).collect())
}

fn file_problem(field: String, error: &(dyn std::error::Error + 'static)) -> Problem {
    Problem::new(field, crate::error_chain(error))
}

fn expiry(not_after: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Each provider's discovery document and keys, fetched as the first login would.
fn check_providers(config: &Config) -> Vec<Problem> {
    let Some(identity) = &config.identity else {
        return Vec::new();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return vec![Problem::new("", format!("cannot start a runtime: {error}"))],
    };
    let http =
        match sekisho_identity::http::HttpClient::new(&sekisho_identity::http::HttpClientConfig {
            allow_plain_http: identity.dangerous_allow_http_issuers,
            ..Default::default()
        }) {
            Ok(http) => http,
            Err(error) => return vec![Problem::new("identity", crate::error_chain(&error))],
        };
    let mut problems = Vec::new();
    for (i, provider) in identity.providers.iter().enumerate() {
        let discovered = runtime.block_on(tokio::time::timeout(
            ONLINE_TIMEOUT,
            sekisho_identity::oidc::Provider::discover(provider.clone(), &http),
        ));
        let message = match discovered {
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => crate::error_chain(&error),
            Err(_) => format!(
                "{} did not answer within {ONLINE_TIMEOUT:?}",
                provider.issuer
            ),
        };
        problems.push(Problem::new(format!("identity.providers[{i}]"), message));
    }
    problems
}
