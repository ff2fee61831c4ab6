use std::time::Duration;

use sekisho_identity::bearer::{BearerError, BearerIssuerConfig, BearerVerifier};

use crate::support::{CLIENT_SECRET, DevIdp, bounded, http, log_in, resign};

fn issuer_config(issuer: &str, audience: &str) -> BearerIssuerConfig {
    BearerIssuerConfig {
        issuer: issuer.to_owned(),
        audiences: vec![audience.to_owned()],
        jwks_uri: None,
        groups_claim: "groups".into(),
        max_clock_skew: Duration::from_secs(60),
        hosted_domains: Vec::new(),
    }
}

async fn start_verifier(configs: Vec<BearerIssuerConfig>) -> anyhow::Result<BearerVerifier> {
    Ok(bounded("bearer setup", BearerVerifier::new(configs, &http())).await??)
}

#[tokio::test]
async fn the_id_token_devidp_issued_verifies_as_a_bearer_token() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let verifier = start_verifier(vec![issuer_config(&idp.issuer, "sekisho")]).await?;
    let claims = verifier.verify(login.id_token.as_str()).await?;
    assert_eq!(claims.subject, "alice");
    assert_eq!(claims.email.as_deref(), Some("alice@uniqe.example"));
    assert!(claims.email_verified);
    assert_eq!(claims.groups, ["staff", "admins"]);
    assert_eq!(claims.issuer, idp.issuer);
    assert_eq!(verifier.cached_tokens(), 1);
    // The second time comes from the cache and is the same.
    assert_eq!(verifier.verify(login.id_token.as_str()).await?, claims);
    assert_eq!(verifier.cached_tokens(), 1);
    Ok(())
}

#[tokio::test]
async fn a_configured_jwks_uri_is_used_without_discovery() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "bob@uniqe.example").await??;
    let mut config = issuer_config(&idp.issuer, "sekisho");
    config.jwks_uri = Some(format!("{}/jwks", idp.issuer).parse()?);
    let verifier = start_verifier(vec![config]).await?;
    assert_eq!(
        verifier.verify(login.id_token.as_str()).await?.subject,
        "bob"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_for_another_audience_or_an_unknown_issuer_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let token = login.id_token.as_str();

    let verifier = start_verifier(vec![issuer_config(&idp.issuer, "another-api")]).await?;
    let err = verifier.verify(token).await.unwrap_err();
    assert!(matches!(err, BearerError::WrongAudience), "{err:?}");

    // Same keys, but configured under another issuer name: the token's issuer is unknown.
    let mut other = issuer_config("https://id.other.example", "sekisho");
    other.jwks_uri = Some(format!("{}/jwks", idp.issuer).parse()?);
    let verifier = start_verifier(vec![other]).await?;
    let err = verifier.verify(token).await.unwrap_err();
    assert!(matches!(err, BearerError::UnknownIssuer), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn unsigned_and_hmac_signed_tokens_are_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let verifier = start_verifier(vec![issuer_config(&idp.issuer, "sekisho")]).await?;
    for (alg, key) in [("none", &b""[..]), ("HS256", CLIENT_SECRET.as_bytes())] {
        let forged = resign(login.id_token.as_str(), alg, key);
        let err = verifier.verify(&forged).await.unwrap_err();
        assert!(matches!(err, BearerError::Jws(_)), "{alg}: {err:?}");
    }
    assert_eq!(verifier.cached_tokens(), 0);
    Ok(())
}

#[tokio::test]
async fn an_expired_token_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&["--id-token-ttl", "1"]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let mut config = issuer_config(&idp.issuer, "sekisho");
    config.max_clock_skew = Duration::ZERO;
    let verifier = start_verifier(vec![config]).await?;
    // Wait until the token's exp (whole seconds) has certainly passed.
    let exp = login.id_token_expires_at;
    bounded("the token's expiry", async {
        while std::time::SystemTime::now() < exp + Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    let err = verifier.verify(login.id_token.as_str()).await.unwrap_err();
    assert!(matches!(err, BearerError::Expired), "{err:?}");
    Ok(())
}
