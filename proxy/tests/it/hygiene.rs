//! What a client may not smuggle past the gate: one normal path, no claims only a gateway may
//! make, no protocol switch the route did not allow, no ambiguous framing.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A public site and a site nobody may enter, both in front of the echo upstream, on the
/// plain listener (`http_mode: serve`) and TLS.
struct Gate {
    pki: Pki,
    _upstream: Upstream,
    proxy: Proxy,
}

impl Gate {
    async fn start() -> Self {
        let pki = Pki::new();
        let upstream = Upstream::start("app").await;
        let (cert, key) = pki.write_leaf("site", &["app.test"]);
        let proxy = Proxy::start(&format!(
            "{certs}upstreams:
  app: {{endpoints: ['{app}']}}
hosts:
  - host: app.test
    paths:
      - {{path: /public, upstream: app, public: true}}
      - {{path: /files, upstream: app, public: true, allow_encoded_slashes: true}}
      - {{path: /count, type: Exact, upstream: app, public: true}}
",
            certs = certificates_yaml(&[(cert, key)]),
            app = upstream.url(),
        ));
        Self {
            pki,
            _upstream: upstream,
            proxy,
        }
    }

    /// One request written as raw bytes on the plain listener; the answer's status and text.
    async fn raw(&self, request: &str) -> (u16, String) {
        raw_exchange(self.proxy.http(), request.as_bytes()).await
    }
}

