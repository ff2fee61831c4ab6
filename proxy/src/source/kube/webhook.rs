//! `GitHubWebhook` objects: each turns the paths of its host and path that Ingresses of its own
//! namespace serve into webhook paths, where GitHub's `X-Hub-Signature-256` with the Secret it
//! names takes the place of a login. The operator keeps the repositories' webhooks pointing
//! there (`operator/src/github/`); the proxy checks the deliveries.
//!
//! Only the namespace's own paths: a GitHubWebhook cannot turn another namespace's path, which
//! its owner guards with a login, into one that anyone who knows its secret may post to.

use sekisho_api::GitHubWebhook;

use super::object::Key;
use crate::config::{InlineWebhookSecret, PathConfig, WebhookConfig};
use crate::routing::path::config_path;

/// What one GitHubWebhook asks for, with its secret as read.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub key: Key,
    /// Lowercase.
    pub host: String,
    /// In normal form.
    pub path: String,
    /// Where the secret comes from, for messages: `namespace/name` and the key.
    pub source: String,
    pub secret: Result<InlineWebhookSecret, String>,
}

/// A GitHubWebhook that is not served as it asks, for an Event on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub key: Key,
    pub reason: &'static str,
    pub message: String,
}

/// The mark of `object` with its secret as `secret` gives it (the Secret's data under its key:
/// `Ok(None)` when the Secret or the key is missing). `Err` for an object that names no path
/// the proxy can serve.
pub(crate) fn mark(
    object: &GitHubWebhook,
    secret: Result<Option<Vec<u8>>, String>,
) -> Result<Mark, Finding> {
    let key = Key::of(&object.metadata).unwrap_or_else(|| Key::new("", ""));
    let spec = &object.spec;
    let path = config_path(&spec.path).map_err(|problem| Finding {
        key: key.clone(),
        reason: "InvalidPath",
        message: format!("path {:?} cannot be served: {problem}", spec.path),
    })?;
    let source = format!(
        "Secret {}/{} (key {})",
        key.namespace, spec.secret_ref.name, spec.secret_ref.key
    );
    let secret = match secret {
        Ok(Some(bytes)) => InlineWebhookSecret::new(&bytes)
            .map_err(|error| format!("{source}: {}", crate::error_chain(&error))),
        Ok(None) => Err(format!("{source} does not exist or has no such key")),
        Err(error) => Err(format!("{source} cannot be read: {error}")),
    };
    Ok(Mark {
        host: spec.host.to_ascii_lowercase(),
        path,
        source,
        secret,
        key,
    })
}

