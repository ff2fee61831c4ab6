//! The TLS front door: versions, ALPN, SNI and session resumption.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::support::*;

fn config(certs: &str, upstream: &Upstream) -> String {
    format!(
        "{certs}upstreams:
  app: {{endpoints: ['{url}']}}
hosts:
  - host: app.test
    public: true
    default: app
  - host: '*.wild.test'
    public: true
    default: app
",
        url = upstream.url()
    )
}

async fn handshake(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("handshake")
}

#[tokio::test]
async fn tls12_and_tls13_both_negotiate_with_h2_or_http11_by_alpn() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let proxy = Proxy::start(&config(&certificates_yaml(&[(cert, key)]), &app));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let mut client = client_config(&pki, version);
            client.alpn_protocols = vec![alpn.to_vec()];
            let tls = handshake(Arc::new(client), proxy.https(), "app.test").await;
            let (_, session) = tls.get_ref();
            assert_eq!(session.protocol_version(), Some(version.version));
            assert_eq!(session.alpn_protocol(), Some(alpn));
        }
    }
}

#[tokio::test]
async fn sni_selects_the_certificate_for_exact_and_wildcard_names() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let exact = pki.write_leaf("exact", &["app.test"]);
    let wild = pki.write_leaf("wild", &["*.wild.test"]);
    let exact_der = pem_to_der(&std::fs::read_to_string(&exact.0).unwrap());
    let wild_der = pem_to_der(&std::fs::read_to_string(&wild.0).unwrap());
    let proxy = Proxy::start(&config(&certificates_yaml(&[exact, wild]), &app));
    assert_eq!(
        served_certificate(&pki, proxy.https(), "app.test").await,
        exact_der
    );
    assert_eq!(
        served_certificate(&pki, proxy.https(), "a.wild.test").await,
        wild_der
    );
    let client = TlsClient::new(&pki, proxy.https(), true);
    assert_eq!(client.get("b.wild.test", "/").await.0, http::StatusCode::OK);
}

#[tokio::test]
async fn a_returning_client_resumes_its_session() {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let proxy = Proxy::start(&config(&certificates_yaml(&[(cert, key)]), &app));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut client = client_config(&pki, version);
        client.resumption = Resumption::in_memory_sessions(16);
        let client = Arc::new(client);
        let first = handshake(client.clone(), proxy.https(), "app.test").await;
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // TLS 1.3 tickets arrive after the handshake: read until the client has seen them.
        drive_until_tickets(first).await;
        let second = handshake(client, proxy.https(), "app.test").await;
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{:?}",
            version.version
        );
    }
}

async fn drive_until_tickets(mut tls: tokio_rustls::client::TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A request makes the server flush its tickets before the response.
    tls.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut sink),
    )
    .await;
}

/// A client that trusts the test CA and speaks only `version`.
fn client_config(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_to_der(&pki.ca_pem)).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends `request` in the same write as the client's last handshake flight (TLS 1.3 clients
/// often do), then reads until the peer closes or `limit` passes; returns what was read.
fn request_with_the_finished_flight(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    request: &[u8],
    limit: std::time::Duration,
) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(limit)).unwrap();
    let name = ServerName::try_from("app.test").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    // Queued before the handshake ends: rustls sends it right behind the Finished message.
    conn.writer().write_all(request).unwrap();
    while conn.is_handshaking() || conn.wants_write() {
        if conn.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_request_that_arrives_with_the_handshakes_last_flight_is_answered() {
    let pki = Pki::new();
    let upstream = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let proxy = Proxy::start(&config(&certificates_yaml(&[(cert, key)]), &upstream));
    let client = pki.client_config(&[b"http/1.1"]);
    let addr = proxy.https();
    let answers = tokio::task::spawn_blocking(move || {
        (0..8)
            .map(|_| {
                request_with_the_finished_flight(
                    client.clone(),
                    addr,
                    b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
                    std::time::Duration::from_secs(5),
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in answers {
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "no answer within 5 s: {answer:?}"
        );
    }
}
