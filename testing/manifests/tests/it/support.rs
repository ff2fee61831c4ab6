//! Where the tools and the manifests are, rendering, and applying with server-side dry-run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube_testenv::TestEnv;
use serde::Deserialize as _;
use serde_json::Value;
use tokio::sync::OnceCell;

/// The namespace the base, the overlay and the chart's renders install into.
pub(crate) const NAMESPACE: &str = "sekisho-system";
/// The field manager of the tests' applies.
const MANAGER: &str = "sekisho-manifests-test";
/// The script that builds the tools and fetches the CRDs, for the messages when they are
/// missing.
const BUILD: &str = "testing/deploy-tools/build.sh";

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// Where `testing/deploy-tools/build.sh` puts what it makes.
fn tools_dir() -> PathBuf {
    match std::env::var_os("SEKISHO_DEPLOY_TOOLS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo().join(".cache/deploy-tools"),
    }
}

/// A file that `testing/deploy-tools/build.sh` makes, which must be there.
fn built(relative: &str) -> anyhow::Result<PathBuf> {
    let path = tools_dir().join(relative);
    ensure!(
        path.is_file(),
        "{} is missing: run {BUILD} (scripts/test.sh does), or point SEKISHO_DEPLOY_TOOLS at \
         where it put its output",
        path.display()
    );
    Ok(path)
}

/// Runs a tool from the repository's root and returns what it printed on stdout.
pub(crate) fn run(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let program = built(&format!("bin/{tool}"))?;
    let output = Command::new(&program)
        .args(args)
        .current_dir(repo())
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    let stdout = String::from_utf8(output.stdout).context("stdout is not UTF-8")?;
    if !output.status.success() {
        bail!(
            "{tool} {} failed ({}):\n{}{stdout}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub(crate) fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).context("parse a YAML document")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// `helm template` of the chart in `NAMESPACE`, CRDs included, with the values files given.
pub(crate) fn helm_template(values: &[&Path]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec![
        "template",
        "sekisho",
        "deploy/helm/sekisho",
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    for file in values {
        args.push("--values");
        args.push(file.to_str().context("a values path that is not UTF-8")?);
    }
    documents(&run("helm", &args)?)
}

/// `kustomize build` of a directory of the repository.
pub(crate) fn kustomize_build(dir: &str) -> anyhow::Result<Vec<Value>> {
    documents(&run("kustomize", &["build", dir])?)
}

/// The chart's test values files (`ci/*-values.yaml`), at least one.
pub(crate) fn ci_values() -> anyhow::Result<Vec<PathBuf>> {
    let dir = repo().join("deploy/helm/sekisho/ci");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with("-values.yaml") {
            files.push(path);
        }
    }
    files.sort();
    ensure!(!files.is_empty(), "no *-values.yaml in {}", dir.display());
    Ok(files)
}

/// `kind/namespace/name` of an object, for messages and comparisons.
pub(crate) fn id(object: &Value) -> String {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    format!(
        "{}/{}/{}",
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name")
    )
}

/// The object of `kind` named `name` among `objects`.
pub(crate) fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} among {} objects", objects.len()))
}

/// The CRDs a file of `testing/deploy-tools/build.sh`'s `crds/` holds.
fn third_party_crds(file: &str) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let path = built(&format!("crds/{file}"))?;
    let text = std::fs::read_to_string(&path)?;
    let crds = documents(&text)?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<Vec<CustomResourceDefinition>, _>>()
        .with_context(|| format!("{}: not CustomResourceDefinitions", path.display()))?;
    ensure!(!crds.is_empty(), "{}: no CRDs", path.display());
    Ok(crds)
}

/// cert-manager's CRDs and the Prometheus operator's ServiceMonitor CRD.
pub(crate) fn cert_manager_and_prometheus_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut crds = third_party_crds("cert-manager.yaml")?;
    crds.extend(third_party_crds("servicemonitors.yaml")?);
    Ok(crds)
}

static PREPARED: OnceCell<()> = OnceCell::const_new();

/// The shared control plane with every CRD the manifests may name installed (Sekisho's,
/// cert-manager's, the Prometheus operator's ServiceMonitor) and `NAMESPACE` created, so that
/// namespaced objects can be applied with dry-run. A client of the calling test's runtime.
pub(crate) async fn cluster() -> anyhow::Result<kube::Client> {
    let env = TestEnv::shared().await?;
    PREPARED
        .get_or_try_init(|| async {
            let mut crds = sekisho_api::crd::all();
            crds.extend(cert_manager_and_prometheus_crds()?);
            env.install_crds(&crds, MANAGER).await?;
            let namespace: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": NAMESPACE},
            }))?;
            match Api::<Namespace>::all(env.client().await?)
                .create(&PostParams::default(), &namespace)
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(error) => Err(anyhow::Error::new(error).context("create the namespace")),
            }
        })
        .await?;
    Ok(env.client().await?)
}

/// Applies every object by server-side apply with dry-run and strict field validation (an
/// unknown or duplicated field is an error), and returns one line per object the API server
/// refused. Nothing is stored.
pub(crate) async fn refused(client: &kube::Client, objects: &[Value]) -> Vec<String> {
    let mut refused = Vec::new();
    for object in objects {
        if let Err(error) = apply_dry_run(client, object).await {
            refused.push(format!("{}: {error:#}", id(object)));
        }
    }
    refused
}

async fn apply_dry_run(client: &kube::Client, object: &Value) -> anyhow::Result<()> {
    let api_version = object["apiVersion"].as_str().context("no apiVersion")?;
    let kind = object["kind"].as_str().context("no kind")?;
    let name = object["metadata"]["name"].as_str().context("no name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .context("a namespaced object without a namespace")?;
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
    };
    let params = PatchParams::apply(MANAGER).dry_run().validation_strict();
    match api.patch(name, &params, &Patch::Apply(object)).await {
        Ok(_) => Ok(()),
        // The API server's own words: its Status repeats them.
        Err(kube::Error::Api(status)) => bail!("{} ({})", status.message, status.code),
        Err(error) => Err(error.into()),
    }
}
