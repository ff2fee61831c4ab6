//! Create, read, update and delete of the objects Sekisho reads: namespaces, Secrets and
//! Ingresses.

use std::collections::BTreeMap;

use anyhow::ensure;
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret},
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
            IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
        },
    },
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::{REACTION, env, eventually, status_code};

#[tokio::test]
async fn namespace_can_be_created_read_updated_and_deleted() -> anyhow::Result<()> {
    let client = env().await?.client().await?;
    let namespaces = Api::<Namespace>::all(client);
    let name = "test-namespace-crud";

    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;

    let mut read = namespaces.get(name).await?;
    ensure!(
        read.metadata.uid.is_some(),
        "the server gave no uid: {read:?}"
    );
    read.metadata
        .labels
        .get_or_insert_default()
        .insert("sekisho.dev/test".into(), "updated".into());
    namespaces
        .replace(name, &PostParams::default(), &read)
        .await?;
    let updated = namespaces.get(name).await?;
    ensure!(
        updated
            .metadata
            .labels
            .unwrap_or_default()
            .get("sekisho.dev/test")
            == Some(&"updated".to_owned()),
        "the label was not stored"
    );

    namespaces.delete(name, &DeleteParams::default()).await?;
    // The namespace controller in kube-controller-manager empties and finalizes it.
    eventually(REACTION, "the namespace to be gone", || async {
        match namespaces.get(name).await {
            Err(error) if status_code(&error) == Some(404) => Ok(()),
            Err(error) => Err(error.into()),
            Ok(namespace) => anyhow::bail!("still there: {:?}", namespace.status),
        }
    })
    .await
}

#[tokio::test]
async fn secret_can_be_created_read_updated_and_deleted() -> anyhow::Result<()> {
    let env = env().await?;
    let namespace = env.namespace("secret").await?;
    let secrets = Api::<Secret>::namespaced(env.client().await?, &namespace);
    let data = |value: &str| {
        BTreeMap::from([(
            "session-key".to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])
    };

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("keys".into()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data("first")),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let mut read = secrets.get("keys").await?;
    ensure!(
        read.data == Some(data("first")),
        "read back {:?}",
        read.data
    );

    read.data = Some(data("second"));
    secrets
        .replace("keys", &PostParams::default(), &read)
        .await?;
    let read = secrets.get("keys").await?;
    ensure!(
        read.data == Some(data("second")),
        "read back {:?}",
        read.data
    );

    secrets.delete("keys", &DeleteParams::default()).await?;
    let error = secrets
        .get("keys")
        .await
        .expect_err("the Secret was deleted");
    ensure!(
        status_code(&error) == Some(404),
        "expected 404, got {error}"
    );
    Ok(())
}

pub(crate) fn ingress(name: &str, host: &str, path: &str) -> Ingress {
    Ingress {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: Some("sekisho".into()),
            rules: Some(vec![IngressRule {
                host: Some(host.into()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(path.into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: "app".into(),
                                port: Some(ServiceBackendPort {
                                    number: Some(8080),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

#[tokio::test]
async fn ingress_can_be_created_read_updated_and_deleted() -> anyhow::Result<()> {
    let env = env().await?;
    let namespace = env.namespace("ingress").await?;
    let ingresses = Api::<Ingress>::namespaced(env.client().await?, &namespace);

    ingresses
        .create(
            &PostParams::default(),
            &ingress("app", "app.example.test", "/"),
        )
        .await?;
    let mut read = ingresses.get("app").await?;
    let spec = read.spec.as_mut().expect("the spec was stored");
    ensure!(spec.ingress_class_name.as_deref() == Some("sekisho"));
    let rules = spec.rules.as_ref().expect("the rules were stored");
    ensure!(rules[0].host.as_deref() == Some("app.example.test"));

    spec.tls = Some(vec![IngressTLS {
        hosts: Some(vec!["app.example.test".into()]),
        secret_name: Some("app-tls".into()),
    }]);
    ingresses
        .replace("app", &PostParams::default(), &read)
        .await?;
    let read = ingresses.get("app").await?;
    let tls = read.spec.and_then(|spec| spec.tls).unwrap_or_default();
    ensure!(
        tls.first().and_then(|tls| tls.secret_name.as_deref()) == Some("app-tls"),
        "tls not stored: {tls:?}"
    );

    ingresses.delete("app", &DeleteParams::default()).await?;
    let error = ingresses
        .get("app")
        .await
        .expect_err("the Ingress was deleted");
    ensure!(
        status_code(&error) == Some(404),
        "expected 404, got {error}"
    );
    Ok(())
}
