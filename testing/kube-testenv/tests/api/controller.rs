//! kube-controller-manager runs: a Deployment gets its ReplicaSet.

use std::collections::BTreeMap;

use anyhow::{bail, ensure};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, ReplicaSet},
        core::v1::{Container, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::{REACTION, env, eventually};

#[tokio::test]
async fn deployment_gets_a_replica_set_from_the_controller_manager() -> anyhow::Result<()> {
    let env = env().await?;
    let namespace = env.namespace("deployment").await?;
    let client = env.client().await?;
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);

    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                // There is no node: the image is never pulled.
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: Some("registry.invalid/web:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let created = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &deployment)
        .await?;
    let uid = created.metadata.uid.expect("the server sets a uid");

    let replica_sets = Api::<ReplicaSet>::namespaced(client, &namespace);
    let replica_set = eventually(REACTION, "a ReplicaSet owned by the Deployment", || async {
        let list = replica_sets.list(&ListParams::default()).await?;
        match list.items.into_iter().find(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.uid == uid && owner.controller == Some(true))
        }) {
            Some(rs) => Ok(rs),
            None => bail!("no ReplicaSet yet"),
        }
    })
    .await?;
    let spec = replica_set.spec.expect("a ReplicaSet has a spec");
    ensure!(spec.replicas == Some(1), "replicas: {:?}", spec.replicas);
    Ok(())
}
