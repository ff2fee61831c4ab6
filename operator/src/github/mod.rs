//! The GitHubWebhook controller: for each GitHubWebhook, as the GitHub App its Secret names,
//! give every listed repository one webhook that delivers to `https://HOST/PATH` with the
//! webhook secret and the events asked for; delete the webhooks it made for repositories that
//! left the list; record their ids in status; and, through the finalizer
//! `sekisho.dev/github-webhooks`, delete them all before the object goes.
//!
//! Per repository: the App's JWT finds the installation that holds it
//! (`GET /repos/{repo}/installation`) and gets that installation's token
//! (`POST /app/installations/{id}/access_tokens`); the token lists the webhooks and creates,
//! updates or deletes one ([`rest`]). What to do with the webhooks found is a pure decision
//! ([`hook::plan`]). A repository that fails does not stop the others; the status says which
//! failed and why, and the pass is retried with a growing delay.
//!
//! Secrets (the webhook secret, the App's key, its JWT and tokens) are newtypes whose `Debug`
//! hides them; no message or log carries one.

mod app;
mod hook;
mod rest;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use http::StatusCode;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use ring::rand::{SecureRandom as _, SystemRandom};
use sekisho_api::{GitHubHook, GitHubWebhook, condition};
use sekisho_identity::http::{HttpClient, HttpClientConfig};
use serde_json::json;
use tokio::sync::watch;

use self::app::App;
use self::hook::{Plan, Wanted, WebhookSecret};
use self::rest::{ApiUrl, CallError, GitHub, Token};
use sekisho_wire::error_chain;

use crate::backoff::Backoff;
use crate::desired::MANAGER;
use crate::metrics::Metrics;

/// The finalizer that deletes an object's webhooks at GitHub before the object goes.
pub const FINALIZER: &str = "sekisho.dev/github-webhooks";
/// The label (`app.kubernetes.io/component`) of the webhook Secrets the operator makes.
const SECRET_COMPONENT: &str = "github-webhook-secret";
/// The field manager of the status this controller writes.
const STATUS_MANAGER: &str = "sekisho-operator-github";
/// How often a settled GitHubWebhook is looked at again: webhooks edited by hand at GitHub are
/// put back then.
const SETTLED: Duration = Duration::from_secs(600);
/// The first retry after a failure; each further one doubles, up to [`SETTLED`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// How long one call to GitHub may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How the controller runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only the GitHubWebhooks of this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// This replica's name in Events.
    pub instance: Option<String>,
    /// Certificates (PEM) trusted besides the system's roots, for a GitHub Enterprise Server
    /// whose certificate a private CA signed.
    pub extra_ca_pem: Option<Vec<u8>>,
}

/// A reason for `Ready=False`, with words for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Problem {
    reason: &'static str,
    message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The reasons of `Ready`.
mod reason {
    pub(super) const READY: &str = "HooksReady";
    pub(super) const INVALID_SPEC: &str = "InvalidSpec";
    pub(super) const WEBHOOK_SECRET_INVALID: &str = "WebhookSecretInvalid";
    pub(super) const APP_CREDENTIALS_MISSING: &str = "AppCredentialsMissing";
    pub(super) const APP_CREDENTIALS_INVALID: &str = "AppCredentialsInvalid";
    pub(super) const APP_CREDENTIALS_REJECTED: &str = "AppCredentialsRejected";
    pub(super) const INSTALLATION_NOT_FOUND: &str = "InstallationNotFound";
    pub(super) const GITHUB_ERROR: &str = "GitHubError";
    pub(super) const GITHUB_UNREACHABLE: &str = "GitHubUnreachable";
    pub(super) const RANDOM_UNAVAILABLE: &str = "RandomUnavailable";
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("Kubernetes API")]
    Api(#[from] kube::Error),
    /// Reported in the object's status.
    #[error(transparent)]
    Problem(Problem),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The log's and the Event's reason.
    fn reason(&self) -> &'static str {
        match self {
            Error::Api(_) => "ApiError",
            Error::Problem(problem) => problem.reason,
            Error::Finalizer(_) => "CleanupFailed",
        }
    }
}

