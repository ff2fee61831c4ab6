//! What an operator can alert on: series registered at zero before any traffic, the access
//! decisions as they happen, the process's own metrics and the build.

use http::StatusCode;

use crate::support::*;

/// A site with a public path, a path no one may enter, an identity provider (never contacted:
/// providers are discovered on first use) and an agent.
async fn site() -> (Pki, Upstream, Proxy, tempfile::TempDir) {
    let pki = Pki::new();
    let upstream = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&format!(
        "{certs}{identity}policies:
  nobody: {{allow: [{{group: nobody}}]}}
agents:
  nas: {{public_keys: ['ed25519:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8']}}
upstreams:
  app: {{endpoints: ['{app}']}}
hosts:
  - host: app.test
    policy: nobody
    default: app
    paths:
      - {{path: /public, upstream: app, public: true}}
",
        certs = certificates_yaml(&[(cert, key)]),
        identity = identity_yaml(dir.path(), ""),
        app = upstream.url(),
    ));
    (pki, upstream, proxy, dir)
}

#[tokio::test]
async fn before_any_traffic_the_metrics_list_every_series_an_alert_may_watch_at_zero() {
    let (_pki, _upstream, proxy, _dir) = site().await;
    let metrics = proxy.metrics().await;
    for series in [
        r#"sekisho_config_reloads_total{result="failure"} 0"#,
        r#"sekisho_config_reloads_total{result="success"} 0"#,
        r#"sekisho_certificate_reloads_total{result="failure"} 0"#,
        r#"sekisho_tls_handshakes_total{result="failure"} 0"#,
        r#"sekisho_open_connections{listener="http"} 0"#,
        r#"sekisho_access_decisions_total{decision="denied",reason="default_deny"} 0"#,
        r#"sekisho_access_decisions_total{decision="login_required",reason="allow"} 0"#,
        r#"sekisho_access_decisions_total{decision="allowed",reason="public_route"} 0"#,
        r#"sekisho_access_decisions_total{decision="denied",reason="bad_token"} 0"#,
        r#"sekisho_logins_total{provider="corp",result="success"} 0"#,
        r#"sekisho_logins_total{provider="corp",result="failed"} 0"#,
        r#"sekisho_provider_errors_total{provider="corp",operation="discovery"} 0"#,
        r#"sekisho_agent_refusals_total{reason="bad_signature"} 0"#,
        r#"sekisho_agent_refusals_total{reason="clock_skew"} 0"#,
        r#"sekisho_tunnel_stream_failures_total{reason="agent_offline"} 0"#,
        r#"sekisho_tunnel_stream_ends_total{cause="agent_gone"} 0"#,
        r#"sekisho_tunnel_stream_ends_total{cause="proxy_shutdown"} 0"#,
        r#"sekisho_tunnel_bytes_total{direction="to_target"} 0"#,
        r#"sekisho_upstream_errors_total{upstream="app",kind="connect"} 0"#,
        r#"sekisho_upstream_errors_total{upstream="app",kind="response_timeout"} 0"#,
        concat!(
            r#"sekisho_build_info{version=""#,
            env!("CARGO_PKG_VERSION"),
            r#""} 1"#
        ),
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} missing from:\n{metrics}"
        );
    }
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(family)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{family} missing from:\n{metrics}"));
        let value: f64 = value.parse().unwrap();
        assert!(
            value > 0.0 || family == "process_cpu_seconds_total",
            "{family} {value}"
        );
    }
}

#[tokio::test]
async fn access_decisions_are_counted_by_what_they_were_and_why() {
    let (pki, _upstream, proxy, _dir) = site().await;
    let client = TlsClient::new(&pki, proxy.https(), false);
    let (status, _, _) = client.get("app.test", "/public/x").await;
    assert_eq!(status, StatusCode::OK);
    let req = http::Request::get("/private")
        .header("host", "app.test")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (status, _, _) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = http::Request::get("/private")
        .header("host", "app.test")
        .header("authorization", "Bearer not.a.token")
        .body(empty())
        .unwrap();
    let (status, _, _) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for (series, expected) in [
        (
            r#"sekisho_access_decisions_total{decision="allowed",reason="public_route"}"#,
            1.0,
        ),
        (
            r#"sekisho_access_decisions_total{decision="login_required",reason="allow"}"#,
            1.0,
        ),
        (
            r#"sekisho_access_decisions_total{decision="denied",reason="bad_token"}"#,
            1.0,
        ),
    ] {
        assert_eq!(proxy.metric(series).await, expected, "{series}");
    }
}

