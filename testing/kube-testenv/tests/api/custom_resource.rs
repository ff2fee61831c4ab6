//! A CustomResourceDefinition generated from a Rust type is served and enforced.

use std::time::Duration;

use anyhow::{bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    CustomResource, CustomResourceExt as _,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{env, eventually, status_code};

/// A stand-in for Sekisho's own resources; its group is used by no other test.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "testenv.sekisho.dev",
    version = "v1alpha1",
    kind = "Gate",
    namespaced
)]
struct GateSpec {
    hosts: Vec<String>,
    replicas: i32,
}

const ESTABLISHED: Duration = Duration::from_secs(30);

#[tokio::test]
async fn custom_resource_definition_from_a_rust_type_serves_and_validates_objects()
-> anyhow::Result<()> {
    let env = env().await?;
    let client = env.client().await?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = Gate::crd();
    let crd_name = crd
        .metadata
        .name
        .clone()
        .expect("a generated CRD has a name");
    crds.patch(
        &crd_name,
        &PatchParams::apply("kube-testenv").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    eventually(ESTABLISHED, "the CRD to be Established", || async {
        let crd = crds.get_status(&crd_name).await?;
        let established = crd
            .status
            .and_then(|status| status.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !established {
            bail!("not Established yet");
        }
        Ok(())
    })
    .await?;

    let namespace = env.namespace("crd").await?;
    let gates = Api::<Gate>::namespaced(client.clone(), &namespace);
    let spec = GateSpec {
        hosts: vec!["app.example.test".into()],
        replicas: 2,
    };
    // Discovery of a just-established group can lag by a moment: retry the first create.
    eventually(ESTABLISHED, "a Gate to be created", || async {
        Ok(gates
            .create(&PostParams::default(), &Gate::new("front", spec.clone()))
            .await?)
    })
    .await?;
    let read = gates.get("front").await?;
    ensure!(read.spec == spec, "read back {:?}", read.spec);

    // The schema generated from GateSpec is enforced by the API server.
    let gvk = GroupVersionKind::gvk("testenv.sekisho.dev", "v1alpha1", "Gate");
    let resource = ApiResource::from_gvk(&gvk);
    let untyped = Api::<DynamicObject>::namespaced_with(client, &namespace, &resource);
    let mut bad = DynamicObject::new("bad", &resource);
    bad.data = serde_json::json!({ "spec": { "hosts": ["x.example.test"], "replicas": "two" } });
    let error = untyped
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("replicas must be an integer");
    ensure!(
        status_code(&error) == Some(422),
        "expected 422, got {error}"
    );
    Ok(())
}