struct Context {
    client: Client,
    http: HttpClient,
    recorder: Recorder,
    /// Failures in a row, per object.
    backoff: Backoff,
    /// The operator's metrics, when it runs in the operator (not in a test of its own).
    metrics: Option<Arc<Metrics>>,
    /// The digest of the secret this process last gave each webhook (object uid, hook id):
    /// GitHub never shows a webhook's secret, so a webhook not in here is updated once.
    secrets: Mutex<HashMap<(String, i64), [u8; 32]>>,
}

/// Runs the controller until `stop` turns true. Errors are logged here.
pub async fn run(client: Client, options: Options, stop: watch::Receiver<bool>) {
    run_counted(client, options, None, stop).await;
}

/// [`run`], counting failures in the operator's `sekisho_operator_reconcile_failures_total`.
pub(crate) async fn run_counted(
    client: Client,
    options: Options,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let http = match HttpClient::new(&HttpClientConfig {
        timeout: CALL_TIMEOUT,
        extra_ca_pem: options.extra_ca_pem.clone(),
        // Plain http only to loopback: every URL is checked by `ApiUrl::parse` first.
        allow_plain_http: true,
        ..HttpClientConfig::default()
    }) {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot build the GitHub client: GitHubWebhooks are not reconciled");
            return;
        }
    };
    let (webhooks, secrets) = match &options.namespace {
        Some(namespace) => (
            Api::<GitHubWebhook>::namespaced(client.clone(), namespace),
            Api::<Secret>::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: options.instance.clone(),
            },
        ),
        client,
        http,
        backoff: Backoff::new(FIRST_RETRY, SETTLED),
        metrics,
        secrets: Mutex::default(),
    });
    // A change to a Secret a GitHubWebhook names (its webhook secret, its App's credentials)
    // is acted on at once: a rotated secret reaches GitHub as soon as the proxy checks with
    // it. Only the triggers are kept, not the Secrets.
    let controller = Controller::new(webhooks, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let namespace = secret.namespace();
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|w| {
                        w.namespace() == namespace
                            && (w.spec.secret_ref.name == name
                                || w.spec.app.secret_ref.name == name)
                    })
                    .map(|w| ObjectRef::from_obj(&*w))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { crate::until(&mut stop, true).await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "GitHubWebhook reconcile");
            }
        })
        .await;
}

