//! ACME HTTP-01 challenges through the whole front door, on real sockets: the proxy started
//! in-process with challenge routes (which no file can give: a route source adds them, so only
//! the crate's own tests can start a proxy with them), an echo upstream as the solver and
//! another as the site, raw HTTP/1.1 on the plain listener and over TLS.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::ServerName;
use sekisho_testkit::{EchoUpstream, Pki, echoed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Config, HostConfig};
use crate::frontdoor::server::{Options, Running, start_with_config};

const TOKEN_PATH: &str = "/.well-known/acme-challenge/tok3n";

/// A proxy serving `shop.test` (public, everything to `app`) over HTTPS, with one challenge
/// of `shop.test` and one of `solo.test` (a host with no other route) going to `solver`.
struct Gate {
    running: Running,
    pki: Pki,
    solver: EchoUpstream,
    app: EchoUpstream,
    _dir: tempfile::TempDir,
}

impl Gate {
    async fn start(http_mode: &str) -> Self {
        let pki = Pki::new("Sekisho ACME test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let leaf = pki.leaf(&["shop.test", "solo.test"]).unwrap();
        std::fs::write(dir.path().join("site.crt"), leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("site.key"), leaf.key_pem).unwrap();
        let solver = EchoUpstream::start("solver").await.unwrap();
        let app = EchoUpstream::start("app").await.unwrap();
        let yaml = format!(
            "listen: {{https: '127.0.0.1:0', http: '127.0.0.1:0', http_mode: {http_mode}, admin: '127.0.0.1:0'}}
workers: 1
access_log: false
tls: {{certificates: [{{cert: site.crt, key: site.key}}]}}
upstreams:
  app: {{endpoints: ['http://{app}']}}
  solver: {{endpoints: ['http://{solver}']}}
hosts:
  - {{host: shop.test, public: true, default: app}}
",
            app = app.addr,
            solver = solver.addr,
        );
        let mut config = Config::parse(&yaml, Path::new("test.yaml"), dir.path()).unwrap();
        config.acme_challenges = ["shop.test", "solo.test"]
            .iter()
            .map(|host| {
                serde_yaml_ng::from_str::<HostConfig>(&format!(
                    "{{host: {host}, paths: [{{path: '{TOKEN_PATH}', type: Exact, upstream: solver}}]}}"
                ))
                .unwrap()
            })
            .collect();
        let running = start_with_config(
            config,
            Options {
                handle_signals: false,
                ..Options::default()
            },
        )
        .unwrap();
        Self {
            running,
            pki,
            solver,
            app,
            _dir: dir,
        }
    }

    /// `method path` for `host` on the plain-HTTP listener.
    async fn plain(&self, method: &str, host: &str, path: &str) -> Answer {
        let addr = self.running.http_addr.unwrap();
        exchange(TcpStream::connect(addr).await.unwrap(), method, host, path).await
    }

    /// `method path` for `host` on the HTTPS listener (SNI `host`).
    async fn https(&self, method: &str, host: &str, path: &str) -> Answer {
        let tcp = TcpStream::connect(self.running.https_addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.pki.client_config(&[b"http/1.1"]).unwrap())
            .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
            .await
            .unwrap();
        exchange(tls, method, host, path).await
    }

    /// Where a redirect of `path` on `shop.test` points.
    fn https_url(&self, path: &str) -> String {
        format!("https://shop.test:{}{path}", self.running.https_addr.port())
    }
}

/// A response as text: the status, the head and the body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then_some(value)
        })
    }
}

