//! Routing, forwarding headers and error responses through the real listeners.

use std::time::Duration;

use http::StatusCode;

use crate::support::*;

fn two_sites(pki: &Pki, app: &Upstream, api: &Upstream) -> String {
    let (cert, key) = pki.write_leaf("site", &["app.test", "*.wild.test"]);
    format!(
        "{certs}upstreams:
  app: {{endpoints: ['{app}']}}
  api: {{endpoints: ['{api}']}}
hosts:
  - host: app.test
    public: true
    paths:
      - {{path: /, type: Prefix, upstream: app}}
      - {{path: /api, type: Prefix, upstream: api}}
      - {{path: /exact, type: Exact, upstream: api}}
  - host: '*.wild.test'
    public: true
    default: api
",
        certs = certificates_yaml(&[(cert, key)]),
        app = app.url(),
        api = api.url(),
    )
}

/// The proxy in front of two upstreams (`app` and `api`, see [`two_sites`]), with `extra`
/// YAML appended to the configuration.
struct TwoSites {
    pki: Pki,
    app: Upstream,
    _api: Upstream,
    proxy: Proxy,
}

impl TwoSites {
    async fn start(extra: &str) -> Self {
        let pki = Pki::new();
        let (app, api) = (Upstream::start("app").await, Upstream::start("api").await);
        let proxy = Proxy::start(&format!("{}{extra}", two_sites(&pki, &app, &api)));
        Self {
            pki,
            app,
            _api: api,
            proxy,
        }
    }

    fn client(&self, http2: bool) -> TlsClient {
        TlsClient::new(&self.pki, self.proxy.https(), http2)
    }
}

/// Reads (and discards) until the peer closes; false if it is still open after `limit`.
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn requests_are_routed_by_host_and_path_over_http1_and_http2() {
    let sites = TwoSites::start("").await;
    for http2 in [false, true] {
        let client = sites.client(http2);
        let cases = [
            ("app.test", "/", "app"),
            ("app.test", "/apiary", "app"),
            ("app.test", "/api", "api"),
            ("app.test", "/api/v1", "api"),
            ("app.test", "/exact", "api"),
            ("app.test", "/exact/more", "app"),
            ("x.wild.test", "/anything", "api"),
        ];
        for (host, path, expected) in cases {
            let (status, _, body) = client.get(host, path).await;
            assert_eq!(status, StatusCode::OK, "{host}{path} http2={http2}");
            assert!(
                body.starts_with(&format!("upstream: {expected}\n")),
                "{host}{path} http2={http2}: {body}"
            );
            let seen = echoed(&body);
            assert_eq!(seen["host"], host, "the upstream sees the client's host");
        }
    }
}

#[tokio::test]
async fn an_unknown_host_gets_a_404_naming_the_request_id_and_never_another_site() {
    let sites = TwoSites::start("").await;
    let client = sites.client(false);
    // SNI says app.test (the certificate matches), Host says something else.
    let req = request("evil.test", "/", false);
    let (status, headers, body) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(body.contains(&format!("request id: {id}")), "{body}");
    assert!(!body.contains("upstream:"), "{body}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_are_set() {
    let sites = TwoSites::start("").await;
    let client = sites.client(false);
    let req = http::Request::get("/headers")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.test")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "client-chosen-id-1")
        .body(empty())
        .unwrap();
    let (status, headers, body) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::OK);
    let seen = echoed(&body);
    for gone in [
        "x-private-hop",
        "keep-alive",
        "proxy-authorization",
        "forwarded",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {body}"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "app.test");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-request-id"], "client-chosen-id-1");
    assert_eq!(headers["x-request-id"], "client-chosen-id-1");
}

