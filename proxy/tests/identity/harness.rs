//! The site every identity test runs against: devidp, an echo upstream and a WebSocket echo
//! upstream on loopback, the proxy on a port chosen before start (the IdP must know the
//! callback URL first), a certificate for the three test hosts, and clients that speak to the
//! proxy by host name (SNI and `Host: name:port`) without following redirects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use sekisho_site::Setup;
use sekisho_testkit::{Browser, EchoUpstream, Idp, Nginx, Pki, Url, login_with_browser, pkce};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::support::full;

/// Every single network exchange of a test ends within this.
pub(crate) const LIMIT: Duration = Duration::from_secs(15);

pub(crate) const APP: &str = "app.sekisho.test";
pub(crate) const OTHER: &str = "other.sekisho.test";
pub(crate) const AUTH: &str = "auth.sekisho.test";
/// A host whose upstream (the echo upstream) is reached through the agent `nas`.
pub(crate) const NAS: &str = "nas.sekisho.test";
/// With [`SiteOptions::nginx`]: a host with every kind of route, all served by nginx.
pub(crate) const GATE: &str = "gate.sekisho.test";
/// With [`SiteOptions::nginx`]: a host whose routes reach nginx through the agent `nas`.
pub(crate) const GATE_VIA_AGENT: &str = "gate-agent.sekisho.test";

pub(crate) const ALICE: &str = "alice@uniqe.example";
pub(crate) const CAROL: &str = "carol@elsewhere.example";
pub(crate) const PASSWORD: &str = "password";

/// The secret of client `sekisho` at devidp.
pub(crate) use sekisho_site::CLIENT_SECRET;
/// The secret of the `/hooks/github` route.
pub(crate) const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";
/// A redirect URI of client `sekisho` that nobody listens on: tests that want a code for
/// themselves stop at the redirect and read the code from its `Location`.
pub(crate) const LOOPBACK_CALLBACK: &str = "http://127.0.0.1:9/cb";

/// The proxy's session cookie on an app host, and the auth host's pending-login cookie.
pub(crate) const SESSION_COOKIE: &str = "__Host-sekisho";
pub(crate) const LOGIN_COOKIE: &str = "__Host-sekisho-login";

/// What to start beyond the standard site.
#[derive(Debug, Default)]
pub(crate) struct SiteOptions {
    /// Without identity the configuration is one the proxy of today accepts (no `identity`,
    /// `policies`, `public`, …): only for checking the harness itself.
    pub(crate) without_identity: bool,
    /// More `bearer_issuers` entries, each a YAML flow mapping.
    pub(crate) extra_bearer_issuers: Vec<String>,
    /// devidp's `--backchannel-logout-uri` for client `sekisho`: where it sends logout tokens
    /// (the proxy's own auth host is out of its reach: no DNS, no test CA).
    pub(crate) backchannel_capture: Option<String>,
    /// devidp's logout tokens (and ID tokens) carry no `sid`: a logout names only the user.
    pub(crate) logout_without_sid: bool,
    /// Start nginx with these files (path, contents) and serve [`GATE`] and
    /// [`GATE_VIA_AGENT`] from it (see [`Site::start`] for their routes).
    pub(crate) nginx: Option<Vec<(&'static str, &'static str)>>,
}

/// Everything a test talks to. Dropping it stops the proxy, the upstreams and devidp.
pub(crate) struct Site {
    // Dropped first (its shutdown starts before the parts behind it stop), and before the
    // directory its files are in.
    proxy: sekisho_site::Proxy,
    /// The proxy's HTTPS port: every test URL is `https://<host>:<port>/…`.
    pub(crate) port: u16,
    pub(crate) idp: Idp,
    /// The certificate the proxy serves for the three hosts (PEM), which the browser trusts.
    pub(crate) leaf_pem: String,
    pub(crate) app: EchoUpstream,
    pub(crate) ws: WebSocketEcho,
    /// With [`SiteOptions::nginx`].
    pub(crate) nginx: Option<Nginx>,
    /// The proxy's assertion and user-token signing keys.
    pub(crate) signing_keys: PathBuf,
    /// The key of the agent `nas` (the proxy knows its public half), and the CA to trust.
    agent_key: PathBuf,
    ca_file: PathBuf,
    client: TlsClient,
    _dir: tempfile::TempDir,
}