/// Writes `request` on a new connection and reads until the proxy closes it.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn the_upstream_receives_the_one_normal_path_with_the_query_it_was_sent() {
    let gate = Gate::start().await;
    for (sent, forwarded) in [
        ("/public/a/./b/../c?x=%2e%2e/1", "/public/a/c?x=%2e%2e/1"),
        ("/public//a///b", "/public/a/b"),
        ("/public/%7euser/caf%c3%a9", "/public/~user/caf%C3%A9"),
        ("/public/a%3fb", "/public/a%3Fb"),
        ("/x/../public/y", "/public/y"),
    ] {
        for http2 in [false, true] {
            let client = TlsClient::new(&gate.pki, gate.proxy.https(), http2);
            let (status, _, body) = client.get("app.test", sent).await;
            assert_eq!(status, StatusCode::OK, "{sent}: {body}");
            assert!(
                body.contains(&format!("\npath: {forwarded}\n")),
                "{sent} (h2: {http2}) should reach the upstream as {forwarded}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn targets_that_cannot_be_made_unambiguous_are_refused_before_routing() {
    let gate = Gate::start().await;
    for path in [
        "/public/%2e%2e/secret",
        "/public/.%2E/secret",
        "/public/..%2fsecret",
        "/public%2f..%2fsecret",
        "/public/%252e%252e/secret",
        "/public/..\\secret",
        "/public/%5c..%5csecret",
        "/public/..;/secret",
        "/public/.;x/secret",
        "/public/..%00/secret",
        "/public/%c0%ae%c0%ae/secret",
        "/public//../secret",
        "/../public",
        "/public/%zz",
    ] {
        let (status, text) = gate.raw(&get(path, "")).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(
            !text.contains("upstream: app"),
            "{path} reached the upstream"
        );
    }
}

#[tokio::test]
async fn path_parameters_are_forwarded_but_routing_decides_without_them() {
    // `/public;x/..` would be `/public/..` to a Java server: decided on `/`, which nothing
    // serves. And `/secret;x` is decided as `/secret`, not served either.
    let gate = Gate::start().await;
    let (status, text) = gate.raw(&get("/secret;jsessionid=1/x", "")).await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = gate.raw(&get("/public;v=1/page", "")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\npath: /public;v=1/page\n"), "{text}");
}

#[tokio::test]
async fn encoded_slashes_reach_only_a_route_that_allows_them_decided_on_the_decoded_path() {
    let gate = Gate::start().await;
    let (status, text) = gate.raw(&get("/files/group%2fproject", "")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\npath: /files/group%2Fproject\n"), "{text}");
    // Decoded, this is `/public/x`: a route without the option refuses it.
    let (status, _) = gate.raw(&get("/public%2fx", "")).await;
    assert_eq!(status, 400);
    // Decoded, this climbs out of `/files`: refused.
    let (status, _) = gate.raw(&get("/files/..%2fpublic", "")).await;
    assert_eq!(status, 400);
    // The proxy's own endpoints are never reached through one.
    let (status, text) = gate.raw(&get("/.sekisho%2ftunnel", "")).await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn claims_only_a_gateway_may_make_never_reach_the_upstream_in_any_spelling() {
    let gate = Gate::start().await;
    let claims = "X-Forwarded-User: admin\r\nX_Forwarded_User: admin\r\nx_forwarded_email: a@b.c\r\n\
        Remote-User: admin\r\nX-Remote-User: admin\r\nX-Auth-Request-Email: a@b.c\r\n\
        X-Forwarded-Preferred-Username: admin\r\nX-Original-URL: /admin\r\nX_Original_URL: /admin\r\n\
        X-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nX_HTTP_Method_Override: DELETE\r\n\
        X-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nX_Forwarded_For: 6.6.6.6\r\n\
        X-Sekisho-Assertion: forged\r\nX-Keep: yes\r\n";
    let (status, text) = gate.raw(&get("/public/x", claims)).await;
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let seen = echoed(body);
    assert_eq!(seen["x-keep"], "yes");
    for name in [
        "x-forwarded-user",
        "x_forwarded_user",
        "x_forwarded_email",
        "remote-user",
        "x-remote-user",
        "x-auth-request-email",
        "x-forwarded-preferred-username",
        "x-original-url",
        "x_original_url",
        "x-rewrite-url",
        "x-http-method-override",
        "x_http_method_override",
        "x-http-method",
        "x-method-override",
        "x_forwarded_for",
        "x-sekisho-assertion",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {body}"
        );
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_passed_on_and_the_request_goes_on_as_an_ordinary_one() {
    let gate = Gate::start().await;
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n";
    let (status, text) = gate.raw(&get("/public/x", h2c)).await;
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let seen = echoed(body);
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {body}"
        );
    }
    // HTTP2-Settings goes even when Connection does not name it.
    let sneaky = "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n";
    let (_, text) = gate.raw(&get("/public/x", sneaky)).await;
    assert!(
        !text.to_ascii_lowercase().contains("http2-settings"),
        "{text}"
    );
}

#[tokio::test]
async fn an_upstream_that_switches_to_a_protocol_nobody_asked_for_gets_502() {
    // An upstream that answers every request with a 101 to h2c.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                    .await;
                let _ = conn.read(&mut head).await;
            });
        }
    });
    let pki = Pki::new();
    let (cert, key) = pki.write_leaf("site", &["app.test"]);
    let proxy = Proxy::start(&format!(
        "{certs}upstreams:\n  sneaky: {{endpoints: ['http://{addr}']}}\nhosts:\n  - host: app.test\n    public: true\n    default: sneaky\n",
        certs = certificates_yaml(&[(cert, key)]),
    ));
    let websocket = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, text) = raw_exchange(proxy.http(), get("/", websocket).as_bytes()).await;
    assert_eq!(status, 502, "{text}");
    let (status, text) = raw_exchange(proxy.http(), get("/", "").as_bytes()).await;
    assert_eq!(status, 502, "{text}");
    upstream.abort();
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused() {
    let gate = Gate::start().await;
    let (status, text) = gate
        .raw("GET /public/x HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(!text.contains("upstream: app"));
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_alone_are_refused_not_rewritten() {
    let gate = Gate::start().await;
    let post = |te: &str| {
        format!(
            "POST /public/x HTTP/1.1\r\nHost: app.test\r\n{te}Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    };
    for (te, expected) in [
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        ("Transfer-Encoding: identity, chunked\r\n", 501),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
    ] {
        let (status, text) = gate.raw(&post(te)).await;
        assert_eq!(status, expected, "{te}: {text}");
        assert!(!text.contains("upstream: app"), "{te} reached the upstream");
    }
    let (status, text) = gate.raw(&post("Transfer-Encoding: chunked\r\n")).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault_400_not_502() {
    let gate = Gate::start().await;
    let request = "POST /count HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nZZ\r\nnot a chunk\r\n0\r\n\r\n";
    let (status, text) = gate.raw(request).await;
    assert_eq!(status, 400, "{text}");
    // The upstream is not blamed: the next request goes through.
    let (status, _) = gate.raw(&get("/public/x", "")).await;
    assert_eq!(status, 200);
}

/// Grafana behind a policy that names Grafana's auth-proxy headers, with a public path.
#[tokio::test]
async fn a_policys_identity_headers_carry_the_user_and_no_client_can_send_them() {
    let pki = Pki::new();
    let upstream = Upstream::start("grafana").await;
    let (cert, key) = pki.write_leaf("site", &["grafana.test"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("session-keys");
    sekisho_proxy::add_session_key(&keys).unwrap();
    let proxy = Proxy::start(&format!(
        "{certs}{identity}policies:
  grafana:
    allow: [{{group: staff}}]
    rules: [{{paths: [{{path: /public}}], public: true}}]
    identity_headers: {{user: X-WEBAUTH-USER, groups: X-Grafana-Groups}}
upstreams:
  grafana: {{endpoints: ['{grafana}']}}
hosts:
  - {{host: grafana.test, policy: grafana, default: grafana}}
",
        certs = certificates_yaml(&[(cert, key)]),
        identity = identity_yaml(
            dir.path(),
            &format!("  session_keys_file: '{}'\n", keys.display())
        ),
        grafana = upstream.url(),
    ));
    let cookie = dev_session_cookie(
        &proxy.config_path,
        "grafana.test",
        &[
            "--subject",
            "alice-sub",
            "--email",
            "alice@uniqe.example",
            "--group",
            "staff",
        ],
    );
    // Every spelling of every identity header this route's upstream could trust.
    let spoofed = [
        ("X-WEBAUTH-USER", "admin"),
        ("X_WEBAUTH_USER", "admin"),
        ("x_webauth_User", "admin"),
        ("X-Grafana-Groups", "admins"),
        ("x_grafana_groups", "admins"),
        ("X-Forwarded-User", "admin"),
        ("X_Forwarded_Email", "admin@uniqe.example"),
    ];
    for http2 in [false, true] {
        let client = TlsClient::new(&pki, proxy.https(), http2);
        for (path, signed_in) in [("/dashboards", true), ("/public/snapshot", false)] {
            let mut req = request("grafana.test", path, http2);
            for (name, value) in spoofed {
                req.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_static(value),
                );
            }
            if signed_in {
                req.headers_mut().insert(
                    "cookie",
                    format!("__Host-sekisho={cookie}").parse().unwrap(),
                );
            }
            let (status, _, body) = read_text(client.send("grafana.test", req).await).await;
            assert_eq!(status, StatusCode::OK, "{path} (h2: {http2}): {body}");
            let seen = echoed(&body);
            let values = |name: &str| {
                seen.get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            };
            let expected = |value: &str| match signed_in {
                true => vec![value.to_owned()],
                false => Vec::new(),
            };
            assert_eq!(values("x-webauth-user"), expected("alice-sub"), "{body}");
            assert_eq!(values("x-grafana-groups"), expected("staff"), "{body}");
            // The email keeps its default name; the default user and groups names carry
            // nothing here, and are stripped as everywhere.
            assert_eq!(
                values("x-forwarded-email"),
                expected("alice@uniqe.example"),
                "{body}"
            );
            assert!(values("x-forwarded-user").is_empty(), "{body}");
            for name in ["x_webauth_user", "x_grafana_groups", "x_forwarded_email"] {
                assert!(
                    values(name).is_empty(),
                    "{name} reached the upstream: {body}"
                );
            }
        }
    }
}
