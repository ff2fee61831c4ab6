//! Streams the proxy opens on an agent connection.

use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::support::{
    Echo, HttpServer, RunningAgent, Setup, body_text, closed_port, empty, full, round_trip,
};

#[tokio::test]
async fn the_agent_signs_in_with_its_name_and_a_verified_credential() {
    let setup = Setup::new();
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[]));
    let conn = peer.next_agent().await;
    assert_eq!(conn.credential.name, "nas");
    assert_eq!(peer.refused(), 0);
}

#[tokio::test]
async fn a_connect_to_an_allowed_target_carries_bytes_both_ways() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let mut conn = peer.next_agent().await;

    let mut first = conn.tunnel(echo.addr).await;
    let mut second = conn.tunnel(echo.addr).await;
    round_trip(&mut first, b"ping").await;
    round_trip(&mut second, b"pong").await;
    // More than one window and one copy buffer, so flow control and buffering both matter.
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    round_trip(&mut first, &big).await;
}

#[tokio::test]
async fn a_connect_to_a_target_that_is_not_allowed_gets_403_naming_it() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let other = Echo::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[other.addr]));
    let mut conn = peer.next_agent().await;

    // Allowed for HTTP is not allowed for CONNECT.
    let response = conn.connect(other.addr).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = body_text(response).await;
    assert!(
        text.contains(&other.addr.to_string()) && text.contains("allow list"),
        "{text}"
    );
}

#[tokio::test]
async fn a_connect_to_an_allowed_but_closed_port_gets_502() {
    let setup = Setup::new();
    let closed = closed_port().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[closed], &[]));
    let mut conn = peer.next_agent().await;
    let response = conn.connect(closed).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_http_request_for_an_allowed_server_gets_its_response_without_hop_headers() {
    let setup = Setup::new();
    let server = HttpServer::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[server.addr]));
    let mut conn = peer.next_agent().await;

    let req = Request::builder()
        .uri(format!("http://{}/hello?q=1", server.addr))
        .header("x-test", "yes")
        .body(empty())
        .unwrap();
    let response = conn.request(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["x-served-by"], "local");
    for hop in ["keep-alive", "connection", "x-private"] {
        assert!(!headers.contains_key(hop), "{hop} reached the proxy");
    }
    assert_eq!(
        body_text(response).await,
        format!("GET /hello?q=1 host={} x-test=yes", server.addr)
    );

    let body = vec![7u8; 3 * 1024 * 1024];
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/upload", server.addr))
        .body(full(body))
        .unwrap();
    let response = conn.request(req).await;
    assert_eq!(body_text(response).await, "read 3145728 bytes");
}

#[tokio::test]
async fn a_forwarded_request_for_the_agents_own_paths_goes_to_its_target_and_drains_nothing() {
    let setup = Setup::new();
    let server = HttpServer::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[server.addr]));
    let mut conn = peer.next_agent().await;
    // What a client of a route through this agent can send: the target's authority, any path.
    let ping = Request::builder()
        .uri(format!(
            "http://{}{}",
            server.addr,
            sekisho_wire::AGENT_PING_PATH
        ))
        .body(empty())
        .unwrap();
    let response = conn.request(ping).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        body_text(response)
            .await
            .starts_with("GET /.sekisho/agent/ping")
    );
    let drain = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "http://{}{}",
            server.addr,
            sekisho_wire::AGENT_DRAIN_PATH
        ))
        .body(empty())
        .unwrap();
    let response = conn.request(drain).await;
    assert_eq!(body_text(response).await, "read 0 bytes");
    // Not drained: no replacement connection is dialed.
    assert!(
        peer.agent_within(std::time::Duration::from_secs(1))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn an_http_request_for_a_server_that_is_not_allowed_or_down_is_refused() {
    let setup = Setup::new();
    let server = HttpServer::start().await;
    let closed = closed_port().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[server.addr], &[closed]));
    let mut conn = peer.next_agent().await;

    let get = |addr: std::net::SocketAddr| {
        Request::builder()
            .uri(format!("http://{addr}/"))
            .body(empty())
            .unwrap()
    };
    // Allowed for CONNECT is not allowed for HTTP.
    let response = conn.request(get(server.addr)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(body_text(response).await.contains("allow.http"));
    let response = conn.request(get(closed)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_extended_connect_makes_the_upgrade_with_an_allowed_server_and_carries_bytes() {
    let setup = Setup::new();
    let server = HttpServer::start().await;
    let tcp_only = closed_port().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[tcp_only], &[server.addr]));
    let mut conn = peer.next_agent().await;

    let response = conn.upgrade(server.addr, "/switch").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-served-by"], "local");
    for hop in ["upgrade", "connection"] {
        assert!(
            !response.headers().contains_key(hop),
            "{hop} reached the proxy"
        );
    }
    let mut stream = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    round_trip(&mut stream, b"through the upgrade and back").await;

    // A server that answers without switching gets no byte stream.
    let response = conn.upgrade(server.addr, "/no-switch").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(body_text(response).await.contains("instead of switching"));
    // Allowed for CONNECT is not allowed for an upgrade.
    let response = conn.upgrade(tcp_only, "/switch").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(body_text(response).await.contains("allow.http"));
}

#[tokio::test]
async fn anything_else_gets_404() {
    let setup = Setup::new();
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[]));
    let mut conn = peer.next_agent().await;
    for req in [
        Request::get("https://proxy.invalid/status").body(empty()),
        Request::get("https://proxy.invalid/.sekisho/agent/drain").body(empty()),
    ] {
        let response = conn.request(req.unwrap()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
