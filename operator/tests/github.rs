//! The GitHubWebhook controller against a real API server (`kube-testenv`) and a local GitHub
//! (`github-fake`, which really verifies the App's JWT and the installation tokens).
//!
//! Each test has its namespace, its own fake GitHub and its own controller, which watches only
//! that namespace and runs as a ServiceAccount bound to the committed ClusterRole
//! (`deploy/operator/rbac.yaml`) and nothing else. Every wait is a poll with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use github_fake::{APP_KEY, APP_KEY_PKCS8, GitHub, Hook, OTHER_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube_testenv::TestEnv;
use sekisho_api::{GitHubWebhook, condition};
use sekisho_operator::github;
use serde_json::{Value, json};
use tokio::sync::watch;

const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const WEBSITE: &str = "example-org/website";
const INFRASTRUCTURE: &str = "example-org/infrastructure";
const URL: &str = "https://hooks.example.com/github";
/// How long the controller may take to act on a change. It acts in well under a second; the
/// bound is for a slow, shared machine. A retry after a failure waits 2 s, then 4 s, then 8 s.
const DEADLINE: Duration = Duration::from_secs(60);

/// One test's namespace, GitHub and controller. The controller stops when it is dropped.
struct Setup {
    admin: kube::Client,
    namespace: String,
    github: GitHub,
    stop: watch::Sender<bool>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Setup {
    /// A namespace with the App's Secret (`github-app`, holding `key`), a fake GitHub where
    /// the App is installed on both repositories, and the controller.
    async fn new(prefix: &str, key: &str) -> anyhow::Result<Self> {
        let env = TestEnv::shared().await?;
        env.install_crds(&sekisho_api::crd::all(), "sekisho-test")
            .await?;
        let namespace = env.namespace(prefix).await?;
        let admin = env.client().await?;
        bind_operator_role(env, &namespace).await?;
        let client = env
            .service_account_client(&namespace, "sekisho-operator")
            .await?;
        let github = GitHub::start(APP_ID, github_fake::public_key(APP_KEY)?).await?;
        github.install(INSTALLATION, &[WEBSITE, INFRASTRUCTURE]);
        let (stop, stopped) = watch::channel(false);
        let setup = Self {
            admin,
            namespace: namespace.clone(),
            github,
            stop,
        };
        setup.app_secret(key).await?;
        tokio::spawn(github::run(
            client,
            github::Options {
                namespace: Some(namespace),
                ..github::Options::default()
            },
            stopped,
        ));
        Ok(setup)
    }

    fn webhooks(&self) -> Api<GitHubWebhook> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    /// Writes the App's Secret with `key` as its private key.
    async fn app_secret(&self, key: &str) -> anyhow::Result<()> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("github-app".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                [
                    ("app-id", APP_ID.to_string()),
                    ("private-key", key.to_owned()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
            ),
            ..Secret::default()
        };
        self.secrets()
            .patch(
                "github-app",
                &PatchParams::apply("github-test").force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }

    /// Creates the GitHubWebhook `deploys` for `repositories`, delivering to [`URL`].
    async fn create(&self, repositories: &[&str], events: &[&str]) -> anyhow::Result<i64> {
        let object: GitHubWebhook = serde_json::from_value(json!({
            "apiVersion": "sekisho.dev/v1alpha1",
            "kind": "GitHubWebhook",
            "metadata": {"name": "deploys"},
            "spec": {
                "host": "hooks.example.com",
                "path": "/github",
                "repositories": repositories,
                "events": events,
                "secretRef": {"name": "deploys-webhook"},
                "app": {"secretRef": {"name": "github-app"}},
                "apiUrl": self.github.url(),
            },
        }))?;
        let created = self
            .webhooks()
            .create(&PostParams::default(), &object)
            .await?;
        created.metadata.generation.context("a generation")
    }

    /// Waits until `deploys` says Ready (`True` or not) for `generation`; the object.
    async fn ready(&self, ready: bool, generation: i64) -> anyhow::Result<GitHubWebhook> {
        let api = self.webhooks();
        eventually(
            &format!("Ready={ready} for generation {generation}"),
            || {
                let api = api.clone();
                async move {
                    let object = api.get("deploys").await?;
                    let status = object.status.clone().unwrap_or_default();
                    let condition = condition::find(&status.conditions, condition::READY);
                    let wanted = condition.is_some_and(|c| {
                        c.status == if ready { "True" } else { "False" }
                            && c.observed_generation == Some(generation)
                            && status.observed_generation == Some(generation)
                    });
                    if !wanted {
                        // Shown when the wait times out.
                        bail!("Ready is {condition:?}");
                    }
                    Ok(Some(object))
                }
            },
        )
        .await
    }

    /// The webhook secret the operator made.
    async fn webhook_secret(&self) -> anyhow::Result<String> {
        let secret = self.secrets().get("deploys-webhook").await?;
        let value = secret
            .data
            .and_then(|d| d.get("secret").cloned())
            .context("no key `secret`")?;
        Ok(String::from_utf8(value.0)?)
    }

    /// Requests that change hooks so far.
    fn hook_writes(&self) -> Vec<String> {
        self.github
            .requests()
            .into_iter()
            .filter(|r| {
                r.contains("/hooks")
                    && (r.starts_with("POST") || r.starts_with("PATCH") || r.starts_with("DELETE"))
            })
            .collect()
    }
}

/// Binds the committed ClusterRole (under a name of this namespace's) to the ServiceAccount
/// `sekisho-operator` of `namespace`.
async fn bind_operator_role(env: &TestEnv, namespace: &str) -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/operator/rbac.yaml");
    let role: ClusterRole = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)
        .context("deploy/operator/rbac.yaml")?;
    env.bind_cluster_role(
        role,
        &format!("sekisho-operator-{namespace}"),
        namespace,
        "sekisho-operator",
        "github-test",
    )
    .await?;
    Ok(())
}