/// Puts each mark on the paths it names among `paths` (`(host, namespace of the Ingress that
/// serves it, path)`). What a mark cannot be put on is a finding, and its paths keep their
/// login.
pub(crate) fn apply<'a>(
    paths: impl IntoIterator<Item = (&'a str, &'a str, &'a mut PathConfig)>,
    marks: &[Mark],
) -> Vec<Finding> {
    if marks.is_empty() {
        return Vec::new();
    }
    let mut found = vec![false; marks.len()];
    for (host, namespace, path) in paths {
        for (i, mark) in marks.iter().enumerate() {
            if mark.host != host || mark.path != path.path || mark.key.namespace != namespace {
                continue;
            }
            found[i] = true;
            if let Ok(secret) = &mark.secret {
                path.webhook = Some(WebhookConfig {
                    secret_file: mark.source.clone().into(),
                    max_body: sekisho_identity::webhook::DEFAULT_MAX_BODY,
                    inline: Some(secret.clone()),
                });
                // Guarded by the signature alone.
                path.public = None;
                path.policy = None;
                path.bearer = None;
            }
        }
    }
    marks
        .iter()
        .zip(found)
        .filter_map(|(mark, found)| match (&mark.secret, found) {
            (_, false) => Some(Finding {
                key: mark.key.clone(),
                reason: "WebhookRouteNotFound",
                message: format!(
                    "no Ingress of namespace {} serves {}{}: add that path to an Ingress there \
                     (its backend receives the deliveries)",
                    mark.key.namespace, mark.host, mark.path
                ),
            }),
            (Err(problem), true) => Some(Finding {
                key: mark.key.clone(),
                reason: "WebhookSecretUnreadable",
                message: format!(
                    "{problem}; {}{} keeps asking for a login until it can be read",
                    mark.host, mark.path
                ),
            }),
            (Ok(_), true) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::PathType;

    fn object(namespace: &str, host: &str, path: &str) -> GitHubWebhook {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sekisho.dev/v1alpha1",
            "kind": "GitHubWebhook",
            "metadata": {"name": "deploys", "namespace": namespace},
            "spec": {
                "host": host,
                "path": path,
                "repositories": ["org/app"],
                "secretRef": {"name": "hook"},
                "app": {"secretRef": {"name": "app"}},
            },
        }))
        .expect("a GitHubWebhook")
    }

    fn path(at: &str) -> PathConfig {
        serde_yaml_ng::from_str(&format!("{{path: {at}, upstream: u, policy: staff}}"))
            .expect("a path")
    }

    #[test]
    fn only_the_namespaces_own_path_is_turned_into_a_webhook_path() {
        let marks = [mark(
            &object("ci", "hooks.example.org", "/github"),
            Ok(Some(b"s3cret\n".to_vec())),
        )
        .expect("a mark")];
        let (mut ours, mut theirs, mut other_path) =
            (path("/github"), path("/github"), path("/other"));
        let findings = apply(
            [
                ("hooks.example.org", "ci", &mut ours),
                ("hooks.example.org", "tenant", &mut theirs),
                ("hooks.example.org", "ci", &mut other_path),
            ],
            &marks,
        );
        assert!(findings.is_empty(), "{findings:?}");
        let webhook = ours.webhook.as_ref().expect("a webhook path");
        assert_eq!(webhook.inline, marks[0].secret.clone().ok());
        assert_eq!((ours.policy.as_deref(), ours.public), (None, None));
        assert!(theirs.webhook.is_none() && theirs.policy.as_deref() == Some("staff"));
        assert!(other_path.webhook.is_none());
        assert_eq!(ours.path_type, PathType::Prefix);
    }

    #[test]
    fn a_missing_route_or_secret_is_a_finding_and_the_path_keeps_its_login() {
        let marks = [
            mark(&object("ci", "hooks.example.org", "/github"), Ok(None)).expect("a mark"),
            mark(
                &object("ci", "elsewhere.example.org", "/github"),
                Ok(Some(b"x".to_vec())),
            )
            .expect("a mark"),
        ];
        let mut served = path("/github");
        let findings = apply([("hooks.example.org", "ci", &mut served)], &marks);
        let reasons: Vec<&str> = findings.iter().map(|f| f.reason).collect();
        assert_eq!(reasons, ["WebhookSecretUnreadable", "WebhookRouteNotFound"]);
        assert!(
            findings[0]
                .message
                .contains("Secret ci/hook (key secret) does not exist")
        );
        assert!(served.webhook.is_none() && served.policy.as_deref() == Some("staff"));
    }

    #[test]
    fn a_path_not_in_normal_form_or_an_empty_secret_is_refused_with_words_that_fix_it() {
        let dotted =
            mark(&object("ci", "h.example.org", "/a/./github"), Ok(None)).expect_err("refused");
        assert_eq!(dotted.reason, "InvalidPath");
        assert!(
            dotted.message.contains("write `/a/github`"),
            "{}",
            dotted.message
        );
        let upper = mark(
            &object("ci", "Hooks.Example.org", "/github"),
            Ok(Some(b"s".to_vec())),
        )
        .expect("a mark");
        assert_eq!(upper.host, "hooks.example.org");
        let empty = mark(
            &object("ci", "h.example.org", "/"),
            Ok(Some(b"\n".to_vec())),
        )
        .expect("a mark");
        assert!(empty.secret.is_err());
    }
}
