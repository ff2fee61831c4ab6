//! Certificates come from `kubernetes.io/tls` Secrets, are renewed in place without dropping
//! a connection, and a broken Secret changes nothing but an Event.

use anyhow::{Context as _, ensure};
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::harness::{Answer, Gate, apply, number, until};

/// A public site for `host` to Service `web`, with its certificate from Secret `secret`.
fn site(gate: &Gate, host: &str, secret: &str) -> k8s_openapi::api::networking::v1::Ingress {
    gate.site("site", host)
        .policy("public")
        .tls(secret)
        .path("/", "Prefix", "web", number(80))
        .build()
}

/// The DER of the first certificate in `pem`.
fn der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    Ok(rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

/// An HTTP/2 connection to the proxy for `host`, trusting the test CA.
async fn h2(
    gate: &Gate,
    host: &str,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(gate.https).await?;
    let tls = TlsConnector::from(gate.pki.client_config(&[b"h2"])?)
        .connect(ServerName::try_from(host.to_owned())?, tcp)
        .await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    host: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let response = sender
        .send_request(http::Request::get(format!("https://{host}/")).body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn a_renewed_secret_is_served_and_an_open_http2_connection_survives_it() -> anyhow::Result<()>
{
    let gate = Gate::start("renewal").await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    let first = der(&gate.tls_secret("site-tls", &[&host]).await?)?;
    apply(&gate.api(), &site(&gate, &host, "site-tls")).await?;
    until("the Secret's certificate to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(
            answer.status == StatusCode::OK && answer.certificate == first,
            "{answer:?}"
        );
        Ok(answer)
    })
    .await?;
    let mut open = h2(&gate, &host).await?;
    let (status, body) = send(&mut open, &host).await?;
    assert_eq!(status, StatusCode::OK, "{body}");

    // cert-manager renews: same Secret, new certificate and key.
    let second = der(&gate.tls_secret("site-tls", &[&host]).await?)?;
    assert_ne!(first, second);
    until("the renewed certificate to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.certificate == second, "still the old certificate");
        Ok(answer)
    })
    .await?;
    let (status, body) = send(&mut open, &host)
        .await
        .context("the connection opened before the renewal still works")?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("upstream: web\n"), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_broken_secret_is_told_on_the_ingress_and_the_last_good_certificate_keeps_serving()
-> anyhow::Result<()> {
    let gate = Gate::start("broken-secret").await?;
    let _web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    let good = der(&gate.tls_secret("site-tls", &[&host]).await?)?;
    apply(&gate.api(), &site(&gate, &host, "site-tls")).await?;
    until("the Secret's certificate to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.certificate == good, "{answer:?}");
        Ok(answer)
    })
    .await?;

    // A key that belongs to another certificate.
    let other = gate.pki.leaf(&[&host])?;
    let mut broken: Secret = gate.api::<Secret>().get("site-tls").await?;
    broken.metadata.managed_fields = None;
    broken.metadata.resource_version = None;
    broken
        .data
        .get_or_insert_default()
        .insert("tls.key".into(), ByteString(other.key_pem.into_bytes()));
    apply(&gate.api(), &broken).await?;
    until("an Event on the Ingress", || async {
        let reasons = gate.event_reasons("site").await?;
        ensure!(reasons.iter().any(|r| r == "BadCertificate"), "{reasons:?}");
        Ok(Answer::none())
    })
    .await?;
    let answer = gate.get(&host, "/").await?;
    assert_eq!(answer.certificate, good, "the last good certificate serves");
    let failures = gate
        .metric(r#"sekisho_certificate_reloads_total{result="failure"}"#)
        .await?;
    assert!(failures >= 1.0, "counted: {failures}");
    assert_eq!(answer.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_default_certificate_answers_names_no_ingress_covers() -> anyhow::Result<()> {
    let gate = Gate::start("default-cert").await?;
    let fallback = format!("fallback.{}.test", gate.namespace);
    // The harness names `<namespace>/default-tls` as the default certificate.
    let default = der(&gate.tls_secret("default-tls", &[&fallback]).await?)?;
    let answer = until("the default certificate to be served", || async {
        let answer = gate.get(&fallback, "/").await?;
        ensure!(answer.certificate == default, "another certificate");
        Ok(answer)
    })
    .await?;
    // No Ingress names the host: the certificate answers, the route does not.
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    Ok(())
}