impl Site {
    pub(crate) async fn start(options: SiteOptions) -> anyhow::Result<Self> {
        let setup = Setup::new(
            "Sekisho identity test CA",
            AUTH,
            &[APP, OTHER, AUTH, NAS, GATE, GATE_VIA_AGENT],
            |idp, port| {
                let idp = idp
                    .redirect_uri(LOOPBACK_CALLBACK)
                    .post_logout_redirect_uri(format!("https://{AUTH}:{port}/"))
                    .post_logout_redirect_uri(format!("https://{APP}:{port}/"));
                match (&options.backchannel_capture, options.logout_without_sid) {
                    (Some(uri), false) => idp.backchannel_logout_uri(uri.clone()),
                    (Some(uri), true) => idp
                        .backchannel_logout_uri(uri.clone())
                        .backchannel_logout_without_sid(),
                    (None, _) => idp,
                }
            },
        )
        .await?;
        let (port, idp) = (setup.port, &setup.idp);
        let signing_keys = setup.dir.path().join("signing-keys.pem");
        sekisho_identity::signing::write_new_key_file(&signing_keys)?;
        let hook_secret = setup.file("github-hook-secret", &format!("{WEBHOOK_SECRET}\n"))?;
        let (agent, agent_pem) = sekisho_wire::agent_auth::AgentKey::generate()?;
        let agent_key = setup.file("nas.key", &agent_pem)?;
        let app = EchoUpstream::start("app").await?;
        let ws = WebSocketEcho::start().await?;
        let nginx = match &options.nginx {
            Some(files) => Some(Nginx::start(files).await.context("nginx starts")?),
            None => None,
        };

        let head = format!(
            "{head}upstreams:
  app: {{endpoints: ['http://{app}']}}
  ws: {{endpoints: ['http://{ws}']}}
{via_agent}",
            head = setup.head(2),
            app = app.addr,
            ws = ws.addr,
            via_agent = if options.without_identity {
                String::new()
            } else {
                format!(
                    "  viaagent: {{agent: nas, endpoints: ['http://{}']}}\n  \
                     viaagent-ws: {{agent: nas, endpoints: ['http://{}']}}\n{}",
                    app.addr,
                    ws.addr,
                    nginx.as_ref().map_or_else(String::new, gate_upstreams),
                )
            },
        );
        let config = if options.without_identity {
            format!(
                "{head}hosts:
  - host: {APP}
    default: app
    paths:
      - {{path: /ws, type: Exact, upstream: ws}}
  - host: {OTHER}
    default: app
"
            )
        } else {
            let mut bearer = format!(
                "    - {{issuer: '{issuer}', audiences: [sekisho]}}\n",
                issuer = idp.issuer()
            );
            for extra in &options.extra_bearer_issuers {
                bearer.push_str(&format!("    - {extra}\n"));
            }
            format!(
                "{head}identity:
  auth_host: {AUTH}
  signing_keys_file: '{signing_keys}'
  dangerous_allow_http_issuers: true
  providers:
{devidp}  bearer_issuers:
{bearer}policies:
  staff:
    allow: [{{group: staff}}]
{admins}
agents:
  nas: {{public_keys: ['{agent_public}']}}
hosts:
  - host: {NAS}
    policy: staff
    default: viaagent
    paths:
      - {{path: /ws, type: Exact, upstream: viaagent-ws}}
  - host: {APP}
    policy: staff
    default: app
    paths:
      - {{path: /public, type: Prefix, upstream: app, public: true}}
      - path: /hooks/github
        type: Exact
        upstream: app
        webhook: {{secret_file: '{hook_secret}'}}
      - {{path: /api, type: Prefix, upstream: app, bearer: true}}
      - {{path: /ws, type: Exact, upstream: ws}}
      - {{path: /ws-shared, type: Exact, upstream: ws, websocket_origins: ['https://{OTHER}:{port}']}}
  - host: {OTHER}
    policy: staff
    default: app
{gate}",
                admins = if nginx.is_some() {
                    "  admins:\n    allow: [{group: admins}]\n"
                } else {
                    ""
                },
                gate = if nginx.is_some() {
                    gate_hosts(&hook_secret)
                } else {
                    String::new()
                },
                devidp = setup.devidp_provider(),
                signing_keys = signing_keys.display(),
                hook_secret = hook_secret.display(),
                agent_public = agent.public_key(),
            )
        };
        let proxy = setup.start_proxy(&config)?;
        let client = TlsClient::new(&setup.pki, proxy.addr())?;
        Ok(Self {
            port,
            leaf_pem: setup.leaf_pem,
            app,
            ws,
            nginx,
            signing_keys,
            agent_key,
            ca_file: setup.ca_file,
            client,
            proxy,
            idp: setup.idp,
            _dir: setup.dir,
        })
    }

