//! kube-runtime's `watcher` sees objects added, modified and deleted.

use std::{fmt::Debug, time::Duration};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use k8s_openapi::api::{core::v1::Secret, networking::v1::Ingress};
use kube::{
    Resource, ResourceExt,
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher::{self, Event},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{env, object::ingress, within};

const EVENT: Duration = Duration::from_secs(30);
const REVISION: &str = "sekisho.dev/revision";

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Waits for the first event that `wanted` picks, skipping others.
async fn next_matching<K: Debug>(
    events: &mut Events<K>,
    what: &str,
    wanted: impl Fn(&Event<K>) -> bool,
) -> anyhow::Result<()> {
    within(EVENT, what, async {
        while let Some(event) = events.try_next().await? {
            if wanted(&event) {
                return Ok(());
            }
        }
        bail!("the watch stream ended")
    })
    .await
}

fn revision<K: ResourceExt>(object: &K) -> Option<&str> {
    object.labels().get(REVISION).map(String::as_str)
}

/// Creates `object`, relabels it and deletes it, and checks that a watcher started before
/// sees each step.
async fn watcher_sees_lifecycle<K>(api: Api<K>, mut object: K) -> anyhow::Result<()>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let name = object.name_any();
    object.labels_mut().insert(REVISION.into(), "1".into());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events: Events<K> = watcher::watcher(api.clone(), config).boxed();
    next_matching(&mut events, "the initial list", |event| {
        matches!(event, Event::InitDone)
    })
    .await?;

    api.create(&PostParams::default(), &object).await?;
    next_matching(&mut events, "the object to be added", |event| {
        matches!(event, Event::Apply(o) if o.name_any() == name && revision(o) == Some("1"))
    })
    .await
    .context("after create")?;

    let patch = serde_json::json!({ "metadata": { "labels": { REVISION: "2" } } });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    next_matching(&mut events, "the object to be modified", |event| {
        matches!(event, Event::Apply(o) if o.name_any() == name && revision(o) == Some("2"))
    })
    .await
    .context("after update")?;

    api.delete(&name, &DeleteParams::default()).await?;
    next_matching(
        &mut events,
        "the object to be deleted",
        |event| matches!(event, Event::Delete(o) if o.name_any() == name),
    )
    .await
    .context("after delete")
}

#[tokio::test]
async fn watcher_sees_a_secret_added_modified_and_deleted() -> anyhow::Result<()> {
    let env = env().await?;
    let namespace = env.namespace("watch-secret").await?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("watched".into()),
            ..Default::default()
        },
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Secret::default()
    };
    watcher_sees_lifecycle(Api::namespaced(env.client().await?, &namespace), secret).await
}

#[tokio::test]
async fn watcher_sees_an_ingress_added_modified_and_deleted() -> anyhow::Result<()> {
    let env = env().await?;
    let namespace = env.namespace("watch-ingress").await?;
    let ingresses: Api<Ingress> = Api::namespaced(env.client().await?, &namespace);
    watcher_sees_lifecycle(ingresses, ingress("watched", "watched.example.test", "/")).await
}
