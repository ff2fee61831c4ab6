//! The proxy's configuration file (`NAME-config`, key `config.yaml`): the static settings of
//! `sekisho-proxy --kubernetes` (listeners, identity, limits). Routes come from the API.

use sekisho_api::{ProviderKind, Proxy};
use serde_json::{Value, json};

use super::object::Names;

pub(crate) const FILE_NAME: &str = "config.yaml";
/// Where the pods mount the ConfigMap, the keys Secret and each client secret.
pub(crate) const CONFIG_DIR: &str = "/etc/sekisho/config";
pub(crate) const KEYS_DIR: &str = "/etc/sekisho/keys";
pub(crate) const PROVIDERS_DIR: &str = "/etc/sekisho/providers";

/// The container's ports (unprivileged; the Service maps 443 and 80 onto them).
pub(crate) const HTTPS_PORT: u16 = 8443;
pub(crate) const HTTP_PORT: u16 = 8080;
pub(crate) const ADMIN_PORT: u16 = 9901;
pub(crate) const METRICS_PORT: u16 = 9090;

/// The default of `spec.shutdownGrace`.
pub(crate) const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;

pub(crate) fn shutdown_grace_seconds(proxy: &Proxy) -> u64 {
    proxy
        .spec
        .shutdown_grace
        .map(|d| std::time::Duration::from(d).as_secs())
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECONDS)
}

/// The file's text. `[::]` listens on IPv6 and IPv4 alike (the kernel's default).
pub(crate) fn file(proxy: &Proxy, names: &Names) -> String {
    let providers: Vec<Value> = proxy
        .spec
        .identity_providers
        .iter()
        .map(|p| {
            let mut provider = json!({
                "name": p.name,
                "kind": match p.kind {
                    ProviderKind::Generic => "generic",
                    ProviderKind::Google => "google",
                },
                "client_id": p.client_id,
                "client_secret_file": format!("{PROVIDERS_DIR}/{}/{}", p.name, p.client_secret_ref.key),
            });
            if let Some(display_name) = &p.display_name {
                provider["display_name"] = json!(display_name);
            }
            if let Some(issuer) = &p.issuer {
                provider["issuer"] = json!(issuer);
            }
            if !p.hosted_domains.is_empty() {
                provider["hosted_domains"] = json!(p.hosted_domains);
            }
            if let Some(claim) = &p.groups_claim {
                provider["groups_claim"] = json!(claim);
            }
            if !p.scopes.is_empty() {
                let mut scopes = vec!["openid".to_owned()];
                scopes.extend(p.scopes.iter().filter(|s| *s != "openid").cloned());
                provider["scopes"] = json!(scopes);
            }
            provider
        })
        .collect();
    let config = json!({
        "listen": {
            "https": format!("[::]:{HTTPS_PORT}"),
            "http": format!("[::]:{HTTP_PORT}"),
            "admin": format!("[::]:{ADMIN_PORT}"),
            "metrics": format!("[::]:{METRICS_PORT}"),
            "redirect_port": 443,
        },
        "limits": {"shutdown_grace": format!("{}s", shutdown_grace_seconds(proxy))},
        "identity": {
            "auth_host": super::object::auth_host(proxy),
            "session_keys_file": format!("{KEYS_DIR}/{}", crate::keys::SESSION_KEYS),
            "signing_keys_file": format!("{KEYS_DIR}/{}", crate::keys::SIGNING_KEYS),
            "providers": providers,
        },
    });
    let body = serde_yaml_ng::to_string(&config).unwrap_or_default();
    format!(
        "# Written by sekisho-operator from the Proxy {}/{}: edit the Proxy, not this file.\n{body}",
        names.namespace, names.name
    )
}