    /// Runs the agent `nas` (allowed to reach the echo and WebSocket upstreams) in this process until the
    /// handle is dropped, and waits until the proxy holds its link.
    pub(crate) async fn start_agent(&self) -> anyhow::Result<AgentHandle> {
        let yaml = format!(
            "name: nas\nkey_file: '{}'\nca_file: '{}'\nproxies:\n  - {{url: 'https://{AUTH}:{port}', address: '127.0.0.1:{port}'}}\nallow: {{http: ['{}', '{}'{nginx}]}}\n",
            self.agent_key.display(),
            self.ca_file.display(),
            self.app.addr,
            self.ws.addr,
            port = self.port,
            nginx = self
                .nginx
                .as_ref()
                .map_or_else(String::new, |nginx| format!(", '{}'", nginx.addr())),
        );
        let settings =
            sekisho_agent::config::Config::parse(&yaml, std::path::Path::new("nas.yaml"))?
                .settings(None, Default::default())?;
        let agent = sekisho_agent::Agent::new(settings)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts");
            runtime.block_on(agent.run(async {
                let _ = stopped.await;
            }));
        });
        let running = self.proxy.running();
        sekisho_testkit::eventually(LIMIT, || async move {
            ensure!(
                running.agent_links("nas") == 1,
                "the agent is not connected yet"
            );
            Ok(())
        })
        .await?;
        Ok(AgentHandle {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://<host>:<port><path>`.
    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// What the assertion's `iss` and the JWKS location are built from: the auth host's origin.
    pub(crate) fn auth_origin(&self) -> String {
        self.url(AUTH, "")
    }

    /// One request through the proxy on a new HTTP/1.1 connection; redirects are not followed.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.client.send(method, url, headers, body.into()).await
    }

    /// A GET of `target` exactly as written (no URL parser resolves or re-encodes it) on
    /// `host`, over HTTP/2 or HTTP/1.1, on a new connection.
    pub(crate) async fn get_target(
        &self,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        http2: bool,
    ) -> anyhow::Result<Reply> {
        self.client
            .send_target(host, self.port, target, headers, http2)
            .await
    }

    /// A GET through the proxy.
    pub(crate) async fn get(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// A headless Chromium that trusts the site's certificate and resolves the test hosts.
    pub(crate) async fn browser(&self) -> anyhow::Result<Browser> {
        Ok(Browser::trusting(&self.leaf_pem).await?)
    }

    /// A browser that opened `https://app…/hello`, was sent to devidp's login form, logged in
    /// as `email` and came back to `/hello` (where the upstream's echo or the denied page is).
    pub(crate) async fn browser_login(&self, email: &str) -> anyhow::Result<Browser> {
        let browser = self.browser().await?;
        browser.goto(&self.url(APP, "/hello")).await?;
        let on_idp = browser
            .wait_for_url(|url| url.port() == Some(self.idp.port()), LIMIT)
            .await
            .context("an app page without a session leads the browser to the IdP")?;
        ensure!(
            login_with_browser(&browser, email, PASSWORD).await?,
            "devidp showed no login form at {on_idp}"
        );
        browser
            .wait_for_url(
                |url| url.host_str() == Some(APP) && url.path() == "/hello",
                LIMIT,
            )
            .await
            .context("after the login the browser ends on the page it asked for")?;
        Ok(browser)
    }

    /// A login as `email` without a browser, the way a browser does it: the login endpoint,
    /// devidp's form, the callback, the handoff. Returns the app host's session cookie value.
    pub(crate) async fn login(&self, email: &str) -> anyhow::Result<String> {
        self.login_on(APP, email).await
    }

    /// [`Site::login`] on `host`: its session cookie value.
    pub(crate) async fn login_on(&self, host: &'static str, email: &str) -> anyhow::Result<String> {
        let callback = self.login_until_callback_on(host, email).await?;
        self.finish_login(callback).await
    }

    /// The first half of [`Site::login`]: the login endpoint and devidp's form, up to the
    /// redirect back to the callback, which is not followed yet (no session exists).
    pub(crate) async fn login_until_callback(&self, email: &str) -> anyhow::Result<Callback> {
        self.login_until_callback_on(APP, email).await
    }

    async fn login_until_callback_on(
        &self,
        host: &'static str,
        email: &str,
    ) -> anyhow::Result<Callback> {
        let started = self.start_login(&self.url(host, "/hello")).await?;
        let url = Agent::default()
            .authorize(&self.idp, &started.idp_url, email)
            .await?;
        Ok(Callback {
            host,
            url,
            auth_cookies: started.auth_cookies,
        })
    }

    /// The second half of [`Site::login`]: the callback (where the session begins) and the
    /// handoff. Returns the app host's session cookie value.
    pub(crate) async fn finish_login(&self, callback: Callback) -> anyhow::Result<String> {
        let reply = self
            .get(&callback.url, &refs(&navigation(&callback.auth_cookies)))
            .await?;
        ensure!(
            reply.status == StatusCode::FOUND || reply.status == StatusCode::SEE_OTHER,
            "the callback redirects to the app host's handoff: {reply}"
        );
        let handoff = reply.location()?;
        let host = callback.host;
        ensure!(
            handoff.host_str() == Some(host) && handoff.path() == "/.sekisho/handoff",
            "the callback redirects to https://{host}:PORT/.sekisho/handoff, not {handoff}"
        );
        let reply = self
            .get(handoff.as_str(), &refs(&navigation(&Jar::new())))
            .await?;
        ensure!(
            reply.status.is_redirection(),
            "the handoff redirects to the original page: {reply}"
        );
        let target = reply.location()?;
        ensure!(
            target.path() == "/hello",
            "the handoff redirects to /hello, not {target}"
        );
        let mut jar = Jar::new();
        jar.absorb(&reply.headers);
        jar.get(SESSION_COOKIE)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the handoff sets no {SESSION_COOKIE} cookie: {reply}"))
    }

    /// `GET https://auth…/.sekisho/login?rd=<rd>` as a browser navigation: the redirect to the
    /// IdP and the cookies the auth host set (the pending login).
    pub(crate) async fn start_login(&self, rd: &str) -> anyhow::Result<StartedLogin> {
        let reply = self
            .get(&self.login_url(rd), &refs(&navigation(&Jar::new())))
            .await?;
        ensure!(
            reply.status.is_redirection(),
            "the login endpoint redirects to the IdP: {reply}"
        );
        let idp_url = reply.location()?;
        ensure!(
            idp_url
                .as_str()
                .starts_with(&format!("{}/auth?", self.idp.issuer())),
            "the login endpoint redirects to the IdP's authorization endpoint, not {idp_url}"
        );
        let mut auth_cookies = Jar::new();
        auth_cookies.absorb(&reply.headers);
        ensure!(
            auth_cookies.get(LOGIN_COOKIE).is_some(),
            "the login endpoint sets the pending-login cookie {LOGIN_COOKIE}: {reply}"
        );
        Ok(StartedLogin {
            idp_url: idp_url.into(),
            auth_cookies,
        })
    }

    /// `https://auth…/.sekisho/login?rd=<rd, encoded>`.
    pub(crate) fn login_url(&self, rd: &str) -> String {
        let mut url = Url::parse(&self.url(AUTH, "/.sekisho/login")).expect("a valid URL");
        url.query_pairs_mut().append_pair("rd", rd);
        url.into()
    }

    /// The auth host's public keys for `X-Sekisho-Assertion`.
    pub(crate) async fn assertion_keys(
        &self,
    ) -> anyhow::Result<sekisho_identity::signing::VerifyingKeys> {
        let reply = self
            .get(&self.url(AUTH, "/.well-known/sekisho/jwks.json"), &[])
            .await?;
        ensure!(
            reply.status == StatusCode::OK,
            "the auth host serves its JWKS: {reply}"
        );
        Ok(sekisho_identity::signing::VerifyingKeys::from_jwks_json(
            &reply.body,
        )?)
    }

    /// Verifies an `X-Sekisho-Assertion` for `audience` with the auth host's published keys.
    /// The issuer must be the auth host's origin, with or without the port.
    pub(crate) async fn verify_assertion(
        &self,
        token: &str,
        audience: &str,
    ) -> anyhow::Result<sekisho_identity::assertion::AssertionClaims> {
        let keys = self.assertion_keys().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let with_port = self.auth_origin();
        let without_port = format!("https://{AUTH}");
        let mut last = None;
        for issuer in [&with_port, &without_port] {
            match sekisho_identity::assertion::verify(token, &keys, issuer, audience, now) {
                Ok(claims) => return Ok(claims),
                Err(error) => last = Some(error),
            }
        }
        Err(anyhow!(
            "the assertion does not verify for iss {with_port} (or {without_port}) and aud \
             {audience}: {}",
            chain(&last.expect("two tries"))
        ))
    }
}

/// A login begun at the auth host and not yet finished.
pub(crate) struct StartedLogin {
    /// The authorization request at the IdP the auth host redirected to.
    pub(crate) idp_url: String,
    /// The auth host's cookies (the pending login).
    pub(crate) auth_cookies: Jar,
}

/// A login that came back from the IdP to the auth host's callback, not yet followed.
pub(crate) struct Callback {
    /// The host the login started on, where the handoff returns.
    host: &'static str,
    /// `https://auth…/.sekisho/callback?code=…&state=…`.
    pub(crate) url: String,
    /// The auth host's cookies (the pending login).
    pub(crate) auth_cookies: Jar,
}

/// Headers of a top-level browser navigation, with `cookies`.
pub(crate) fn navigation(cookies: &Jar) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("accept", "text/html,application/xhtml+xml".to_owned()),
        ("sec-fetch-mode", "navigate".to_owned()),
    ];
    if !cookies.is_empty() {
        headers.push(("cookie", cookies.header()));
    }
    headers
}

