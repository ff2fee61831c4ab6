//! Test support: the real dev IdP (`testing/devidp/server.mjs`) as a child process, a cookie-keeping
//! HTTP driver for its login pages, and a loopback receiver for back-channel logout.
//! Kept small on purpose; a shared testkit crate may replace it.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sekisho_identity::http::{HttpClient, HttpClientConfig};
use sekisho_identity::oidc::{Provider, ProviderConfig, ProviderKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;

pub(crate) const REDIRECT_URI: &str = "https://auth.localhost:8443/.sekisho/callback";
pub(crate) const CLIENT_ID: &str = "sekisho";
pub(crate) const CLIENT_SECRET: &str = "sekisho-dev-secret";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Every wait in these tests is bounded by this.
pub(crate) async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .with_context(|| format!("{what} did not finish within 20 s"))
}

/// A running devidp; killed when dropped.
pub(crate) struct DevIdp {
    _child: Child,
    pub(crate) issuer: String,
    secret_file: tempfile::NamedTempFile,
}

impl DevIdp {
    pub(crate) async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let server = concat!(env!("CARGO_MANIFEST_DIR"), "/../testing/devidp/server.mjs");
        let mut child = Command::new("node")
            .arg(server)
            .args([
                "--port",
                "0",
                "--redirect-uri",
                REDIRECT_URI,
                "--log-level",
                "quiet",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting node testing/devidp/server.mjs (run `npm ci` in testing/devidp/)")?;
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.starts_with("devidp:") && !line.contains("Unsupported runtime") {
                    eprintln!("[devidp] {line}");
                }
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("devidp printed no ready line in time")??
            .context("devidp exited before it was ready")?;
        let ready: serde_json::Value = serde_json::from_str(&line).context("ready line")?;
        if ready["ready"] != true {
            bail!("unexpected ready line {line}");
        }
        let issuer = ready["issuer"].as_str().context("issuer")?.to_owned();
        let secret_file = tempfile::NamedTempFile::new()?;
        std::fs::write(secret_file.path(), format!("{CLIENT_SECRET}\n"))?;
        Ok(Self {
            _child: child,
            issuer,
            secret_file,
        })
    }

    /// A generic provider configuration pointing at this IdP.
    pub(crate) fn config(&self) -> ProviderConfig {
        let yaml = format!(
            "name: devidp\ndisplay_name: Dev IdP\nissuer: {}\nclient_id: {CLIENT_ID}\nclient_secret_file: {}\n",
            self.issuer,
            self.secret_file.path().display()
        );
        serde_yaml_ng::from_str(&yaml).expect("valid provider config")
    }

    /// A `google`-kind configuration pointing at this IdP, with these hosted domains.
    pub(crate) fn google_config(&self, hosted_domains: &[&str]) -> ProviderConfig {
        let mut config = self.config();
        config.kind = ProviderKind::Google;
        config.scopes = vec!["openid".into(), "email".into(), "profile".into()];
        config.hosted_domains = hosted_domains.iter().map(|d| d.to_string()).collect();
        config
    }

    pub(crate) async fn provider(&self, config: ProviderConfig) -> anyhow::Result<Provider> {
        Ok(bounded("discovery", Provider::discover(config, &http())).await??)
    }

    /// Ends every IdP session of `sub` (and sends back-channel logout tokens).
    pub(crate) async fn dev_logout(&self, sub: &str) -> anyhow::Result<serde_json::Value> {
        let request = http::Request::post(format!("{}/__dev/logout?sub={sub}", self.issuer))
            .body(Vec::new())?;
        let response = bounded("dev logout", http().execute(request)).await??;
        if response.status() != 200 {
            bail!("dev logout answered {}", response.status());
        }
        Ok(serde_json::from_slice(response.body())?)
    }
}

pub(crate) fn http() -> HttpClient {
    HttpClient::new(&HttpClientConfig {
        allow_plain_http: true,
        ..HttpClientConfig::default()
    })
    .expect("http client")
}

/// Drives the IdP's pages like a browser: keeps cookies, follows redirects by hand.
pub(crate) struct Browser {
    http: HttpClient,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        Self {
            http: http(),
            cookies: BTreeMap::new(),
        }
    }

