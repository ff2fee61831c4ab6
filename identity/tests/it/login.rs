use sekisho_identity::oidc::{LoginError, PendingLogin, RawIdToken};
use url::Url;

use crate::support::{
    Browser, CLIENT_SECRET, DevIdp, REDIRECT_URI, bounded, code_and_state, log_in, resign,
    tamper_claims,
};

#[tokio::test]
async fn alice_logs_in_and_gets_her_email_groups_and_hosted_domain() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    assert_eq!(login.subject, "alice");
    assert_eq!(login.email.as_deref(), Some("alice@uniqe.example"));
    assert!(login.email_verified);
    assert_eq!(login.groups, ["staff", "admins"]);
    assert_eq!(login.hosted_domain.as_deref(), Some("uniqe.example"));
    assert_eq!(login.issuer, idp.issuer);
    assert!(login.id_token_expires_at > std::time::SystemTime::now());
    // devidp sends auth_time only when asked (max_age); nothing here asks.
    assert!(login.claims.contains_key("hd"));
    assert!(!format!("{login:?}").contains(login.id_token.as_str()));
    Ok(())
}

#[tokio::test]
async fn a_returned_state_that_does_not_match_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let (auth_url, pending) = provider.begin_login(&Url::parse(REDIRECT_URI)?);
    let callback = Browser::new()
        .login(&auth_url, "alice@uniqe.example")
        .await?;
    let (code, state) = code_and_state(&callback);
    let err = provider
        .finish_login(&pending, &code, &format!("{state}x"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::StateMismatch), "{err:?}");
    // The state of another login is refused as well.
    let (_, other) = provider.begin_login(&Url::parse(REDIRECT_URI)?);
    let err = provider
        .finish_login(&other, &code, &state)
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::StateMismatch), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_code_used_twice_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let (auth_url, pending) = provider.begin_login(&Url::parse(REDIRECT_URI)?);
    let callback = Browser::new().login(&auth_url, "bob@uniqe.example").await?;
    let (code, state) = code_and_state(&callback);
    let first = bounded(
        "first exchange",
        provider.finish_login(&pending, &code, &state),
    )
    .await?;
    assert_eq!(first?.subject, "bob");
    let err = bounded(
        "second exchange",
        provider.finish_login(&pending, &code, &state),
    )
    .await?
    .unwrap_err();
    assert!(matches!(err, LoginError::CodeExchange(_)), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn an_id_token_for_another_logins_nonce_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let redirect = Url::parse(REDIRECT_URI)?;
    let (auth_url, pending) = provider.begin_login(&redirect);
    let (_, other) = provider.begin_login(&redirect);
    let callback = Browser::new()
        .login(&auth_url, "alice@uniqe.example")
        .await?;
    let (code, state) = code_and_state(&callback);
    // This login's state and PKCE verifier, so the exchange succeeds, but the other login's
    // nonce: the ID token must be refused.
    let mut mixed = serde_json::to_value(&pending)?;
    mixed["nonce"] = serde_json::to_value(&other)?["nonce"].clone();
    let mixed: PendingLogin = serde_json::from_value(mixed)?;
    let err = provider
        .finish_login(&mixed, &code, &state)
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidIdToken(_)), "{err:?}");
    assert!(format!("{:?}", err).contains("nonce"), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_tampered_or_hmac_signed_id_token_is_refused() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let redirect = Url::parse(REDIRECT_URI)?;
    let (auth_url, pending) = provider.begin_login(&redirect);
    let callback = Browser::new().login(&auth_url, "bob@uniqe.example").await?;
    let (code, state) = code_and_state(&callback);
    let login = provider.finish_login(&pending, &code, &state).await?;
    // The untouched token verifies again, so the failures below are the tampering's.
    provider.verify_id_token(&login.id_token, &pending).await?;

    let tampered = tamper_claims(login.id_token.as_str(), |claims| {
        claims.insert("groups".into(), serde_json::json!(["staff", "admins"]));
    });
    let err = provider
        .verify_id_token(&RawIdToken::new(tampered), &pending)
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidIdToken(_)), "{err:?}");

    // Signed with the client secret (algorithm confusion): never accepted.
    let hmac = resign(login.id_token.as_str(), "HS256", CLIENT_SECRET.as_bytes());
    let err = provider
        .verify_id_token(&RawIdToken::new(hmac), &pending)
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidIdToken(_)), "{err:?}");

    let none = resign(login.id_token.as_str(), "none", b"");
    let err = provider
        .verify_id_token(&RawIdToken::new(none), &pending)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoginError::InvalidIdToken(_) | LoginError::MalformedIdToken(_)
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_google_provider_refuses_an_unverified_email() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.google_config(&[])).await?;
    let err = log_in(&provider, "mallory@uniqe.example")
        .await?
        .unwrap_err();
    assert!(matches!(err, LoginError::EmailNotVerified), "{err:?}");
    // A verified user of the same provider passes.
    let bob = log_in(&provider, "bob@uniqe.example").await??;
    assert_eq!(bob.subject, "bob");
    Ok(())
}

#[tokio::test]
async fn a_google_provider_refuses_a_hosted_domain_outside_its_list() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.google_config(&["uniqe.example"])).await?;
    let alice = log_in(&provider, "alice@uniqe.example").await??;
    assert_eq!(alice.hosted_domain.as_deref(), Some("uniqe.example"));
    // Carol has no hosted domain at all.
    let err = log_in(&provider, "carol@elsewhere.example")
        .await?
        .unwrap_err();
    assert!(
        matches!(err, LoginError::HostedDomainNotAllowed(None)),
        "{err:?}"
    );

    let provider = idp
        .provider(idp.google_config(&["elsewhere.example"]))
        .await?;
    let err = log_in(&provider, "alice@uniqe.example").await?.unwrap_err();
    assert!(
        matches!(&err, LoginError::HostedDomainNotAllowed(Some(hd)) if hd == "uniqe.example"),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn end_session_url_carries_the_id_token_hint() -> anyhow::Result<()> {
    let idp = DevIdp::start(&[]).await?;
    let provider = idp.provider(idp.config()).await?;
    let login = log_in(&provider, "alice@uniqe.example").await??;
    let after = Url::parse("https://auth.localhost:8443/")?;
    let url = provider
        .end_session_url(&login.id_token, &after, "st4te")
        .expect("devidp advertises end_session_endpoint");
    assert!(
        url.as_str()
            .starts_with(&format!("{}/session/end?", idp.issuer)),
        "{url}"
    );
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["id_token_hint"], login.id_token.as_str());
    assert_eq!(query["post_logout_redirect_uri"], after.as_str());
    assert_eq!(query["state"], "st4te");
    Ok(())
}