/// Borrowed form of header lists, for [`Site::send`].
pub(crate) fn refs<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The hosts nginx serves (see [`SiteOptions::nginx`]): on [`GATE`], every kind of route
/// (public `/public`, staff-only by default, admins-only `/admin`, bearer `/api`, the webhook
/// `/hooks/github`, the WebSocket `/ws`); on [`GATE_VIA_AGENT`], public `/public` and
/// staff-only by default, through the agent `nas`.
fn gate_hosts(hook_secret: &std::path::Path) -> String {
    format!(
        "  - host: {GATE}
    policy: staff
    default: gate
    paths:
      - {{path: /public, upstream: gate, public: true}}
      - {{path: /admin, upstream: gate, policy: admins}}
      - {{path: /api, upstream: gate, bearer: true}}
      - path: /hooks/github
        type: Exact
        upstream: gate
        webhook: {{secret_file: '{hook_secret}'}}
      - {{path: /ws, type: Exact, upstream: gate}}
  - host: {GATE_VIA_AGENT}
    policy: staff
    default: gate-via-agent
    paths:
      - {{path: /public, upstream: gate-via-agent, public: true}}
",
        hook_secret = hook_secret.display(),
    )
}

/// The upstreams of [`gate_hosts`]: nginx, directly and through the agent `nas`.
fn gate_upstreams(nginx: &Nginx) -> String {
    format!(
        "  gate: {{endpoints: ['http://{addr}']}}\n  \
         gate-via-agent: {{agent: nas, endpoints: ['http://{addr}']}}\n",
        addr = nginx.addr()
    )
}