    async fn send(
        &mut self,
        method: http::Method,
        url: &Url,
        form: Option<&[(&str, &str)]>,
    ) -> anyhow::Result<http::Response<Vec<u8>>> {
        let mut request = http::Request::builder().method(method).uri(url.as_str());
        if !self.cookies.is_empty() {
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(http::header::COOKIE, cookie);
        }
        let body = match form {
            Some(fields) => {
                request = request.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields)
                    .finish()
                    .into_bytes()
            }
            None => Vec::new(),
        };
        let response = bounded("IdP request", self.http.execute(request.body(body)?)).await??;
        for value in response.headers().get_all(http::header::SET_COOKIE) {
            let pair = value.to_str()?.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
        Ok(response)
    }

    /// Logs `email` in at `auth_url` and returns the callback URL (with `code` and `state`)
    /// the IdP redirects to.
    pub(crate) async fn login(&mut self, auth_url: &Url, email: &str) -> anyhow::Result<Url> {
        let mut response = self.send(http::Method::GET, auth_url, None).await?;
        let mut current = auth_url.clone();
        for _ in 0..10 {
            if !response.status().is_redirection() {
                bail!(
                    "expected a redirect from {current}, got {}: {}",
                    response.status(),
                    String::from_utf8_lossy(response.body())
                );
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .context("redirect without location")?
                .to_str()?;
            let next = current.join(location)?;
            if next.as_str().starts_with(REDIRECT_URI) {
                return Ok(next);
            }
            if next.path().starts_with("/interaction/") && !next.path().ends_with("/login") {
                let page = self.send(http::Method::GET, &next, None).await?;
                if page.status() != 200 {
                    bail!("login page answered {}", page.status());
                }
                let post = Url::parse(&format!("{next}/login"))?;
                response = self
                    .send(
                        http::Method::POST,
                        &post,
                        Some(&[("username", email), ("password", "password")]),
                    )
                    .await?;
                current = post;
            } else {
                response = self.send(http::Method::GET, &next, None).await?;
                current = next;
            }
        }
        bail!("too many redirects")
    }
}

/// `code` and `state` from a callback URL.
pub(crate) fn code_and_state(callback: &Url) -> (String, String) {
    let get = |name: &str| {
        callback
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("callback {callback} has no {name}"))
    };
    (get("code"), get("state"))
}

/// Logs `email` in through `provider` and finishes the login.
pub(crate) async fn log_in(
    provider: &Provider,
    email: &str,
) -> anyhow::Result<Result<sekisho_identity::oidc::VerifiedLogin, sekisho_identity::oidc::LoginError>>
{
    let redirect = Url::parse(REDIRECT_URI)?;
    let (auth_url, pending) = provider.begin_login(&redirect);
    let callback = Browser::new().login(&auth_url, email).await?;
    let (code, state) = code_and_state(&callback);
    bounded(
        "finish_login",
        provider.finish_login(&pending, &code, &state),
    )
    .await
}

/// A loopback HTTP receiver for back-channel logout: hands each `logout_token` form field to
/// the test. The accept loop is aborted when this is dropped (it holds no state worth
/// finishing, so cancelling it anywhere is fine).
pub(crate) struct LogoutReceiver {
    pub(crate) uri: String,
    tokens: tokio::sync::mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl LogoutReceiver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("http://{}/backchannel-logout", listener.local_addr()?);
        let (tx, tokens) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        for (name, value) in url::form_urlencoded::parse(&body) {
                            if name == "logout_token" {
                                let _ = tx.send(value.into_owned());
                            }
                        }
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(bytes::Bytes::new())))
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(Self { uri, tokens, task })
    }

    pub(crate) async fn next_token(&mut self) -> anyhow::Result<String> {
        bounded("a logout token", self.tokens.recv())
            .await?
            .context("receiver closed")
    }
}

impl Drop for LogoutReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Re-encodes a JWT with `edit` applied to its claims, keeping the original signature.
pub(crate) fn tamper_claims(
    token: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

/// A token with `header` over the claims of `token`, signed with HS256 under `key` (or
/// unsigned for `alg: none`).
pub(crate) fn resign(token: &str, alg: &str, key: &[u8]) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1).unwrap();
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let input = format!("{header}.{payload}");
    let signature = match alg {
        "HS256" => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes()))
        }
        _ => String::new(),
    };
    format!("{input}.{signature}")
}