/// Polls `check` until it gives a value, or fails after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last = format!(" (last error: {error:#})"),
        }
        if start.elapsed() > DEADLINE {
            bail!("waited {DEADLINE:?} for {what}{last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one hook of `repository`.
fn only_hook(github: &GitHub, repository: &str) -> anyhow::Result<Hook> {
    let hooks = github.hooks(repository);
    ensure!(hooks.len() == 1, "{repository} has hooks {hooks:?}");
    Ok(hooks[0].clone())
}

fn ids(object: &GitHubWebhook) -> Vec<(String, i64)> {
    object
        .status
        .iter()
        .flat_map(|s| &s.hooks)
        .map(|h| (h.repository.clone(), h.id))
        .collect()
}

#[tokio::test]
async fn each_repository_gets_one_hook_to_the_route_with_a_generated_secret_and_status_lists_their_ids()
-> anyhow::Result<()> {
    let setup = Setup::new("github-create", APP_KEY).await?;
    let generation = setup.create(&[WEBSITE, INFRASTRUCTURE], &["push"]).await?;
    let object = setup.ready(true, generation).await?;

    let secret = setup.webhook_secret().await?;
    ensure!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "the generated secret is not 32 bytes in hex"
    );
    let made = setup.secrets().get("deploys-webhook").await?;
    let owner = made
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("the generated Secret has no owner")?;
    ensure!(owner.kind == "GitHubWebhook" && owner.name == "deploys");

    let mut expected = Vec::new();
    for repository in [INFRASTRUCTURE, WEBSITE] {
        let hook = only_hook(&setup.github, repository)?;
        ensure!(hook.url == URL, "{repository}: url {}", hook.url);
        ensure!(hook.events == ["push"], "{repository}: {:?}", hook.events);
        ensure!(
            hook.secret.as_deref() == Some(secret.as_str()),
            "{repository}: another secret"
        );
        ensure!(hook.content_type == "json" && hook.active && hook.insecure_ssl == "0");
        expected.push((repository.to_owned(), hook.id));
    }
    ensure!(
        ids(&object) == expected,
        "status {:?}, GitHub {expected:?}",
        ids(&object)
    );
    let status = object.status.clone().unwrap_or_default();
    let message = &condition::find(&status.conditions, condition::READY)
        .context("Ready")?
        .message;
    ensure!(
        !message.contains(&secret),
        "the Ready message shows the secret"
    );

    // Another pass (any change to the object starts one) leaves the hooks alone.
    let writes = setup.hook_writes();
    ensure!(writes.len() == 2, "writes {writes:?}");
    let lists = |github: &GitHub| {
        github
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET") && r.ends_with("/hooks"))
            .count()
    };
    let listed = lists(&setup.github);
    setup
        .webhooks()
        .patch(
            "deploys",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test": "again"}}})),
        )
        .await?;
    eventually("another pass", || async {
        Ok((lists(&setup.github) >= listed + 2).then_some(()))
    })
    .await?;
    ensure!(
        setup.hook_writes() == writes,
        "a pass with nothing to do wrote {:?}",
        setup.hook_writes()
    );
    Ok(())
}

#[tokio::test]
async fn changed_events_update_the_hook_a_rotated_secret_reaches_it_and_a_removed_repository_loses_its_hook()
-> anyhow::Result<()> {
    let setup = Setup::new("github-change", APP_KEY).await?;
    // A secret of the user's own is used as it is.
    setup
        .secrets()
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("deploys-webhook".into()),
                    ..ObjectMeta::default()
                },
                string_data: Some([("secret".to_owned(), "chosen by hand".to_owned())].into()),
                ..Secret::default()
            },
        )
        .await?;
    let generation = setup.create(&[WEBSITE, INFRASTRUCTURE], &["push"]).await?;
    setup.ready(true, generation).await?;
    let website = only_hook(&setup.github, WEBSITE)?;
    ensure!(website.secret.as_deref() == Some("chosen by hand"));

    // Another writer's condition (the proxy's, some day) stays through the operator's writes.
    let served = json!({
        "type": "Served", "status": "True", "reason": "RouteFound", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    });
    setup
        .webhooks()
        .patch_status(
            "deploys",
            &PatchParams::apply("proxy-test"),
            &Patch::Apply(json!({
                "apiVersion": "sekisho.dev/v1alpha1",
                "kind": "GitHubWebhook",
                "metadata": {"name": "deploys"},
                "status": {"conditions": [served]},
            })),
        )
        .await?;
    let changed = setup
        .webhooks()
        .patch(
            "deploys",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"repositories": [WEBSITE], "events": ["release", "push"]}}),
            ),
        )
        .await?;
    let generation = changed.metadata.generation.context("a generation")?;
    let object = setup.ready(true, generation).await?;

    let conditions = object.status.clone().unwrap_or_default().conditions;
    ensure!(
        condition::is_true(&conditions, "Served"),
        "the other writer's condition went: {conditions:?}"
    );
    let updated = only_hook(&setup.github, WEBSITE)?;
    ensure!(
        updated.id == website.id,
        "the hook was replaced, not updated"
    );
    ensure!(
        updated.events == ["push", "release"],
        "events {:?}",
        updated.events
    );
    ensure!(
        updated.secret.as_deref() == Some("chosen by hand"),
        "the update lost the secret"
    );
    ensure!(
        setup.github.hooks(INFRASTRUCTURE).is_empty(),
        "the removed repository kept its hook"
    );
    ensure!(
        ids(&object) == [(WEBSITE.to_owned(), website.id)],
        "status {:?}",
        ids(&object)
    );

    // A rotated secret reaches the hook without waiting for the next periodic pass.
    setup
        .secrets()
        .patch(
            "deploys-webhook",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": "rotated"}})),
        )
        .await?;
    eventually("the rotated secret at GitHub", || async {
        Ok(setup
            .github
            .hooks(WEBSITE)
            .iter()
            .any(|h| h.id == website.id && h.secret.as_deref() == Some("rotated"))
            .then_some(()))
    })
    .await?;
    let made = setup.secrets().get("deploys-webhook").await?;
    ensure!(
        made.metadata.owner_references.is_none(),
        "the user's Secret got an owner"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_that_is_not_the_apps_is_ready_false_with_a_reason_and_nothing_is_made_until_it_is_fixed()
-> anyhow::Result<()> {
    let setup = Setup::new("github-wrong-key", OTHER_KEY).await?;
    let generation = setup.create(&[WEBSITE], &["push"]).await?;
    let object = setup.ready(false, generation).await?;
    let status = object.status.clone().unwrap_or_default();
    let ready = condition::find(&status.conditions, condition::READY).context("Ready")?;
    ensure!(
        ready.reason == "AppCredentialsRejected",
        "reason {}",
        ready.reason
    );
    ensure!(ready.message.contains("401"), "message {}", ready.message);
    let secret = setup.webhook_secret().await?;
    ensure!(
        !ready.message.contains(&secret) && !ready.message.contains("PRIVATE KEY"),
        "the message shows a secret"
    );
    ensure!(setup.github.hooks(WEBSITE).is_empty() && setup.hook_writes().is_empty());
    ensure!(status.hooks.is_empty());

    // Fixing the App's Secret is acted on.
    setup.app_secret(APP_KEY).await?;
    let object = setup.ready(true, generation).await?;
    let hook = only_hook(&setup.github, WEBSITE)?;
    ensure!(ids(&object) == [(WEBSITE.to_owned(), hook.id)]);
    Ok(())
}

#[tokio::test]
async fn a_repository_without_the_app_is_reported_and_the_others_get_their_hooks()
-> anyhow::Result<()> {
    let setup = Setup::new("github-not-installed", APP_KEY).await?;
    let generation = setup
        .create(&[WEBSITE, "someone-else/private"], &["push"])
        .await?;
    let object = setup.ready(false, generation).await?;
    let status = object.status.clone().unwrap_or_default();
    let ready = condition::find(&status.conditions, condition::READY).context("Ready")?;
    ensure!(
        ready.reason == "InstallationNotFound",
        "reason {}",
        ready.reason
    );
    ensure!(
        ready.message.contains("someone-else/private"),
        "message {}",
        ready.message
    );
    let hook = eventually("the website's hook", || async {
        Ok(setup.github.hooks(WEBSITE).first().cloned())
    })
    .await?;
    ensure!(
        ids(&object) == [(WEBSITE.to_owned(), hook.id)],
        "status {:?}",
        ids(&object)
    );
    Ok(())
}

#[tokio::test]
async fn deleting_the_object_deletes_its_hooks_first_with_a_pkcs8_key_too() -> anyhow::Result<()> {
    let setup = Setup::new("github-delete", APP_KEY_PKCS8).await?;
    let generation = setup.create(&[WEBSITE, INFRASTRUCTURE], &["push"]).await?;
    let object = setup.ready(true, generation).await?;
    ensure!(
        object
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == github::FINALIZER),
        "no finalizer"
    );
    ensure!(ids(&object).len() == 2);

    setup
        .webhooks()
        .delete("deploys", &DeleteParams::default())
        .await?;
    let api = setup.webhooks();
    eventually("the object to go", || {
        let api = api.clone();
        async move { Ok(api.get_opt("deploys").await?.is_none().then_some(())) }
    })
    .await?;
    for repository in [WEBSITE, INFRASTRUCTURE] {
        let hooks = setup.github.hooks(repository);
        ensure!(hooks.is_empty(), "{repository} kept {hooks:?}");
    }
    let deletes = setup
        .hook_writes()
        .into_iter()
        .filter(|r| r.starts_with("DELETE"))
        .count();
    ensure!(deletes == 2, "deletes {deletes}");
    Ok(())
}

#[tokio::test]
async fn an_api_url_the_schema_refuses_is_refused_before_it_is_stored() -> anyhow::Result<()> {
    let setup = Setup::new("github-plain", APP_KEY).await?;
    let object: Value = json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "GitHubWebhook",
        "metadata": {"name": "deploys"},
        "spec": {
            "host": "hooks.example.com",
            "repositories": [WEBSITE],
            "secretRef": {"name": "deploys-webhook"},
            "app": {"secretRef": {"name": "github-app"}},
            "apiUrl": "http://github.example.com",
        },
    });
    let object: GitHubWebhook = serde_json::from_value(object)?;
    let refused = setup
        .webhooks()
        .create(&PostParams::default(), &object)
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            ensure!(status.message.contains("apiUrl"), "{}", status.message)
        }
        other => bail!("plain http to another host was accepted: {other:?}"),
    }
    Ok(())
}