/// An answer from the proxy or the IdP, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    async fn read(response: Response<Incoming>) -> anyhow::Result<Self> {
        let status = response.status();
        let headers = response.headers().clone();
        let body = timeout(LIMIT, response.into_body().collect())
            .await
            .context("the body arrives within the limit")??
            .to_bytes();
        Ok(Self {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The first value of `name`, if it is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Location`, as an absolute URL.
    pub(crate) fn location(&self) -> anyhow::Result<Url> {
        let location = self
            .header("location")
            .ok_or_else(|| anyhow!("no Location header: {self}"))?;
        Ok(Url::parse(location)?)
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("a JSON body: {self}"))
    }

    /// Whether the echo upstream wrote this body.
    pub(crate) fn answered_by_upstream(&self) -> bool {
        self.body.starts_with("upstream: app\n")
    }
}

impl std::fmt::Display for Reply {
    /// Status, headers and the start of the body, for assertion messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", value.to_str().unwrap_or("<binary>"))?;
        }
        let excerpt: String = self.body.chars().take(600).collect();
        write!(f, "\n{excerpt}")
    }
}

/// Cookies by name, for one host; paths and expiry are ignored except for deletion.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jar(BTreeMap<String, String>);

impl Jar {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with(name: &str, value: &str) -> Self {
        let mut jar = Self::new();
        jar.0.insert(name.to_owned(), value.to_owned());
        jar
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes in every `Set-Cookie`; an empty value, `Max-Age=0` or an expiry in 1970 deletes.
    pub(crate) fn absorb(&mut self, headers: &HeaderMap) {
        for value in headers.get_all("set-cookie") {
            let Ok(text) = value.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let deleted = value.trim().is_empty()
                || parts.any(|attribute| {
                    let attribute = attribute.trim().to_ascii_lowercase();
                    attribute == "max-age=0" || attribute.contains("1970")
                });
            if deleted {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    /// The `Cookie` header value.
    pub(crate) fn header(&self) -> String {
        self.0
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// HTTPS to the proxy: dials its listener, presents the URL's host as SNI and `Host`
/// (with the port), trusts the test CA.
struct TlsClient {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    config_h2: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    fn new(pki: &Pki, addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            config: pki.client_config(&[b"http/1.1"])?,
            config_h2: pki.client_config(&[b"h2"])?,
        })
    }

    async fn send_target(
        &self,
        host: &str,
        port: u16,
        target: &str,
        headers: &[(&str, &str)],
        http2: bool,
    ) -> anyhow::Result<Reply> {
        let mut request = if http2 {
            Request::get(format!("https://{host}:{port}{target}"))
        } else {
            Request::get(target).header("host", format!("{host}:{port}"))
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(full(Bytes::new()))?;
        let exchange = async {
            let tcp = TcpStream::connect(self.addr).await?;
            let config = if http2 { &self.config_h2 } else { &self.config };
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(ServerName::try_from(host.to_owned())?, tcp)
                .await
                .context("TLS handshake with the proxy")?;
            let io = TokioIo::new(tls);
            let response = if http2 {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(connection);
                sender.send_request(request).await?
            } else {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(connection);
                sender.send_request(request).await?
            };
            Reply::read(response).await
        };
        timeout(LIMIT, exchange)
            .await
            .with_context(|| format!("an answer to {target} on {host} within {LIMIT:?}"))?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let url = Url::parse(url)?;
        let host = url.host_str().ok_or_else(|| anyhow!("{url} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", format!("{host}:{port}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(full(body))?;
        let exchange = async {
            let tcp = TcpStream::connect(self.addr).await?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(ServerName::try_from(host.to_owned())?, tcp)
                .await
                .context("TLS handshake with the proxy")?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            Reply::read(sender.send_request(request).await?).await
        };
        timeout(LIMIT, exchange)
            .await
            .with_context(|| format!("an answer to {url} within {LIMIT:?}"))?
    }
}

/// A user agent for devidp over plain HTTP, without a browser: keeps devidp's cookies, follows
/// its redirects and fills its login form.
#[derive(Default)]
pub(crate) struct Agent {
    cookies: Jar,
}

impl Agent {
    /// Follows devidp's redirects from the authorization request `url`, logging in as `email`
    /// when the form shows, until a redirect leaves devidp; returns where that one points.
    pub(crate) async fn authorize(
        &mut self,
        idp: &Idp,
        url: &str,
        email: &str,
    ) -> anyhow::Result<String> {
        let mut next = (Method::GET, url.to_owned(), String::new());
        for _ in 0..12 {
            let (method, url, form) = next;
            let reply = self.send(method, &url, form).await?;
            if reply.status.is_redirection() {
                let location = reply
                    .header("location")
                    .ok_or_else(|| anyhow!("a redirect without Location: {reply}"))?;
                let location = Url::parse(&url)?.join(location)?;
                if location.port() != Some(idp.port()) {
                    return Ok(location.into());
                }
                next = (Method::GET, location.into(), String::new());
                continue;
            }
            let Some(action) = form_action(&reply.body, "login-form") else {
                bail!("devidp showed neither a redirect nor its login form at {url}: {reply}");
            };
            let form = Url::parse_with_params("x:", [("username", email), ("password", PASSWORD)])?
                .query()
                .unwrap_or_default()
                .to_owned();
            next = (Method::POST, Url::parse(&url)?.join(&action)?.into(), form);
        }
        bail!("devidp kept redirecting")
    }

    async fn send(&mut self, method: Method, url: &str, form: String) -> anyhow::Result<Reply> {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut request = Request::builder().method(method).uri(url);
        if !self.cookies.is_empty() {
            request = request.header("cookie", self.cookies.header());
        }
        if !form.is_empty() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request.body(Full::new(Bytes::from(form)))?;
        let response = timeout(LIMIT, client.request(request))
            .await
            .with_context(|| format!("devidp answers {url} within {LIMIT:?}"))??;
        let reply = Reply::read(response).await?;
        self.cookies.absorb(&reply.headers);
        Ok(reply)
    }
}

/// The `action` of the form with id `id` in an HTML page.
fn form_action(html: &str, id: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let form = &html[html[..start].rfind("<form")?..];
    let action = form.split("action=\"").nth(1)?.split('"').next()?;
    Some(action.replace("&amp;", "&"))
}

/// An ID token from devidp for `email`, got the way a client does: an authorization request
/// with PKCE (logging in at the form without a browser), then the code exchange. `client` is
/// `sekisho` (confidential, `CLIENT_SECRET`) or `sekisho-cli` (public, any loopback port).
pub(crate) async fn id_token(idp: &Idp, client: &str, email: &str) -> anyhow::Result<String> {
    let redirect_uri = match client {
        "sekisho" => LOOPBACK_CALLBACK,
        _ => "http://127.0.0.1:9/callback",
    };
    let (verifier, challenge) = pkce();
    let authorize = Url::parse_with_params(
        &format!("{}/auth", idp.issuer()),
        [
            ("client_id", client),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("scope", "openid email profile groups"),
            ("state", "state"),
            ("nonce", "nonce"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let back = Url::parse(
        &Agent::default()
            .authorize(idp, authorize.as_str(), email)
            .await?,
    )?;
    let code = back
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, code)| code.into_owned())
        .ok_or_else(|| anyhow!("devidp redirected without a code: {back}"))?;

    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", &verifier),
    ];
    if client != "sekisho" {
        form.push(("client_id", client));
    }
    let form = Url::parse_with_params("x:", form)?
        .query()
        .unwrap_or_default()
        .to_owned();
    let mut request = Request::post(format!("{}/token", idp.issuer()))
        .header("content-type", "application/x-www-form-urlencoded");
    if client == "sekisho" {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("sekisho:{CLIENT_SECRET}"));
        request = request.header("authorization", format!("Basic {basic}"));
    }
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = timeout(
        LIMIT,
        client.request(request.body(Full::new(Bytes::from(form)))?),
    )
    .await
    .context("devidp's token endpoint answers within the limit")??;
    let reply = Reply::read(response).await?;
    ensure!(
        reply.status == StatusCode::OK,
        "devidp exchanges the code: {reply}"
    );
    reply.json()?["id_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("devidp's token answer has no id_token: {reply}"))
}

/// The claims of a JWT, unverified (for reading `exp` and `aud` in a test).
pub(crate) fn jwt_claims(token: &str) -> anyhow::Result<serde_json::Value> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("not a JWT: {token}"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A WebSocket upstream on 127.0.0.1:0 that echoes text and binary messages, and records how
/// many connections it accepted and the status of each close frame it received.
pub(crate) struct WebSocketEcho {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    closes: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebSocketEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebSocketEcho {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let (accepted, closed) = (connections.clone(), closes.clone());
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    // Reading on after a close frame sends tungstenite's answer to it.
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Close(frame) = &message {
                            // 1005: a close frame without a status.
                            let code = frame.as_ref().map_or(1005, |frame| u16::from(frame.code));
                            closed.lock().expect("not poisoned").push(code);
                        } else if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            closes,
            task,
        })
    }

    /// How many connections reached the echo so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The status of every close frame received so far, oldest first.
    pub(crate) fn closes(&self) -> Vec<u16> {
        self.closes.lock().expect("not poisoned").clone()
    }
}

/// Opens `url` as a WebSocket in the page, sends `ping`, and returns what came back (or the
/// close code). Keeps the socket in `window.sekishoSocket` and its close code, once closed, in
/// `window.sekishoClose` (and whether the closing handshake completed in
/// `window.sekishoCloseClean`).
pub(crate) async fn open_websocket(browser: &Browser, url: &str) -> anyhow::Result<String> {
    let script = format!(
        "return new Promise((resolve) => {{
            const ws = new WebSocket({url:?});
            window.sekishoSocket = ws;
            window.sekishoClose = null;
            window.sekishoCloseClean = null;
            ws.onclose = (event) => {{
                window.sekishoClose = event.code;
                window.sekishoCloseClean = event.wasClean;
                resolve('closed ' + event.code);
            }};
            ws.onopen = () => ws.send('ping');
            ws.onmessage = (event) => resolve('message ' + event.data);
            setTimeout(() => resolve('timeout'), 10000);
        }});"
    );
    Ok(browser
        .execute(&script)
        .await?
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// An error and its sources, one line.
pub(crate) use sekisho_proxy::error_chain as chain;

/// An in-process agent; stopped (and its thread joined) when dropped.
pub(crate) struct AgentHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