async fn reconcile(webhook: Arc<GitHubWebhook>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = webhook.namespace().unwrap_or_default();
    let api = Api::<GitHubWebhook>::namespaced(context.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, webhook, |event| async {
        match event {
            finalizer::Event::Apply(webhook) => apply(&webhook, &context).await,
            finalizer::Event::Cleanup(webhook) => cleanup(&webhook, &context).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        Err(finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error)) => {
            Err(error)
        }
        Err(error) => Err(Error::Finalizer(error.to_string())),
    }
}

fn error_policy(webhook: Arc<GitHubWebhook>, error: &Error, context: Arc<Context>) -> Action {
    let key = (webhook.namespace().unwrap_or_default(), webhook.name_any());
    if let Some(metrics) = &context.metrics {
        metrics.failed(error.reason());
    }
    let delay = context.backoff.failed(key);
    tracing::warn!(
        namespace = webhook.namespace().unwrap_or_default(),
        name = webhook.name_any(),
        reason = error.reason(),
        error = %error_chain(error),
        retry_in = ?delay,
        "cannot reconcile a GitHubWebhook"
    );
    Action::requeue(delay)
}

/// The Unix time in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One pass over a GitHubWebhook that is not being deleted.
async fn apply(webhook: &GitHubWebhook, context: &Context) -> Result<Action, Error> {
    let spec = &webhook.spec;
    let old = webhook.status.clone().unwrap_or_default().hooks;
    let base = match ApiUrl::parse(spec.api_url()) {
        Ok(base) => base,
        Err(error) => {
            // Retrying cannot help: wait for the spec to change.
            let problem = Problem::new(reason::INVALID_SPEC, error.to_string());
            write_status(context, webhook, &old, Some(&problem)).await?;
            return Ok(Action::await_change());
        }
    };
    let prepared = async {
        let secret = webhook_secret(webhook, context).await?;
        let app = app(webhook, context).await?;
        Ok::<_, Error>((secret, app))
    }
    .await;
    let (secret, app) = match prepared {
        Ok(prepared) => prepared,
        Err(Error::Problem(problem)) => {
            write_status(context, webhook, &old, Some(&problem)).await?;
            return Err(Error::Problem(problem));
        }
        Err(error) => return Err(error),
    };
    let github = GitHub::new(context.http.clone(), base);
    let wanted = Wanted::new(spec.delivery_url(), &spec.events, secret);
    let mut session = Session::new(&github, &app);
    let uid = webhook.uid().unwrap_or_default();

    let mut kept: Vec<GitHubHook> = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    let mut seen = BTreeSet::new();
    for repository in &spec.repositories {
        if !seen.insert(repository.to_ascii_lowercase()) {
            continue;
        }
        let known: Vec<i64> = old
            .iter()
            .filter(|h| h.repository.eq_ignore_ascii_case(repository))
            .map(|h| h.id)
            .collect();
        match ensure(
            &mut session,
            context,
            webhook,
            &uid,
            repository,
            &known,
            &wanted,
        )
        .await
        {
            Ok(id) => kept.push(GitHubHook {
                repository: repository.clone(),
                id,
            }),
            Err(problem) => {
                // Its old webhooks stay recorded, to be dealt with on a later pass.
                kept.extend(
                    old.iter()
                        .filter(|h| h.repository.eq_ignore_ascii_case(repository))
                        .cloned(),
                );
                let rejected = problem.reason == reason::APP_CREDENTIALS_REJECTED;
                problems.push(problem);
                if rejected {
                    // Every other call would be refused the same way.
                    break;
                }
            }
        }
    }
    // Webhooks recorded before and not kept: of repositories that left the list, or made for
    // another URL. When the App's credentials were refused, nothing more can be done now.
    let stopped_early = problems
        .iter()
        .any(|p| p.reason == reason::APP_CREDENTIALS_REJECTED);
    for hook in &old {
        if kept.contains(hook) {
            continue;
        }
        if stopped_early {
            kept.push(hook.clone());
            continue;
        }
        match remove(&mut session, context, webhook, hook).await {
            Ok(()) => {
                context
                    .secrets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(uid.clone(), hook.id));
            }
            Err(problem) => {
                kept.push(hook.clone());
                problems.push(problem);
            }
        }
    }
    kept.sort();
    kept.dedup();

    let summary = summarize(&problems);
    write_status(context, webhook, &kept, summary.as_ref()).await?;
    match summary {
        Some(problem) => Err(Error::Problem(problem)),
        None => {
            context
                .backoff
                .succeeded(&(webhook.namespace().unwrap_or_default(), webhook.name_any()));
            Ok(Action::requeue(SETTLED))
        }
    }
}

/// One problem for the status: the first one's reason, every distinct message.
fn summarize(problems: &[Problem]) -> Option<Problem> {
    let first = problems.first()?;
    let mut messages: Vec<&str> = Vec::new();
    for problem in problems {
        if !messages.contains(&problem.message.as_str()) {
            messages.push(&problem.message);
        }
    }
    let shown = 5;
    let mut message = messages
        .iter()
        .take(shown)
        .copied()
        .collect::<Vec<_>>()
        .join("; ");
    if messages.len() > shown {
        message.push_str(&format!("; and {} more", messages.len() - shown));
    }
    Some(Problem::new(first.reason, message))
}

/// The App's JWT and the installation tokens of one pass, each asked for once.
struct Session<'a> {
    github: &'a GitHub,
    app: &'a App,
    /// Repository (lowercase) → its installation.
    installations: HashMap<String, u64>,
    tokens: HashMap<u64, Token>,
}

