use sekisho_identity::oidc::LogoutTokenError;

use crate::support::{DevIdp, LogoutReceiver, log_in, tamper_claims};

#[tokio::test]
async fn a_real_backchannel_logout_token_verifies_and_names_alices_session() -> anyhow::Result<()> {
    let mut receiver = LogoutReceiver::start().await?;
    let idp = DevIdp::start(&["--backchannel-logout-uri", &receiver.uri]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let sid = login.sid.clone().expect("ID token carries sid");

    let report = idp.dev_logout("alice").await?;
    assert_eq!(report["backchannel"][0]["ok"], true, "{report}");
    let token = receiver.next_token().await?;
    let logout = provider.verify_logout_token(&token).await?;
    assert_eq!(logout.sub.as_deref(), Some("alice"));
    assert_eq!(logout.sid.as_deref(), Some(sid.as_str()));
    assert!(!logout.jti.is_empty());

    // The same claims with any change no longer verify.
    let tampered = tamper_claims(&token, |claims| {
        claims.insert("sub".into(), "bob".into());
    });
    let err = provider.verify_logout_token(&tampered).await.unwrap_err();
    assert!(matches!(err, LogoutTokenError::Jws(_)), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn an_id_token_is_not_accepted_as_a_logout_token() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let err = provider
        .verify_logout_token(login.id_token.as_str())
        .await
        .unwrap_err();
    // Signed by the provider, for this client, but neither a jti nor the logout event.
    assert!(
        matches!(
            err,
            LogoutTokenError::MissingJti
                | LogoutTokenError::MissingEvent
                | LogoutTokenError::NonceForbidden
        ),
        "{err:?}"
    );
    Ok(())
}
