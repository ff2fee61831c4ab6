//! A private control plane is gone once its `TestEnv` is dropped.

use anyhow::ensure;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube_testenv::TestEnv;

#[tokio::test]
async fn private_control_plane_is_torn_down_when_dropped() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let namespace = env.namespace("lifecycle").await?;
    Api::<Namespace>::all(env.client().await?)
        .get(&namespace)
        .await?;
    let dir = env.dir().to_path_buf();
    let address = env.server().trim_start_matches("https://").to_owned();

    drop(env);
    ensure!(!dir.exists(), "{} is still there", dir.display());
    let connected = tokio::net::TcpStream::connect(&address).await;
    ensure!(
        connected.is_err(),
        "kube-apiserver still listens on {address}"
    );
    Ok(())
}