impl<'a> Session<'a> {
    fn new(github: &'a GitHub, app: &'a App) -> Self {
        Self {
            github,
            app,
            installations: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// A token of the installation that holds `repository`; `None` when the App is not
    /// installed there.
    async fn token(&mut self, repository: &str) -> Result<Option<Token>, Problem> {
        let key = repository.to_ascii_lowercase();
        let installation = match self.installations.get(&key) {
            Some(id) => *id,
            None => {
                let jwt = self
                    .app
                    .jwt(unix_now())
                    .map_err(|e| Problem::new(reason::APP_CREDENTIALS_INVALID, e.to_string()))?;
                let Some(id) = self
                    .github
                    .installation(repository, &jwt)
                    .await
                    .map_err(|e| self.problem(e))?
                else {
                    return Ok(None);
                };
                self.installations.insert(key, id);
                id
            }
        };
        if let Some(token) = self.tokens.get(&installation) {
            return Ok(Some(token.clone()));
        }
        let jwt = self
            .app
            .jwt(unix_now())
            .map_err(|e| Problem::new(reason::APP_CREDENTIALS_INVALID, e.to_string()))?;
        let token = self
            .github
            .token(installation, &jwt)
            .await
            .map_err(|e| self.problem(e))?;
        self.tokens.insert(installation, token.clone());
        Ok(Some(token))
    }

    /// The problem a failed call is. A 401 is the App's credentials; the rest is GitHub's.
    fn problem(&self, error: CallError) -> Problem {
        match error.status() {
            Some(StatusCode::UNAUTHORIZED) => Problem::new(
                reason::APP_CREDENTIALS_REJECTED,
                format!(
                    "{}: check that `app-id` is the App's id ({}) and `private-key` one of its current keys",
                    error_chain(&error),
                    self.app.id
                ),
            ),
            Some(_) => Problem::new(reason::GITHUB_ERROR, error_chain(&error)),
            None => Problem::new(
                match error {
                    CallError::Unreachable { .. } => reason::GITHUB_UNREACHABLE,
                    _ => reason::GITHUB_ERROR,
                },
                error_chain(&error),
            ),
        }
    }
}

/// Gives `repository` its webhook; its id.
async fn ensure(
    session: &mut Session<'_>,
    context: &Context,
    webhook: &GitHubWebhook,
    uid: &str,
    repository: &str,
    known: &[i64],
    wanted: &Wanted,
) -> Result<i64, Problem> {
    let Some(token) = session.token(repository).await? else {
        return Err(Problem::new(
            reason::INSTALLATION_NOT_FOUND,
            format!(
                "the GitHub App {} is not installed on {repository}: install it there with the repository permission \"Webhooks: read and write\"",
                session.app.id
            ),
        ));
    };
    let github = session.github;
    let hooks = github
        .hooks(repository, &token)
        .await
        .map_err(|e| session.problem(e))?;
    let digest = wanted.secret.digest();
    let has_secret = |id: i64| {
        context
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(uid.to_owned(), id))
            == Some(&digest)
    };
    let id = match hook::plan(&hooks, wanted, known, has_secret) {
        Plan::Keep(id) => return Ok(id),
        Plan::Update(id) => {
            github
                .update(repository, &token, id, wanted)
                .await
                .map_err(|e| session.problem(e))?;
            event(
                context,
                webhook,
                EventType::Normal,
                "HookUpdated",
                &format!("updated the webhook {id} of {repository}"),
            )
            .await;
            id
        }
        Plan::Create => {
            let id = github
                .create(repository, &token, wanted)
                .await
                .map_err(|e| session.problem(e))?;
            event(
                context,
                webhook,
                EventType::Normal,
                "HookCreated",
                &format!(
                    "created the webhook {id} of {repository}, delivering to {}",
                    wanted.url
                ),
            )
            .await;
            id
        }
    };
    context
        .secrets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((uid.to_owned(), id), digest);
    Ok(id)
}

/// Deletes a webhook the status records. One GitHub no longer lets the App reach (the App was
/// uninstalled from its repository) cannot be deleted: it is forgotten, with a warning.
async fn remove(
    session: &mut Session<'_>,
    context: &Context,
    webhook: &GitHubWebhook,
    hook: &GitHubHook,
) -> Result<(), Problem> {
    if !rest::is_repository(&hook.repository) {
        return Ok(());
    }
    let Some(token) = session.token(&hook.repository).await? else {
        event(
            context,
            webhook,
            EventType::Warning,
            "HookLeft",
            &format!(
                "the GitHub App {} is no longer installed on {}: delete its webhook {} there by hand",
                session.app.id, hook.repository, hook.id
            ),
        )
        .await;
        return Ok(());
    };
    let deleted = session
        .github
        .delete(&hook.repository, &token, hook.id)
        .await
        .map_err(|e| session.problem(e))?;
    if deleted {
        event(
            context,
            webhook,
            EventType::Normal,
            "HookDeleted",
            &format!("deleted the webhook {} of {}", hook.id, hook.repository),
        )
        .await;
    }
    Ok(())
}

/// Deletes every webhook the object's status records. Without usable App credentials nothing
/// can be deleted, and waiting would hold the object (and its namespace) forever: the
/// webhooks are left, with a warning Event, and the object goes.
async fn cleanup(webhook: &GitHubWebhook, context: &Context) -> Result<Action, Error> {
    let hooks = webhook.status.clone().unwrap_or_default().hooks;
    if hooks.is_empty() {
        return Ok(Action::await_change());
    }
    let listed = hooks
        .iter()
        .map(|h| format!("{} {}", h.repository, h.id))
        .collect::<Vec<_>>()
        .join(", ");
    let unusable = |problem: Problem| async move {
        event(
            context,
            webhook,
            EventType::Warning,
            "HooksLeft",
            &format!("{problem}: the webhooks were not deleted at GitHub ({listed})"),
        )
        .await;
        Ok(Action::await_change())
    };
    let base = match ApiUrl::parse(webhook.spec.api_url()) {
        Ok(base) => base,
        Err(error) => {
            return unusable(Problem::new(reason::INVALID_SPEC, error.to_string())).await;
        }
    };
    let app = match app(webhook, context).await {
        Ok(app) => app,
        Err(Error::Problem(problem)) => return unusable(problem).await,
        Err(error) => return Err(error),
    };
    let github = GitHub::new(context.http.clone(), base);
    let mut session = Session::new(&github, &app);
    let mut left = Vec::new();
    let mut problems = Vec::new();
    for hook in &hooks {
        if let Err(problem) = remove(&mut session, context, webhook, hook).await {
            left.push(hook.clone());
            problems.push(problem);
        }
    }
    match summarize(&problems) {
        None => {
            let uid = webhook.uid().unwrap_or_default();
            context
                .secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(of, _), _| *of != uid);
            Ok(Action::await_change())
        }
        Some(problem) => {
            write_status(context, webhook, &left, Some(&problem)).await?;
            Err(Error::Problem(problem))
        }
    }
}

