//! Backends: only ready endpoints are used, and they come back; IPv6 endpoints; ExternalName
//! Services.

use std::collections::BTreeMap;

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use sekisho_testkit::EchoUpstream;

use crate::harness::{Gate, apply, number, until};

#[tokio::test]
async fn an_unready_endpoint_is_left_out_until_it_is_ready_again() -> anyhow::Result<()> {
    let gate = Gate::start("endpoints").await?;
    let web = gate.backend("web").await?;
    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate.site("site", &host).policy("public").tls("site-tls");
    apply(
        &gate.api(),
        &site.path("/", "Prefix", "web", number(80)).build(),
    )
    .await?;
    until("the site to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;

    gate.endpoints("web", &[(web.addr, false)]).await?;
    until("the unready endpoint to be left out", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(
            answer.status == StatusCode::SERVICE_UNAVAILABLE,
            "{answer:?}"
        );
        Ok(answer)
    })
    .await?;
    let served = web.received().len();

    gate.endpoints("web", &[(web.addr, true)]).await?;
    until("the endpoint to be back", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    assert_eq!(
        web.received().len(),
        served + 1,
        "nothing reached it while it was unready"
    );
    Ok(())
}

#[tokio::test]
async fn ipv6_endpoints_and_external_name_services_are_served() -> anyhow::Result<()> {
    let gate = Gate::start("families").await?;
    let v6 = EchoUpstream::on("v6", gate.pods.listen(true)?)?;
    let service = |name: &str, spec: ServiceSpec| Service {
        metadata: gate.meta(name),
        spec: Some(spec),
        status: None,
    };
    let port = |number: u16| {
        Some(vec![ServicePort {
            name: Some("http".into()),
            port: i32::from(number),
            ..ServicePort::default()
        }])
    };
    apply(
        &gate.api(),
        &service(
            "v6",
            ServiceSpec {
                ports: port(80),
                ..ServiceSpec::default()
            },
        ),
    )
    .await?;
    let mut meta = gate.meta("v6-slice");
    meta.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        "v6".to_owned(),
    )]));
    let slice = EndpointSlice {
        metadata: meta,
        address_type: "IPv6".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![v6.addr.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(v6.addr.port())),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    };
    apply(&gate.api(), &slice).await?;

    // An ExternalName Service: the proxy dials the name (`localhost`, where an echo listens).
    let outside = EchoUpstream::start("outside").await?;
    let outside_port = outside.addr.port();
    apply(
        &gate.api(),
        &service(
            "outside",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("localhost".into()),
                ports: port(outside_port),
                ..ServiceSpec::default()
            },
        ),
    )
    .await?;

    let host = format!("site.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate
        .site("site", &host)
        .policy("public")
        .tls("site-tls")
        .path("/v6", "Prefix", "v6", number(80))
        .path(
            "/outside",
            "Prefix",
            "outside",
            number(i32::from(outside_port)),
        );
    apply(&gate.api(), &site.build()).await?;
    let answer = until("the IPv6 endpoint to be served", || async {
        let answer = gate.get(&host, "/v6").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    assert!(answer.body.starts_with("upstream: v6\n"), "{}", answer.body);
    let answer = gate.get(&host, "/outside").await?;
    assert!(answer.body.starts_with("upstream: outside\n"), "{answer:?}");
    assert_eq!(outside.received_at("/outside").len(), 1);
    Ok(())
}

/// An HTTP/2-only server without TLS (h2c, prior knowledge) on the pod network, answering
/// with the protocol version it got.
fn h2c_upstream(listener: std::net::TcpListener) -> anyhow::Result<std::net::SocketAddr> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: http::Request<_>| {
                    let answer = format!("upstream: h2c\nversion: {:?}\n", request.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from(answer)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_service_port_with_app_protocol_h2c_is_spoken_to_in_http2() -> anyhow::Result<()> {
    let gate = Gate::start("h2c").await?;
    let addr = h2c_upstream(gate.pods.listen(false)?)?;
    let service = Service {
        metadata: gate.meta("grpc"),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                app_protocol: Some("kubernetes.io/h2c".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    apply(&gate.api(), &service).await?;
    gate.endpoints("grpc", &[(addr, true)]).await?;
    let host = format!("grpc.{}.test", gate.namespace);
    gate.tls_secret("site-tls", &[&host]).await?;
    let site = gate
        .site("site", &host)
        .policy("public")
        .tls("site-tls")
        .path("/", "Prefix", "grpc", number(80));
    apply(&gate.api(), &site.build()).await?;
    // The client speaks HTTP/1.1 to the proxy; the proxy speaks HTTP/2 to the upstream.
    let answer = until("the h2c upstream to answer", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    assert!(answer.body.contains("version: HTTP/2.0"), "{}", answer.body);
    Ok(())
}
