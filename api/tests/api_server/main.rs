//! Sekisho's CRDs, installed from the committed files in `deploy/crds/` into a real
//! kube-apiserver (`kube-testenv`), serve and refuse what they should: the examples in
//! `deploy/examples/crds/` are accepted, the fixtures in `tests/invalid/` are refused with a
//! message naming the field, the status subresource and the printer columns work.
//!
//! Every test of this binary shares one control plane; namespaced objects live in a namespace
//! of the test's own, cluster-scoped ones have names no other test uses. Every wait is a poll
//! with a deadline.

mod object;
mod status;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube_testenv::TestEnv;
use serde_json::Value;

/// How long the API server gets to establish a CRD and serve its resource.
const ESTABLISHED: Duration = Duration::from_secs(60);

const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The CRDs as installed, by kind.
struct Installed {
    client: Client,
    env: &'static TestEnv,
    kinds: BTreeMap<String, Kind>,
}

/// What the tests need to reach one kind.
struct Kind {
    resource: ApiResource,
    namespaced: bool,
    crd: CustomResourceDefinition,
}

impl Installed {
    /// The API of `object`'s kind, in `namespace` when the kind is namespaced.
    fn api_for(&self, object: &Value, namespace: &str) -> anyhow::Result<Api<DynamicObject>> {
        let kind = object["kind"]
            .as_str()
            .context("an object without a kind")?;
        let found = self
            .kinds
            .get(kind)
            .with_context(|| format!("no CRD for kind {kind}"))?;
        Ok(if found.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &found.resource)
        } else {
            Api::all_with(self.client.clone(), &found.resource)
        })
    }
}

/// The CRDs that `deploy/crds/kustomization.yaml` lists, read from their files.
fn committed_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let dir = Path::new(REPOSITORY).join("deploy/crds");
    let kustomization: Value = read_yaml(&dir.join("kustomization.yaml"))?;
    let resources = kustomization["resources"]
        .as_array()
        .context("kustomization.yaml lists no resources")?;
    let mut crds = Vec::new();
    for resource in resources {
        let file = resource
            .as_str()
            .context("a resource that is not a file name")?;
        crds.push(serde_json::from_value(read_yaml(&dir.join(file))?)?);
    }
    ensure!(
        !crds.is_empty(),
        "deploy/crds/kustomization.yaml lists no CRD"
    );
    Ok(crds)
}

/// Installs the committed CRDs (server-side apply, so every test may) and waits until each
/// is Established and its resource is served.
async fn install() -> anyhow::Result<Installed> {
    let env = TestEnv::shared().await?;
    let client = env.client().await?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut kinds = BTreeMap::new();
    for crd in committed_crds()? {
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        crds.patch(
            &name,
            &PatchParams::apply("sekisho-api-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| anyhow::anyhow!("installing {name}: {}", said(&e)))?;
        let version = crd
            .spec
            .versions
            .first()
            .context("a CRD without versions")?;
        let resource = ApiResource {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, version.name),
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
        };
        let namespaced = crd.spec.scope == "Namespaced";
        kinds.insert(
            crd.spec.names.kind.clone(),
            Kind {
                resource,
                namespaced,
                crd,
            },
        );
    }
    for (kind, found) in &kinds {
        let name = found.crd.metadata.name.clone().unwrap_or_default();
        eventually(
            ESTABLISHED,
            &format!("{name} to be Established"),
            || async {
                let crd = crds.get_status(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                ensure!(established, "not Established yet");
                Ok(())
            },
        )
        .await?;
        // Discovery of a new resource can lag behind Established.
        let all = Api::<DynamicObject>::all_with(client.clone(), &found.resource);
        eventually(ESTABLISHED, &format!("{kind} to be served"), || async {
            Ok(all.list(&ListParams::default().limit(1)).await?)
        })
        .await?;
    }
    Ok(Installed { client, env, kinds })
}

/// What the API server said, or the error when it did not answer.
fn said(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} {}", status.code, status.message),
        other => other.to_string(),
    }
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The YAML files of a directory, sorted, with their text; fails when there are none, so a
/// moved fixture folder cannot make a test pass by checking nothing.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            files.push((path, text));
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no YAML files in {}", dir.display());
    }
    Ok(files)
}

/// Calls `attempt` until it succeeds, for at most `limit`; fails with the last error.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if start.elapsed() > limit => {
                return Err(error.context(format!("still failing after {limit:?}: {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Fails unless everything in `written` is in `read` too (the server may add defaults).
fn assert_kept(written: &Value, read: &Value, at: &str) -> anyhow::Result<()> {
    match (written, read) {
        (Value::Object(written), Value::Object(read)) => {
            for (key, value) in written {
                let child = format!("{at}.{key}");
                let kept = read
                    .get(key)
                    .with_context(|| format!("{child} was dropped"))?;
                assert_kept(value, kept, &child)?;
            }
        }
        (Value::Array(written), Value::Array(read)) => {
            ensure!(
                written.len() == read.len(),
                "{at}: {written:?} became {read:?}"
            );
            for (i, (w, r)) in written.iter().zip(read).enumerate() {
                assert_kept(w, r, &format!("{at}[{i}]"))?;
            }
        }
        _ => ensure!(written == read, "{at}: {written} became {read}"),
    }
    Ok(())
}