#[tokio::test]
async fn the_proxys_own_errors_are_a_page_for_browsers_json_for_programs_and_text_for_curl() {
    let (pki, _upstream, proxy, _dir) = site().await;
    let client = TlsClient::new(&pki, proxy.https(), false);
    let ask = |accept: &'static str| {
        let mut req = http::Request::get("/").header("host", "unknown.test");
        if !accept.is_empty() {
            req = req.header("accept", accept);
        }
        req.body(empty()).unwrap()
    };
    let (status, headers, body) = read_text(
        client
            .send("app.test", ask("text/html,application/xhtml+xml,*/*;q=0.8"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(body.contains("<h1>Nothing here</h1>"), "{body}");
    assert!(body.contains(&format!("<code>{id}</code>")), "{body}");
    assert!(headers.contains_key("content-security-policy"));

    let (_, headers, body) =
        read_text(client.send("app.test", ask("application/json")).await).await;
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "not_found");
    assert_eq!(
        json["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );

    let (_, headers, body) = read_text(client.send("app.test", ask("")).await).await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.starts_with("404 Not Found\n"), "{body}");
}

#[tokio::test]
async fn a_refused_request_of_someone_signed_in_names_them_in_the_access_log() {
    let pki = Pki::new();
    let upstream = Upstream::start("app").await;
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("session-keys");
    sekisho_proxy::add_session_key(&keys).unwrap();
    let proxy = Proxy::start(&format!(
        "{certs}{identity}policies:
  staff: {{allow: [{{group: staff}}]}}
upstreams:
  app: {{endpoints: ['{app}']}}
hosts:
  - {{host: app.test, policy: staff, default: app}}
",
        certs = certificates_yaml(&[(cert, key)]),
        identity = identity_yaml(
            dir.path(),
            &format!("  session_keys_file: '{}'\n", keys.display())
        ),
        app = upstream.url(),
    ));
    // carol is signed in (a cookie sealed with the site's keys) but not in `staff`.
    let cookie = dev_session_cookie(
        &proxy.config_path,
        "app.test",
        &[
            "--subject",
            "carol-sub",
            "--email",
            "carol@elsewhere.example",
        ],
    );
    let client = TlsClient::new(&pki, proxy.https(), false);
    let req = http::Request::get("/reports")
        .header("host", "app.test")
        .header("cookie", format!("__Host-sekisho={cookie}"))
        .body(empty())
        .unwrap();
    let (status, headers, _) = read_text(client.send("app.test", req).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();

    let logged = eventually(std::time::Duration::from_secs(5), || async {
        std::fs::read_to_string(&proxy.access_log)
            .unwrap_or_default()
            .contains(&id)
    })
    .await;
    assert!(logged, "no access log line for {id}");
    let log = std::fs::read_to_string(&proxy.access_log).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(log.lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!(line["status"], 403);
    assert_eq!(line["user"], "carol@elsewhere.example", "{line}");
}

#[tokio::test]
async fn an_agent_whose_clock_is_off_is_refused_as_clock_skew_with_words_that_say_so() {
    let pki = Pki::new();
    let (cert, key) = pki.write_leaf("site", &["agents.test"]);
    let (agent_key, _) = sekisho_wire::agent_auth::AgentKey::generate().unwrap();
    let proxy = Proxy::start(&format!(
        "{certs}agents:\n  nas: {{public_keys: ['{public}']}}\n",
        certs = certificates_yaml(&[(cert, key)]),
        public = agent_key.public_key(),
    ));
    let client = TlsClient::new(&pki, proxy.https(), false);
    let connect = |credential: String| {
        http::Request::get(sekisho_wire::AGENT_CONNECT_PATH)
            .header(http::header::HOST, "agents.test")
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, sekisho_wire::AGENT_PROTOCOL)
            .header(sekisho_wire::AGENT_AUTH_HEADER, credential)
            .body(empty())
            .unwrap()
    };
    let now = sekisho_proxy::unix_now();
    let late = agent_key
        .credential("agents.test", "nas", now - 600)
        .unwrap();
    let (status, _, body) =
        read_text(client.send("agents.test", connect(late.to_string())).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("clock is 600 s away"), "{body}");
    assert_eq!(
        proxy
            .metric(r#"sekisho_agent_refusals_total{reason="clock_skew"}"#)
            .await,
        1.0
    );
    // Another key, on time: a bad signature, as before.
    let (stranger, _) = sekisho_wire::agent_auth::AgentKey::generate().unwrap();
    let forged = stranger.credential("agents.test", "nas", now).unwrap();
    let (status, _, _) = read_text(
        client
            .send("agents.test", connect(forged.to_string()))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        proxy
            .metric(r#"sekisho_agent_refusals_total{reason="bad_signature"}"#)
            .await,
        1.0
    );
}
