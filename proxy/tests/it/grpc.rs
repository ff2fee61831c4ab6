//! gRPC through the proxy: HTTP/2 over TLS from a tonic client, h2c to a tonic upstream, with
//! unary calls, server streaming, and `grpc-status` trailers passing through.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;

use crate::support::*;

/// Every wait in this file ends within this.
const LIMIT: Duration = Duration::from_secs(10);

/// The service whose health the tests change.
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "sekisho.test.Echo";
}

/// A tonic server with the standard health service, speaking h2c on 127.0.0.1:0.
struct HealthUpstream {
    addr: SocketAddr,
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let task = tokio::spawn(async move {
            // One service needs no router (tonic's `router` feature would pull in axum).
            Server::builder()
                .serve_with_incoming(service, incoming)
                .await
                .unwrap();
        });
        Self {
            addr,
            reporter,
            task,
        }
    }
}

fn site(pki: &Pki, upstream: &HealthUpstream) -> String {
    let (cert, key) = pki.write_leaf("site", &["grpc.test"]);
    format!(
        "{certs}upstreams:
  health: {{endpoints: ['http://{addr}'], protocol: http2}}
hosts:
  - host: grpc.test
    public: true
    default: health
",
        certs = certificates_yaml(&[(cert, key)]),
        addr = upstream.addr,
    )
}

/// Dials the proxy's TLS listener whatever the URI says, with the URI's host as SNI and h2 by
/// ALPN: tonic's transport without its own TLS feature.
#[derive(Clone)]
struct ProxyConnector {
    proxy: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (proxy, tls) = (self.proxy, self.tls.clone());
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let tcp = TcpStream::connect(proxy).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

async fn health_client(pki: &Pki, proxy: &Proxy) -> HealthClient<Channel> {
    let connector = ProxyConnector {
        proxy: proxy.https(),
        tls: pki.client_config(&[b"h2"]),
    };
    let channel = Endpoint::from_static("https://grpc.test")
        .connect_timeout(LIMIT)
        .timeout(LIMIT)
        .connect_with_connector(connector)
        .await
        .expect("a gRPC channel through the proxy");
    HealthClient::new(channel)
}

fn check_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test]
async fn unary_grpc_calls_and_their_error_statuses_pass_through_to_an_h2c_upstream() {
    let pki = Pki::new();
    let upstream = HealthUpstream::start().await;
    upstream.reporter.set_serving::<Echo>().await;
    let proxy = Proxy::start(&site(&pki, &upstream));
    let mut client = health_client(&pki, &proxy).await;

    // tonic fails a call whose 200 response ends without a grpc-status trailer, so success
    // here means the trailer crossed both legs.
    let response = client
        .check(check_request(Echo::NAME))
        .await
        .expect("check succeeds");
    assert_eq!(response.get_ref().status(), ServingStatus::Serving);
    let overall = client.check(check_request("")).await.unwrap();
    assert_eq!(overall.get_ref().status(), ServingStatus::Serving);

    let error = client
        .check(check_request("sekisho.test.Unknown"))
        .await
        .expect_err("an unknown service is an error");
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert_eq!(error.message(), "service not registered");

    upstream.reporter.set_not_serving::<Echo>().await;
    let response = client.check(check_request(Echo::NAME)).await.unwrap();
    assert_eq!(response.get_ref().status(), ServingStatus::NotServing);
}

#[tokio::test]
async fn a_grpc_response_keeps_grpc_status_in_its_trailers() {
    let pki = Pki::new();
    let upstream = HealthUpstream::start().await;
    let proxy = Proxy::start(&site(&pki, &upstream));
    let client = TlsClient::new(&pki, proxy.https(), true);

    // A length-prefixed, empty HealthCheckRequest (service "": the server as a whole).
    let req = Request::post("https://grpc.test/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = timeout(LIMIT, client.send("grpc.test", req)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response.headers().contains_key("grpc-status"),
        "a message-carrying response puts its status in the trailers, not the head"
    );
    let collected = timeout(LIMIT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    let body = collected.to_bytes();
    assert_eq!(body[0], 0, "uncompressed");
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + length);
    let message = HealthCheckResponse::decode(&body[5..]).unwrap();
    assert_eq!(message.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn a_server_streaming_watch_receives_status_changes_through_the_proxy() {
    let pki = Pki::new();
    let upstream = HealthUpstream::start().await;
    upstream.reporter.set_serving::<Echo>().await;
    let proxy = Proxy::start(&site(&pki, &upstream));
    let mut client = health_client(&pki, &proxy).await;

    let mut updates = client
        .watch(check_request(Echo::NAME))
        .await
        .expect("watch starts")
        .into_inner();
    let mut next = async || {
        timeout(LIMIT, updates.message())
            .await
            .expect("an update within the limit")
            .expect("a well-formed update")
            .expect("the stream stays open")
            .status()
    };
    assert_eq!(
        next().await,
        ServingStatus::Serving,
        "the current status first"
    );
    upstream.reporter.set_not_serving::<Echo>().await;
    assert_eq!(next().await, ServingStatus::NotServing);
    upstream.reporter.set_serving::<Echo>().await;
    assert_eq!(next().await, ServingStatus::Serving);

    let error = client
        .watch(check_request("sekisho.test.Unknown"))
        .await
        .expect_err("watching an unknown service is an error");
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
}