#[tokio::test]
async fn a_generated_request_id_reaches_the_upstream_the_client_and_the_access_log() {
    let sites = TwoSites::start("").await;
    let (app, proxy) = (&sites.app, &sites.proxy);
    let client = sites.client(true);
    let (status, headers, body) = client.get("app.test", "/logged?secret=1").await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(echoed(&body)["x-request-id"], id.as_str());

    let found = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&proxy.access_log)
            .unwrap_or_default()
            .contains(&id)
    })
    .await;
    assert!(found, "access log line for {id}");
    let log = std::fs::read_to_string(&proxy.access_log).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(log.lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "app.test/");
    assert_eq!(line["path"], "/logged", "query strings stay out of the log");
    assert_eq!(line["upstream"], app.url());
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn an_upstream_that_is_down_gives_502_and_a_slow_one_504() {
    let pki = Pki::new();
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let closed = closed_port();
    let slow = Upstream::start("slow").await;
    let proxy = Proxy::start(&format!(
        "{certs}upstreams:
  down: {{endpoints: ['http://{closed}']}}
  slow: {{endpoints: ['{slow}'], response_header_timeout: 300ms}}
hosts:
  - host: app.test
    public: true
    paths:
      - {{path: /down, upstream: down}}
      - {{path: /slow, upstream: slow}}
",
        certs = certificates_yaml(&[(cert, key)]),
        slow = slow.url(),
    ));
    let client = TlsClient::new(&pki, proxy.https(), false);
    let (status, headers, body) = client.get("app.test", "/down").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains(headers["x-request-id"].to_str().unwrap()));
    let (status, _, body) = client.get("app.test", "/slow/3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let (status, _, _) = client.get("app.test", "/slow/1").await;
    assert_eq!(status, StatusCode::OK, "fast answers still pass");
    assert_eq!(
        proxy
            .metric(r#"sekisho_upstream_errors_total{upstream="down",kind="connect"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_traffic_goes_to_the_healthy_one() {
    let pki = Pki::new();
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let closed = closed_port();
    let healthy = Upstream::start("healthy").await;
    let proxy = Proxy::start(&format!(
        "{certs}upstreams:
  pair:
    endpoints: ['http://{closed}', '{healthy}']
    ejection: {{consecutive_failures: 1, duration: 60s}}
hosts:
  - host: app.test
    public: true
    default: pair
",
        certs = certificates_yaml(&[(cert, key)]),
        healthy = healthy.url(),
    ));
    let client = TlsClient::new(&pki, proxy.https(), false);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get("app.test", "/").await.0);
    }
    let failures = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_GATEWAY)
        .count();
    assert!(
        failures <= 2,
        "at most the first tries of each worker fail: {statuses:?}"
    );
    assert!(
        statuses[4..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let sites = TwoSites::start("limits: {max_header_bytes: 8192}\n").await;
    let client = sites.client(false);
    let req = http::Request::get("/")
        .header("host", "app.test")
        .header("x-big", "a".repeat(20_000))
        .body(empty())
        .unwrap();
    let tcp_result =
        tokio::time::timeout(Duration::from_secs(5), client.send("app.test", req)).await;
    let response = tcp_result.expect("the proxy answers instead of hanging");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sites = TwoSites::start("limits: {header_read_timeout: 1s}\n").await;
    let proxy = &sites.proxy;
    let mut slow = tokio::net::TcpStream::connect(proxy.http()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // Keep trickling a byte every 300 ms; the proxy must cut us off regardless.
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 page is fine too; wait for the close
                },
                // The trickle is the attack under test: a byte every 300 ms.
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    if slow.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slowloris connection still open after 6 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn plain_http_redirects_to_https_for_known_hosts_only() {
    let pki = Pki::new();
    let (app, api) = (Upstream::start("app").await, Upstream::start("api").await);
    let yaml = two_sites(&pki, &app, &api);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{https: '127.0.0.1:0', http: '127.0.0.1:0', admin: '127.0.0.1:0'}}\n{yaml}"
        ),
    )
    .unwrap();
    let running = sekisho_proxy::start(sekisho_proxy::Options {
        config_path: Some(config),
        access_log: Some(Box::new(std::io::sink())),
        handle_signals: false,
        dev_ca_dir: None,
        kubernetes: None,
    })
    .unwrap();
    let http = running.http_addr.unwrap();
    let (status, headers, _) = plain_get(http, "app.test", "/a?b=c").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        format!("https://app.test:{}/a?b=c", running.https_addr.port()).as_str()
    );
    let (status, headers, _) = plain_get(http, "evil.test", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!headers.contains_key("location"));
    running.shutdown();
    running.wait();
}

