//! The life of agent connections: drain, loss, refusal and the agent's own stop.

use std::time::Duration;

use sekisho_agent::backoff::{Backoff, PROBE_CEILING};
use tokio::time::Instant;

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

/// What a measured wait between two dials may exceed the agent's own wait by: the next dial
/// (TCP, TLS and the upgrade on loopback) is measured in with it.
const DIAL_SLACK: Duration = Duration::from_millis(250);

#[tokio::test]
async fn lost_connections_are_dialed_again_within_a_second_however_many_in_a_row() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let mut conn = peer.next_agent().await;
    // A proxy that restarts again and again: each connection lives a moment. A doubling
    // backoff would wait up to 0.5, 1, 2, 4, 8 s; these waits must all stay short.
    let mut waits = Vec::new();
    for _ in 0..5 {
        let mut io = conn.tunnel(echo.addr).await;
        round_trip(&mut io, b"up").await;
        let lost = Instant::now();
        conn.kill();
        conn = peer.next_agent().await;
        waits.push(lost.elapsed());
    }
    assert!(
        waits.iter().all(|wait| *wait <= PROBE_CEILING + DIAL_SLACK),
        "waits after the losses: {waits:?}"
    );
}

#[tokio::test]
async fn a_proxy_that_was_unreachable_for_long_is_connected_within_a_second_of_coming_back() {
    let setup = Setup::new();
    // An address where nothing listens yet: every dial is refused until the peer starts.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _agent = RunningAgent::start(setup.settings_at(addr, &[], &[]));
    // Long enough for a doubling backoff to reach waits of 8 s (0.5 + 1 + 2 + 4 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut peer = setup.peer_at(addr).await;
    let back = Instant::now();
    assert!(
        peer.agent_within(PROBE_CEILING + DIAL_SLACK)
            .await
            .is_some(),
        "not connected within {:?} of the proxy coming back",
        PROBE_CEILING + DIAL_SLACK
    );
    eprintln!("connected {:?} after the proxy came back", back.elapsed());
}

#[tokio::test]
async fn a_ping_is_answered_at_once_with_no_content_whatever_its_method() {
    let setup = Setup::new();
    let mut peer = setup.peer().await;
    let _agent = RunningAgent::start(setup.settings(&peer, &[], &[]));
    let mut conn = peer.next_agent().await;
    for method in [Method::GET, Method::POST, Method::HEAD] {
        let ping = Request::builder()
            .method(method.clone())
            .uri(format!("http://nas{}", sekisho_wire::AGENT_PING_PATH))
            .body(empty())
            .unwrap();
        assert_eq!(
            conn.request(ping).await.status(),
            StatusCode::NO_CONTENT,
            "{method}"
        );
    }
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

// The agent's backoff promises that the n-th wait in a row is drawn from
// [0, min(cap, base × 2ⁿ)] (`sekisho_agent::backoff`). With the default (0.5 s up to 30 s)
// the cap comes after a minute of waits, so this agent runs with 50 ms up to 800 ms (the same
// code, other numbers). Paused time cannot stand in: the agent dials over real sockets, and a
// paused clock jumps to the dial's timeouts while the runtime waits for the other side.
#[tokio::test]
async fn an_agent_the_proxy_does_not_know_keeps_retrying_with_a_jittered_backoff_that_doubles_up_to_its_cap()
 {
    const ATTEMPTS: usize = 13;
    let (base, cap) = (Duration::from_millis(50), Duration::from_millis(800));
    let setup = Setup::new();
    let stranger = sekisho_wire::agent_auth::AgentKey::generate().unwrap().0;
    let mut peer = setup.peer_with_key(stranger.public_key()).await;
    let mut agent =
        RunningAgent::start_with_backoff(setup.settings(&peer, &[], &[]), Backoff::new(base, cap));
    let within = (cap + DIAL_SLACK) * ATTEMPTS as u32;
    let times = peer.refusal_times(ATTEMPTS, within).await;
    let waits: Vec<Duration> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
    for (n, wait) in waits.iter().enumerate() {
        let ceiling = (base * 2_u32.pow(n as u32)).min(cap);
        assert!(
            *wait <= ceiling + DIAL_SLACK,
            "wait {n} was {wait:?}, beyond its ceiling {ceiling:?}; all waits: {waits:?}"
        );
    }
    // From the fifth wait on the ceiling is the cap. Eight draws from [0, 800 ms] all stay
    // under 200 ms (the third ceiling) with a chance of 0.25⁸ ≈ 1.5e-5: the ceilings grew.
    let capped = &waits[4..];
    assert!(
        capped.iter().any(|wait| *wait > base * 4),
        "the waits did not grow: {waits:?}"
    );
    // Full jitter: a wait anywhere in its range, not always at the ceiling (eight draws all
    // above 600 ms: 0.25⁸ again).
    assert!(
        capped.iter().any(|wait| *wait < cap * 3 / 4),
        "the capped waits are not jittered: {waits:?}"
    );
    assert!(!agent.is_finished());
    agent.stop();
    agent.finished(SOON).await;
}

#[tokio::test]
async fn a_stopping_agent_refuses_new_streams_lets_open_ones_finish_and_then_returns() {
    let setup = Setup::new();
    let echo = Echo::start().await;
    let mut peer = setup.peer().await;
    let mut agent = RunningAgent::start(setup.settings(&peer, &[echo.addr], &[]));
    let mut conn = peer.next_agent().await;
    let mut open = conn.tunnel(echo.addr).await;

    agent.stop();
    // The stream reaches the stopping agent, which refuses it as draining; or the agent's
    // GOAWAY reaches this end first, and hyper fails the request or (when it notices the GOAWAY
    // only through this request) leaves it unsent and unanswered. Never is it served.
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(echo.addr.to_string())
        .body(empty())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), conn.sender.send_request(request));
    if let Ok(Ok(response)) = answer.await {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response
                .headers()
                .contains_key(sekisho_wire::AGENT_DRAINING_HEADER)
        );
    }
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
