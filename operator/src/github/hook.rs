//! What a repository's webhook should be, and what to do about the webhooks it has: a pure
//! decision, tested without GitHub.

use std::fmt;

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use serde_json::{Value, json};

/// The webhook secret. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WebhookSecret(String);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// A SHA-256 of the secret, kept in memory only, to tell whether a hook already has it
    /// (GitHub never shows a hook's secret).
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(digest(&SHA256, self.0.as_bytes()).as_ref());
        out
    }
}

/// The webhook secret held in a Secret's value: UTF-8 text (GitHub takes a string), not empty,
/// without one trailing newline (`\n` or `\r\n`), which `kubectl create secret --from-file`
/// keeps from the file. The proxy reads the Secret by the same rule
/// (`sekisho_identity::webhook::WebhookSecret::stored`), so both sign with the same bytes.
pub(crate) fn secret_from_bytes(bytes: &[u8]) -> Option<WebhookSecret> {
    let bytes = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.is_empty()).then(|| WebhookSecret(text.to_owned()))
}

/// The webhook every repository of a GitHubWebhook should have.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub(crate) url: String,
    /// Sorted, without duplicates.
    pub(crate) events: Vec<String>,
    pub(crate) secret: WebhookSecret,
}

impl Wanted {
    pub(crate) fn new(url: String, events: &[String], secret: WebhookSecret) -> Self {
        let mut events = events.to_vec();
        events.sort();
        events.dedup();
        Self {
            url,
            events,
            secret,
        }
    }

    /// The body of a create or update request: the whole configuration, so that an update
    /// leaves nothing of an older one (GitHub replaces `config` as a whole).
    pub(crate) fn body(&self) -> Value {
        json!({
            "active": true,
            "events": self.events,
            "config": {
                "url": self.url,
                "content_type": "json",
                "insecure_ssl": "0",
                "secret": self.secret.0,
            },
        })
    }
}

/// A webhook as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct RemoteHook {
    pub(crate) id: i64,
    #[serde(default)]
    pub(crate) active: bool,
    #[serde(default)]
    pub(crate) events: Vec<String>,
    #[serde(default)]
    pub(crate) config: RemoteConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct RemoteConfig {
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) content_type: Option<String>,
    /// `"0"` or `"1"`; GitHub has also written it as a number.
    #[serde(default)]
    pub(crate) insecure_ssl: Option<Value>,
}

/// What to do about one repository's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// None delivers to the URL: create one.
    Create,
    /// This one delivers to the URL but differs (or may have another secret): update it.
    Update(i64),
    /// This one is as wanted.
    Keep(i64),
}

/// The plan for a repository whose webhooks are `hooks`. The webhook is the one whose URL is
/// the wanted one, preferring an id the status already records (`known`). `has_secret` says
/// whether the operator knows it gave a webhook the wanted secret.
pub(crate) fn plan(
    hooks: &[RemoteHook],
    wanted: &Wanted,
    known: &[i64],
    has_secret: impl Fn(i64) -> bool,
) -> Plan {
    let delivering = |h: &&RemoteHook| h.config.url.as_deref() == Some(wanted.url.as_str());
    let Some(hook) = hooks
        .iter()
        .filter(delivering)
        .find(|h| known.contains(&h.id))
        .or_else(|| hooks.iter().find(delivering))
    else {
        return Plan::Create;
    };
    let mut events = hook.events.clone();
    events.sort();
    events.dedup();
    let insecure = match &hook.config.insecure_ssl {
        Some(Value::String(s)) => s != "0",
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        _ => false,
    };
    let same = hook.active
        && events == wanted.events
        && hook.config.content_type.as_deref() == Some("json")
        && !insecure
        && has_secret(hook.id);
    if same {
        Plan::Keep(hook.id)
    } else {
        Plan::Update(hook.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://hooks.example.com/github";

    fn wanted() -> Wanted {
        Wanted::new(
            URL.into(),
            &["push".into(), "release".into(), "push".into()],
            WebhookSecret("s3cret".into()),
        )
    }

    fn hook(id: i64, url: &str, events: &[&str]) -> RemoteHook {
        RemoteHook {
            id,
            active: true,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            config: RemoteConfig {
                url: Some(url.into()),
                content_type: Some("json".into()),
                insecure_ssl: Some(json!("0")),
            },
        }
    }

    #[test]
    fn a_secret_loses_one_trailing_newline_and_must_be_text() {
        let text = |bytes: &[u8]| secret_from_bytes(bytes).map(|s| s.0);
        assert_eq!(text(b"abc\n"), Some("abc".to_owned()));
        assert_eq!(text(b"abc\r\n"), Some("abc".to_owned()));
        assert_eq!(text(b"abc\n\n"), Some("abc\n".to_owned()));
        assert_eq!(text(b" abc "), Some(" abc ".to_owned()));
        assert_eq!(text(b"\n"), None);
        assert_eq!(text(b""), None);
        assert_eq!(text(&[0xff, 0xfe]), None);
    }

    #[test]
    fn no_hook_to_the_url_is_created() {
        let hooks = [hook(1, "https://elsewhere.example.com/", &["push"])];
        assert_eq!(plan(&hooks, &wanted(), &[], |_| true), Plan::Create);
        assert_eq!(plan(&[], &wanted(), &[1], |_| true), Plan::Create);
    }

    #[test]
    fn a_hook_as_wanted_is_kept_in_any_event_order_and_only_with_the_known_secret() {
        let hooks = [hook(7, URL, &["release", "push"])];
        assert_eq!(plan(&hooks, &wanted(), &[], |_| true), Plan::Keep(7));
        assert_eq!(plan(&hooks, &wanted(), &[], |_| false), Plan::Update(7));
    }

    #[test]
    fn other_events_an_inactive_hook_form_content_or_insecure_ssl_are_updated() {
        let mut changed = vec![hook(7, URL, &["push"])];
        let mut inactive = hook(7, URL, &["push", "release"]);
        inactive.active = false;
        changed.push(inactive);
        let mut form = hook(7, URL, &["push", "release"]);
        form.config.content_type = Some("form".into());
        changed.push(form);
        let mut insecure = hook(7, URL, &["push", "release"]);
        insecure.config.insecure_ssl = Some(json!(1));
        changed.push(insecure);
        for hook in changed {
            assert_eq!(
                plan(std::slice::from_ref(&hook), &wanted(), &[], |_| true),
                Plan::Update(7),
                "{hook:?}"
            );
        }
    }

    #[test]
    fn of_two_hooks_to_the_url_the_one_in_status_is_chosen() {
        let hooks = [
            hook(3, URL, &["push", "release"]),
            hook(9, URL, &["push", "release"]),
        ];
        assert_eq!(plan(&hooks, &wanted(), &[9], |_| true), Plan::Keep(9));
        assert_eq!(plan(&hooks, &wanted(), &[], |_| true), Plan::Keep(3));
    }

    #[test]
    fn the_request_body_carries_the_whole_configuration_and_debug_hides_the_secret() {
        let wanted = wanted();
        assert_eq!(
            wanted.body(),
            json!({
                "active": true,
                "events": ["push", "release"],
                "config": {"url": URL, "content_type": "json", "insecure_ssl": "0", "secret": "s3cret"},
            })
        );
        assert!(!format!("{wanted:?}").contains("s3cret"));
    }
}