/// The webhook secret from its Secret, which is made (with 32 random bytes, owned by the
/// object) when it does not exist.
async fn webhook_secret(
    webhook: &GitHubWebhook,
    context: &Context,
) -> Result<WebhookSecret, Error> {
    let reference = &webhook.spec.secret_ref;
    let namespace = webhook.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(context.client.clone(), &namespace);
    let secret = match secrets.get_opt(&reference.name).await? {
        Some(secret) => secret,
        None => {
            let mut bytes = [0u8; 32];
            SystemRandom::new().fill(&mut bytes).map_err(|_| {
                Error::Problem(Problem::new(
                    reason::RANDOM_UNAVAILABLE,
                    "the operating system's random number generator failed",
                ))
            })?;
            let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(reference.name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(
                        [
                            ("app.kubernetes.io/managed-by", MANAGER),
                            ("app.kubernetes.io/component", SECRET_COMPONENT),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    ),
                    owner_references: webhook.controller_owner_ref(&()).map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                data: Some(
                    [(reference.key.clone(), ByteString(value.into_bytes()))]
                        .into_iter()
                        .collect(),
                ),
                type_: Some("Opaque".to_owned()),
                ..Secret::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    event(
                        context,
                        webhook,
                        EventType::Normal,
                        "WebhookSecretCreated",
                        &format!(
                            "made the webhook secret in Secret {} from the OS random number generator",
                            reference.name
                        ),
                    )
                    .await;
                    created
                }
                // Made by someone else in the meantime: use theirs.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    secrets.get(&reference.name).await?
                }
                Err(error) => return Err(error.into()),
            }
        }
    };
    let value = secret.data.as_ref().and_then(|d| d.get(&reference.key));
    match value.and_then(|v| hook::secret_from_bytes(&v.0)) {
        Some(secret) => Ok(secret),
        None => Err(Error::Problem(Problem::new(
            reason::WEBHOOK_SECRET_INVALID,
            format!(
                "Secret {} has no text under the key `{}`: put the webhook secret there, or delete the Secret and the operator makes one",
                reference.name, reference.key
            ),
        ))),
    }
}

