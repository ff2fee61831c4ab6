//! Upstreams over TLS: verified against a configured CA, HTTP/2 chosen by ALPN, and the
//! explicitly dangerous opt-out.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::*;

/// An HTTPS upstream that answers with the HTTP version it was spoken to in.
async fn tls_upstream(
    pki: &Pki,
    names: &[&str],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (cert, key) = pki.leaf(names);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(full(format!("{:?}", req.version()))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn config(pki: &Pki, upstream: std::net::SocketAddr, tls: &str) -> String {
    let (cert, key) = pki.write_leaf("front", &["app.test"]);
    format!(
        "{certs}upstreams:
  secure:
    endpoints: ['https://{upstream}']
    tls: {tls}
hosts:
  - host: app.test
    public: true
    default: secure
",
        certs = certificates_yaml(&[(cert, key)]),
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_the_configured_ca_and_spoken_to_in_h2() {
    let pki = Pki::new();
    let ca = pki.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (upstream, _task) = tls_upstream(&pki, &["upstream.internal"]).await;
    let proxy = Proxy::start(&config(
        &pki,
        upstream,
        &format!("{{ca: '{}', server_name: upstream.internal}}", ca.display()),
    ));
    let client = TlsClient::new(&pki, proxy.https(), false);
    let (status, _, body) = client.get("app.test", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "HTTP/2.0"));
}

#[tokio::test]
async fn an_upstream_certificate_for_another_name_or_from_an_unknown_ca_is_refused() {
    let pki = Pki::new();
    let ca = pki.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (upstream, _task) = tls_upstream(&pki, &["upstream.internal"]).await;
    let wrong_name = Proxy::start(&config(
        &pki,
        upstream,
        &format!("{{ca: '{}', server_name: other.internal}}", ca.display()),
    ));
    let client = TlsClient::new(&pki, wrong_name.https(), false);
    assert_eq!(client.get("app.test", "/").await.0, StatusCode::BAD_GATEWAY);

    // System roots do not know the test CA.
    let unknown_ca = Proxy::start(&config(&pki, upstream, "{server_name: upstream.internal}"));
    let client = TlsClient::new(&pki, unknown_ca.https(), false);
    assert_eq!(client.get("app.test", "/").await.0, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn dangerous_skip_verify_accepts_any_upstream_certificate() {
    let pki = Pki::new();
    let other = Pki::new();
    let (upstream, _task) = tls_upstream(&other, &["whatever.internal"]).await;
    let proxy = Proxy::start(&config(&pki, upstream, "{dangerous_skip_verify: true}"));
    let client = TlsClient::new(&pki, proxy.https(), true);
    let (status, _, body) = client.get("app.test", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "HTTP/2.0"));
}