#[tokio::test]
async fn metrics_and_health_live_on_the_admin_listener_only() {
    let sites = TwoSites::start("").await;
    let proxy = &sites.proxy;
    let client = sites.client(false);
    let (_, _, body) = client.get("app.test", "/metrics").await;
    assert!(
        body.starts_with("upstream: app"),
        "the public /metrics is the app's"
    );
    let (status, _, body) = plain_get(proxy.admin(), "x", "/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, _) = plain_get(proxy.admin(), "x", "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = proxy.metrics().await;
    for series in [
        r#"sekisho_http_requests_total{route="app.test/",method="GET",status="2xx"} 1"#,
        "sekisho_http_request_duration_seconds_bucket",
        r#"sekisho_tls_handshakes_total{result="success"}"#,
        r#"sekisho_certificate_expiry_seconds{name="app.test"}"#,
        r#"sekisho_open_connections{listener="https"}"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sites = TwoSites::start("limits: {idle_timeout: 500ms}\n").await;
    let proxy = &sites.proxy;
    let mut conn = tokio::net::TcpStream::connect(proxy.http()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 4096];
    let n = conn.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    // Drain whatever is left of the response, then expect the close.
    assert!(
        closed_within(&mut conn, Duration::from_secs(5)).await,
        "idle connection still open after 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let sites = TwoSites::start("limits: {max_connections: 1}\n").await;
    let proxy = &sites.proxy;
    // With the slot free, a client is served at once.
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        plain_get(proxy.http(), "app.test", "/"),
    )
    .await
    .expect("served while the slot is free");
    assert_eq!(status, StatusCode::OK);
    // The first client holds the only connection slot once the proxy has admitted it.
    let open = r#"sekisho_open_connections{listener="http"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metric(open).await == 0.0
        })
        .await,
        "the served client's connection is closed"
    );
    let first = tokio::net::TcpStream::connect(proxy.http()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metric(open).await == 1.0
        })
        .await,
        "the proxy admits the first client"
    );
    // Nothing to wait for: the second client must not be served while the first holds the
    // slot, so the proof is a window in which it is not (the same client was served above).
    let mut second = tokio::spawn(plain_get(proxy.http(), "app.test", "/"));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "the second client was served past the limit"
    );
    drop(first);
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the slot frees")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_reset_http2_stream_does_not_keep_its_connection_from_going_idle() {
    let sites = TwoSites::start("limits: {idle_timeout: 500ms}\n").await;
    let tcp = tokio::net::TcpStream::connect(sites.proxy.https())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(sites.pki.client_config(&[b"h2"]))
        .connect(
            rustls_pki_types::ServerName::try_from("app.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // Start a slow request, then give up on it: the client resets the stream.
    let slow = sender.send_request(request("app.test", "/slow/10000", true));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), slow)
            .await
            .is_err()
    );
    // The client keeps its side open (`sender` lives on): only the proxy's idle check can
    // end the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    drop(sender);
    assert!(
        closed.is_ok(),
        "the connection stayed open: the abandoned request still counts as in flight"
    );
}

#[tokio::test]
async fn an_absolute_form_request_reaches_the_upstream_with_the_host_it_was_routed_by() {
    let sites = TwoSites::start("").await;
    let client = sites.client(false);
    // Routed by the URI's authority (RFC 9112 §3.2.2); a conflicting Host header must not
    // reach the upstream, or the upstream would serve a site the proxy never routed to.
    let req = http::Request::get("https://app.test/api/v1")
        .header("host", "evil.test")
        .body(empty())
        .unwrap();
    let (status, _, body) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("upstream: api\n"), "{body}");
    let seen = echoed(&body);
    assert_eq!(seen["host"], "app.test");
    assert_eq!(seen.get_all("host").iter().count(), 1);
}

/// After the handshake a client that sends nothing is held for the header timeout, not the
/// idle timeout (which starts after a first request), whatever protocol ALPN chose.
async fn tls_then_silent(alpn: &'static [u8]) {
    use tokio::io::AsyncReadExt;
    let sites = TwoSites::start("limits: {header_read_timeout: 1s, idle_timeout: 60s}\n").await;
    let tcp = tokio::net::TcpStream::connect(sites.proxy.https())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(sites.pki.client_config(&[alpn]))
        .connect(
            rustls_pki_types::ServerName::try_from("app.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        // HTTP/2 servers open with their SETTINGS; read until the close.
        while tls.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent {} client was still connected 10 s after its handshake (header timeout 1 s)",
        String::from_utf8_lossy(alpn)
    );
}

#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_cut_at_the_header_timeout_over_http1() {
    tls_then_silent(b"http/1.1").await;
}

#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_cut_at_the_header_timeout_over_http2() {
    tls_then_silent(b"h2").await;
}
