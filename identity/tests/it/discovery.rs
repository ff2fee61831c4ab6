use sekisho_identity::oidc::{DiscoveryError, Provider};

use crate::support::{DevIdp, bounded, http};

#[tokio::test]
async fn discovery_finds_the_endpoints_and_the_signing_keys() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    assert_eq!(provider.config().name, "devidp");
    assert!(!provider.jwks().keys().keys().is_empty());
    let (url, pending) = provider.begin_login(&url::Url::parse(crate::support::REDIRECT_URI)?);
    assert!(
        url.as_str().starts_with(&format!("{}/auth?", idp.issuer)),
        "{url}"
    );
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], "sekisho");
    assert_eq!(query["scope"], "openid email profile groups");
    assert!(query.contains_key("nonce") && query.contains_key("state"));
    assert_eq!(pending.provider(), "devidp");
    Ok(())
}

#[tokio::test]
async fn discovery_of_an_issuer_that_does_not_answer_fails() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("secret"), "s")?;
    let yaml = format!(
        "name: gone\nissuer: http://{addr}\nclient_id: c\nclient_secret_file: {}\n",
        dir.path().join("secret").display()
    );
    let config = serde_yaml_ng::from_str(&yaml)?;
    let err = bounded("discovery", Provider::discover(config, &http()))
        .await?
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::Discovery { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_missing_client_secret_file_is_reported_with_its_path() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let mut config = idp.config();
    config.client_secret_file = "/nonexistent/sekisho-secret".into();
    let err = Provider::discover(config, &http()).await.unwrap_err();
    assert!(
        matches!(&err, DiscoveryError::ClientSecretUnreadable { path, .. } if path.ends_with("sekisho-secret")),
        "{err:?}"
    );
    Ok(())
}