/// One request, written as raw bytes so that the path reaches the proxy exactly as given, on a
/// connection the proxy closes after answering.
async fn exchange(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    host: &str,
    path: &str,
) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify; what arrived before is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut bytes))
        .await
        .expect("the proxy answers and closes within 10 s");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn a_challenge_is_proxied_over_plain_http_without_login_and_everything_else_redirects() {
    let gate = Gate::start("redirect").await;

    let answer = gate.plain("GET", "shop.test", TOKEN_PATH).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(echoed(&answer.body, "upstream"), Some("solver"));
    assert_eq!(echoed(&answer.body, "path"), Some(TOKEN_PATH));
    // The normal header hygiene applies: forwarding headers set, no identity claimed.
    assert_eq!(echoed(&answer.body, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed(&answer.body, "x-forwarded-host"), Some("shop.test"));
    assert!(!answer.body.contains("x-forwarded-user"), "{}", answer.body);
    assert!(answer.header("x-request-id").is_some(), "{}", answer.head);

    let answer = gate.plain("GET", "shop.test", "/other?a=b").await;
    assert_eq!(answer.status, 308, "{}", answer.head);
    assert_eq!(
        answer.header("location"),
        Some(gate.https_url("/other?a=b").as_str())
    );
    // The challenge prefix itself, and a token not issued, are not challenges.
    for path in [
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/other",
    ] {
        let answer = gate.plain("GET", "shop.test", path).await;
        assert_eq!(answer.status, 308, "{path}: {}", answer.head);
    }
    // A host with a challenge and no site: its challenge passes, nothing else is served.
    let answer = gate.plain("GET", "solo.test", TOKEN_PATH).await;
    assert_eq!(echoed(&answer.body, "upstream"), Some("solver"));
    assert_eq!(gate.plain("GET", "solo.test", "/").await.status, 404);

    assert_eq!(gate.solver.received().len(), 2);
    assert!(gate.app.received().is_empty());
}

#[tokio::test]
async fn a_challenge_path_over_https_is_the_https_routes_business() {
    let gate = Gate::start("redirect").await;

    let answer = gate.https("GET", "shop.test", TOKEN_PATH).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(echoed(&answer.body, "upstream"), Some("app"));
    let answer = gate.https("GET", "solo.test", TOKEN_PATH).await;
    assert_eq!(answer.status, 404, "{}", answer.head);

    assert!(gate.solver.received().is_empty());
}

#[tokio::test]
async fn a_challenge_answers_get_and_head_only() {
    let gate = Gate::start("redirect").await;

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let answer = gate.plain(method, "shop.test", TOKEN_PATH).await;
        assert_eq!(answer.status, 405, "{method}: {}", answer.head);
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let answer = gate.plain("HEAD", "shop.test", TOKEN_PATH).await;
    assert_eq!(answer.status, 200, "{}", answer.head);

    let methods: Vec<_> = gate
        .solver
        .received()
        .into_iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["HEAD"]);
}

#[tokio::test]
async fn path_tricks_under_the_challenge_prefix_reach_nothing() {
    let gate = Gate::start("redirect").await;

    // Dot segments are resolved before the challenge table is asked: what is left is another
    // path, which is redirected like any other.
    for (raw, normal) in [
        ("/.well-known/acme-challenge/../../admin", "/admin"),
        ("/.well-known/acme-challenge/tok3n/../../../admin", "/admin"),
        (
            "/.well-known/acme-challenge/tok3n/..",
            "/.well-known/acme-challenge/",
        ),
    ] {
        let answer = gate.plain("GET", "shop.test", raw).await;
        assert_eq!(answer.status, 308, "{raw}: {}", answer.head);
        assert_eq!(
            answer.header("location"),
            Some(gate.https_url(normal).as_str()),
            "{raw}"
        );
    }
    // Encoded dot segments and encoded slashes are refused outright.
    for raw in [
        "/.well-known/acme-challenge/%2e%2e/%2e%2e/admin",
        "/.well-known/acme-challenge/%2E%2E/admin",
        "/.well-known/acme-challenge/tok3n%2F..%2F..%2Fadmin",
        "/.well-known/acme-challenge%2Ftok3n",
    ] {
        let answer = gate.plain("GET", "shop.test", raw).await;
        assert_eq!(answer.status, 400, "{raw}: {}", answer.head);
    }

    assert!(gate.solver.received().is_empty());
    assert!(gate.app.received().is_empty());
}

#[tokio::test]
async fn in_serve_mode_a_challenge_takes_precedence_over_the_sites_routes() {
    let gate = Gate::start("serve").await;

    let answer = gate.plain("GET", "shop.test", TOKEN_PATH).await;
    assert_eq!(echoed(&answer.body, "upstream"), Some("solver"));
    let answer = gate.plain("GET", "shop.test", "/other").await;
    assert_eq!(echoed(&answer.body, "upstream"), Some("app"));
    let answer = gate.plain("POST", "shop.test", TOKEN_PATH).await;
    assert_eq!(answer.status, 405, "{}", answer.head);
}