/// The GitHub App from its Secret.
async fn app(webhook: &GitHubWebhook, context: &Context) -> Result<App, Error> {
    let name = &webhook.spec.app.secret_ref.name;
    let namespace = webhook.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(context.client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Err(Error::Problem(Problem::new(
            reason::APP_CREDENTIALS_MISSING,
            format!(
                "Secret {name} (spec.app.secretRef) does not exist: create it with the keys `{}` and `{}`",
                app::APP_ID_KEY,
                app::PRIVATE_KEY_KEY
            ),
        )));
    };
    App::from_secret(&secret).map_err(|error| {
        let reason = match error {
            app::CredentialsError::IdMissing | app::CredentialsError::KeyMissing => {
                reason::APP_CREDENTIALS_MISSING
            }
            _ => reason::APP_CREDENTIALS_INVALID,
        };
        Error::Problem(Problem::new(reason, format!("Secret {name} {error}")))
    })
}

/// Writes `hooks` and the `Ready` condition (`True` without a problem) when they changed.
async fn write_status(
    context: &Context,
    webhook: &GitHubWebhook,
    hooks: &[GitHubHook],
    problem: Option<&Problem>,
) -> Result<(), kube::Error> {
    let generation = webhook.metadata.generation;
    let old = webhook.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let ready = match problem {
        None => condition::ready(
            true,
            reason::READY,
            format!(
                "{} repositories deliver to {}",
                hooks.len(),
                webhook.spec.delivery_url()
            ),
            generation,
            Time(Timestamp::now()),
        ),
        Some(problem) => condition::ready(
            false,
            problem.reason,
            problem.message.chars().take(2000).collect::<String>(),
            generation,
            Time(Timestamp::now()),
        ),
    };
    condition::set(&mut conditions, ready);
    if conditions == old.conditions && old.hooks == hooks && old.observed_generation == generation {
        return Ok(());
    }
    let api = Api::<GitHubWebhook>::namespaced(
        context.client.clone(),
        &webhook.namespace().unwrap_or_default(),
    );
    // Server-side apply as this controller: it owns `Ready`, `observedGeneration` and `hooks`
    // (an empty list empties them), and leaves conditions of other writers (the proxy's) alone.
    let ready = condition::find(&conditions, condition::READY).cloned();
    let status = json!({
        "apiVersion": "sekisho.dev/v1alpha1",
        "kind": "GitHubWebhook",
        "metadata": {"name": webhook.name_any()},
        "status": {
            "conditions": ready.into_iter().collect::<Vec<_>>(),
            "observedGeneration": generation,
            "hooks": hooks,
        }
    });
    api.patch_status(
        &webhook.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(status),
    )
    .await?;
    Ok(())
}

/// Records an Event on the object (and logs it).
async fn event(
    context: &Context,
    webhook: &GitHubWebhook,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    crate::event::record(&context.recorder, webhook, type_, reason, message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_the_first_reason_and_each_message_once_up_to_five() {
        assert_eq!(summarize(&[]), None);
        let mut problems = vec![
            Problem::new(reason::INSTALLATION_NOT_FOUND, "a"),
            Problem::new(reason::GITHUB_ERROR, "b"),
            Problem::new(reason::GITHUB_ERROR, "a"),
        ];
        assert_eq!(
            summarize(&problems),
            Some(Problem::new(reason::INSTALLATION_NOT_FOUND, "a; b"))
        );
        problems.extend(["c", "d", "e", "f", "g"].map(|m| Problem::new(reason::GITHUB_ERROR, m)));
        assert_eq!(
            summarize(&problems).map(|p| p.message),
            Some("a; b; c; d; e; and 2 more".to_owned())
        );
    }
}
