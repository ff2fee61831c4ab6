//! `sekisho tunnel HOST` when the proxy says "not logged in": the CLI logs in on stderr,
//! remembers the host and tries again, and only the stream's bytes reach stdout.
//!
//! The proxy's tunnel endpoint is not built yet (the tunnel hub is), so a stand-in answers
//! `/.sekisho/tunnel` the way the wire protocol says (401 with a `login_url` without a valid
//! token, else `101` and an echo of the stream) and passes everything else to the real proxy.
//! Whether a token is valid, the real proxy decides: the stand-in asks its `bearer: true`
//! route with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sekisho_cli::net::{Net, Origin};
use sekisho_wire::{TUNNEL_PATH, TUNNEL_PROTOCOL};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::harness::{ALICE, APP, AUTH, LIMIT, SSH, Site};

/// The stand-in tunnel endpoint in front of the proxy.
struct TunnelStandIn {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct StandInState {
    net: Net,
    app: Origin,
    auth: String,
}

impl TunnelStandIn {
    async fn start(site: &Site) -> anyhow::Result<Self> {
        let certs =
            CertificateDer::pem_file_iter(&site.cert_file)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&site.key_file)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Arc::new(StandInState {
            net: site.net.clone(),
            app: Origin::parse(&site.origin(APP))?,
            auth: site.origin(AUTH),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

async fn answer(
    state: Arc<StandInState>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if req.uri().path() != TUNNEL_PATH {
        return Ok(forward(&state, &host, req).await);
    }
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = match &token {
        Some(token) => {
            let check = Request::builder()
                .uri("/api/tunnel-check")
                .header("accept", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            state
                .net
                .exchange(&state.app, check)
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
        None => false,
    };
    if !valid {
        let rd: String =
            url::form_urlencoded::byte_serialize(format!("https://{host}/").as_bytes()).collect();
        let body = serde_json::json!({
            "error": "unauthorized",
            "message": "sign in first",
            "login_url": format!("{}/.sekisho/login?rd={rd}", state.auth),
        });
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid response"));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut got = Vec::new();
        if io.read_to_end(&mut got).await.is_ok() {
            let _ = io.write_all(b"echo: ").await;
            let _ = io.write_all(&got).await;
            let _ = io.shutdown().await;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", TUNNEL_PROTOCOL)
        .body(Full::new(Bytes::new()))
        .expect("a valid response"))
}

/// Passes a small request on to the real proxy.
async fn forward(
    state: &StandInState,
    host: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        out = out.header(name, value);
    }
    let sent = match (Origin::parse(host), out.body(Full::new(body))) {
        (Ok(origin), Ok(out)) => state.net.exchange(&origin, out).await.ok(),
        _ => None,
    };
    match sent {
        Some(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Full::new(body))
        }
        None => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::new()))
            .expect("a valid response"),
    }
}

#[tokio::test]
async fn a_tunnel_that_is_not_logged_in_logs_in_on_stderr_and_then_carries_only_the_stream()
-> anyhow::Result<()> {
    let site = Site::start().await?;
    let stand_in = TunnelStandIn::start(&site).await?;
    let ssh_host = format!("{SSH}:{}", site.port);

    let mut tunnel = site.spawn_via(
        stand_in.addr,
        &["tunnel", "--no-browser", &ssh_host],
        Some(b"SSH-2.0-test\n".to_vec()),
    )?;
    let complete = tunnel.url_after("?user_code=").await?;
    assert!(
        complete.starts_with(&site.url(AUTH, "/.sekisho/cli/device?user_code=")),
        "the login is at the auth host the refusal named: {complete}"
    );
    let browser = site.browser().await?;
    site.browse_and_log_in(&browser, &complete, |u| {
        u.host_str() == Some(AUTH) && u.path() == "/.sekisho/cli/device"
    })
    .await?;
    browser.wait_for("#approve", LIMIT).await?;
    browser.click("#approve").await?;
    let finished = tunnel.finish().await?;
    assert!(finished.status.success(), "{finished}");
    assert_eq!(
        finished.stdout, "echo: SSH-2.0-test\n",
        "stdout carries the stream and nothing else: {finished}"
    );
    assert!(
        finished
            .stderr
            .contains(&format!("needs a login at {}", site.origin(AUTH)))
            && finished.stderr.contains(&format!("as {ALICE}")),
        "{finished}"
    );
    let cache = site.cache()?;
    assert_eq!(
        cache["hosts"][format!("https://{ssh_host}")],
        site.origin(AUTH),
        "the host is remembered: {cache:#}"
    );

    // The next tunnel uses the cached token at once.
    let again = site
        .spawn_via(
            stand_in.addr,
            &["tunnel", &ssh_host],
            Some(b"again\n".to_vec()),
        )?
        .finish()
        .await?;
    assert!(again.status.success(), "{again}");
    assert_eq!(again.stdout, "echo: again\n", "{again}");
    assert!(!again.stderr.contains("login"), "{again}");

    // Logged out, a tunnel that cannot log in (its device code is denied) exits with 10.
    assert!(
        site.run(&["logout", &site.origin(AUTH)])
            .await?
            .status
            .success()
    );
    let mut denied = site.spawn_via(
        stand_in.addr,
        &["tunnel", "--no-browser", &ssh_host],
        Some(Vec::new()),
    )?;
    let complete = denied.url_after("?user_code=").await?;
    site.browse_and_log_in(&browser, &complete, |u| {
        u.host_str() == Some(AUTH) && u.path() == "/.sekisho/cli/device"
    })
    .await?;
    browser.wait_for("#deny", LIMIT).await?;
    browser.click("#deny").await?;
    let finished = denied.finish().await?;
    assert_eq!(finished.status.code(), Some(10), "{finished}");
    assert!(finished.stdout.is_empty(), "{finished}");
    assert!(finished.stderr.contains("denied"), "{finished}");
    Ok(())
}
