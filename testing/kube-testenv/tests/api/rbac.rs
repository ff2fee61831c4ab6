//! Real authentication and RBAC: the admin is who its certificate says, and a
//! ServiceAccount gets exactly what its Role grants.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    core::v1::{ConfigMap, Namespace, Secret},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Client,
    api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams},
};

use crate::{REACTION, env, eventually, status_code};

async fn whoami(client: Client) -> anyhow::Result<(String, Vec<String>)> {
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review
        .status
        .and_then(|status| status.user_info)
        .context("no user info in the SelfSubjectReview")?;
    Ok((
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn admin_client_authenticates_as_a_system_masters_user() -> anyhow::Result<()> {
    let (user, groups) = whoami(env().await?.client().await?).await?;
    ensure!(user == "sekisho-test-admin", "user {user}");
    ensure!(
        groups.iter().any(|g| g == "system:masters"),
        "groups {groups:?}"
    );
    Ok(())
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

/// Asserts that `result` failed with 403 Forbidden.
fn assert_forbidden<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
) -> anyhow::Result<()> {
    match result {
        Err(error) if status_code(&error) == Some(403) => Ok(()),
        other => anyhow::bail!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn service_account_gets_what_its_role_grants_and_is_denied_the_rest() -> anyhow::Result<()> {
    let env = env().await?;
    let admin = env.client().await?;
    let namespace = env.namespace("rbac").await?;

    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &Role {
                metadata: named("secret-reader"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["secrets".into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..PolicyRule::default()
                }]),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: named("reader-reads-secrets"),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "secret-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "reader".into(),
                    namespace: Some(namespace.clone()),
                    ..Subject::default()
                }]),
            },
        )
        .await?;
    Api::<Secret>::namespaced(admin, &namespace)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: named("tls"),
                string_data: Some([("k".to_owned(), "v".to_owned())].into()),
                ..Secret::default()
            },
        )
        .await?;

    let reader = env.service_account_client(&namespace, "reader").await?;
    let (user, _) = whoami(reader.clone()).await?;
    ensure!(
        user == format!("system:serviceaccount:{namespace}:reader"),
        "user {user}"
    );

    // Allowed: what the Role grants. The authorizer learns of new bindings through a
    // watch, so the first request may come too early.
    let secrets = Api::<Secret>::namespaced(reader.clone(), &namespace);
    eventually(REACTION, "the reader to get the Secret", || async {
        Ok(secrets.get("tls").await?)
    })
    .await?;
    let listed = secrets.list(&ListParams::default()).await?;
    ensure!(
        listed.items.len() == 1,
        "listed {} Secrets",
        listed.items.len()
    );

    // Denied: everything else.
    assert_forbidden(
        "create a Secret",
        secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: named("new"),
                    ..Secret::default()
                },
            )
            .await,
    )?;
    assert_forbidden(
        "delete a Secret",
        secrets.delete("tls", &DeleteParams::default()).await,
    )?;
    assert_forbidden(
        "list ConfigMaps",
        Api::<ConfigMap>::namespaced(reader.clone(), &namespace)
            .list(&ListParams::default())
            .await,
    )?;
    assert_forbidden(
        "list Secrets in another namespace",
        Api::<Secret>::namespaced(reader.clone(), "default")
            .list(&ListParams::default())
            .await,
    )?;
    assert_forbidden(
        "list namespaces",
        Api::<Namespace>::all(reader)
            .list(&ListParams::default())
            .await,
    )?;
    Ok(())
}
