//! The life of agent connections: drain, loss, refusal and the agent's own stop.

use std::time::Duration;

use http::{Method, Request, StatusCode};
use sekisho_wire::AGENT_DRAIN_PATH;
use tokio::io::AsyncReadExt as _;

use crate::support::{Echo, RunningAgent, SOON, Setup, empty, round_trip};

fn drain_request() -> Request<crate::support::TestBody> {
    Request::builder()
        .method(Method::POST)
        // The form the hub sends: the agent's name as the authority.
        .uri(format!("http://nas{AGENT_DRAIN_PATH}"))
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn the_agent_keeps_the_configured_number_of_connections_to_every_proxy() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut first = setup.peer().await;
    let mut second = setup.peer().await;
    let mut settings = setup.settings(&first, &[echo.addr], &[]);
    let other = setup.settings(&second, &[], &[]);
    settings.proxies.extend(other.proxies);
    settings.connections = 2;
    let _agent = RunningAgent::start(settings);
    for peer in [&mut first, &mut second] {
        let mut conns = [peer.next_agent().await, peer.next_agent().await];
        for conn in &mut conns {
            let mut io = conn.tunnel(echo.addr).await;
            round_trip(&mut io, b"each connection works").await;
        }
        assert!(
            peer.agent_within(Duration::from_millis(200))
                .await
                .is_none()
        );
    }
}

#[tokio::test]
async fn a_drained_connection_is_replaced_at_once_and_its_open_stream_keeps_working() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let mut old = peer.next_agent().await;
    let mut open = old.tunnel(echo.addr).await;
    round_trip(&mut open, b"before").await;

    let response = old.request(drain_request()).await;
    assert_eq!(response.status(), StatusCode::OK);

    // No backoff: the replacement comes while the old connection still has a stream.
    let mut new = peer.next_agent().await;
    round_trip(&mut open, b"still here").await;
    let mut fresh = new.tunnel(echo.addr).await;
    round_trip(&mut fresh, b"new connection").await;

    // The old connection closes once its last stream ends.
    drop(open);
    old.closed().await;
    round_trip(&mut fresh, b"unaffected").await;
}

#[tokio::test]
async fn a_lost_connection_is_dialed_again_after_a_backoff() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let first = peer.next_agent().await;
    first.kill();
    let mut second = peer.next_agent().await;
    let mut io = second.tunnel(echo.addr).await;
    round_trip(&mut io, b"back").await;
    second.kill();
    peer.next_agent().await;
}

#[tokio::test]
async fn a_proxy_that_stops_answering_is_noticed_by_the_pings_and_dialed_again() {
    let setup = Setup::new();
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[]));
    let first = peer.next_agent().await;
    first.freeze();
    // Ping interval plus ping timeout (5 s + 5 s), then a backoff of at most 0.5 s.
    let limit = sekisho_wire::KEEPALIVE_INTERVAL + sekisho_wire::KEEPALIVE_TIMEOUT + SOON;
    assert!(
        peer.agent_within(limit).await.is_some(),
        "no new connection"
    );
}

#[tokio::test]
async fn an_agent_the_proxy_does_not_know_keeps_retrying_with_backoff() {
    let setup = Setup::new();
    let stranger = sekisho_wire::agent_auth::AgentKey::generate().unwrap().0;
    let mut peer = setup.peer_with_key(stranger.public_key()).await;
    let mut agent = RunningAgent::start(setup.settings(&peer, &[], &[]));
    // Backoff ceilings 0.5 s, 1 s: three attempts come well within the wait.
    peer.wait_for_refusals(3).await;
    assert!(peer.agent_within(Duration::from_millis(50)).await.is_none());
    assert!(!agent.is_finished());
    agent.stop();
    agent.finished(SOON).await;
}

#[tokio::test]
async fn a_stopping_agent_lets_open_streams_finish_and_then_returns() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let mut agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let mut conn = peer.next_agent().await;
    let mut open = conn.tunnel(echo.addr).await;

    agent.stop();
    round_trip(&mut open, b"finishing").await;
    assert!(!agent.is_finished());
    drop(open);
    // Well before the 10 s grace period: the agent returns because the stream ended.
    agent.finished(Duration::from_secs(5)).await;
    conn.closed().await;
    assert!(
        peer.agent_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_stream_that_outlives_the_grace_period_is_cut() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let mut settings = setup.settings(&peer, &[echo.addr], &[]);
    settings.shutdown_grace = Duration::from_millis(300);
    let mut agent = RunningAgent::start(settings);
    let mut conn = peer.next_agent().await;
    let mut open = conn.tunnel(echo.addr).await;
    round_trip(&mut open, b"x").await;

    agent.stop();
    agent.finished(SOON).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(SOON, open.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Err(_)) | Ok(Ok(0))), "{read:?}");
}
