use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use sekisho_watchdog::Watchdog;

use crate::{Error, free_port, log, process::spawn_watched};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long chromedriver may take to listen.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Browser::fill`], [`Browser::click`] and [`Browser::text`] wait for their element.
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Chromium's own limit for a page load and for a script (a promise) to settle.
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often waits look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many characters of the page a timeout error shows.
const EXCERPT_CHARS: usize = 800;

/// What a [`Browser`] trusts and which host names it resolves.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Certificates to trust, each as the base64 SHA-256 of its SubjectPublicKeyInfo (see
    /// [`crate::spki_sha256_base64`]). Every other certificate is checked as usual, so a
    /// server whose key is not listed and not publicly trusted gets an error page.
    pub spki_hashes: Vec<String>,
    /// Host name patterns that resolve to 127.0.0.1, in Chromium's `--host-resolver-rules`
    /// syntax (`*` matches any part, so `*.sekisho.test` covers every test host). Every other
    /// name stays unresolvable; IP literals and `localhost` keep working.
    /// Default: `*.sekisho.test` and `sekisho.test`.
    pub host_rules: Vec<String>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self {
            spki_hashes: Vec::new(),
            host_rules: vec!["*.sekisho.test".to_owned(), "sekisho.test".to_owned()],
        }
    }
}

/// One cookie as the browser holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    /// As the browser records it: a host-only cookie has the bare host, a domain cookie a
    /// leading dot.
    pub domain: Option<String>,
    pub path: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`, when the browser reports one.
    pub same_site: Option<String>,
    /// False for a persistent cookie (one with an expiry).
    pub session: bool,
}

/// A headless Chromium with a fresh profile, driven over WebDriver by its own chromedriver.
/// Dropping it ends the WebDriver session and kills chromedriver and every Chromium process
/// (they share a process group), then removes the profile.
///
/// Navigation ([`Browser::goto`], and clicks that submit forms) returns once the new page
/// has loaded; element helpers wait for their element up to 10 s; every wait ends with an
/// [`Error::Timeout`] naming the current URL and the start of the page's text.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver_port: u16,
    session_id: Option<String>,
    driver_log: PathBuf,
    driver: Child,
    // Dropped after `driver`: kills the group and removes `dir`.
    _watchdog: Watchdog,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// A browser with the default host rules that trusts the certificate in `cert_pem` (as
    /// [`BrowserOptions::spki_hashes`]; further PEM blocks after it are ignored).
    pub async fn trusting(cert_pem: &str) -> Result<Self, Error> {
        Self::start(BrowserOptions {
            spki_hashes: vec![crate::spki_sha256_base64(cert_pem)?],
            ..BrowserOptions::default()
        })
        .await
    }

    /// Starts chromedriver on a free loopback port and opens a session with a new Chromium.
    pub async fn start(options: BrowserOptions) -> Result<Self, Error> {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            if !Path::new(path).is_file() {
                return Err(Error::ProgramMissing {
                    path: path.into(),
                    package,
                });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("sekisho-browser-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let profile = dir.path().join("profile");
        let driver_log = dir.path().join("chromedriver.log");
        let output = File::create(dir.path().join("chromedriver.out")).map_err(|source| {
            Error::WriteFile {
                path: dir.path().join("chromedriver.out"),
                source,
            }
        })?;
        let output_err = output.try_clone().map_err(|source| Error::WriteFile {
            path: dir.path().join("chromedriver.out"),
            source,
        })?;
        let driver_port = free_port()?;
        let (mut driver, watchdog) = spawn_watched(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={driver_port}"))
                .arg(format!("--log-path={}", driver_log.display()))
                .stdin(Stdio::null())
                .stdout(output)
                .stderr(output_err),
            "chromedriver",
            dir.path(),
        )?;
        wait_for_listener(&mut driver, driver_port, &driver_log).await?;

        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!(
                "--host-resolver-rules={}",
                host_resolver_rules(&options.host_rules)
            ),
        ];
        if !options.spki_hashes.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                options.spki_hashes.join(",")
            ));
        }
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "pageLoadStrategy": "normal",
            "timeouts": {
                "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64,
                "script": PAGE_LOAD_TIMEOUT.as_millis() as u64,
                "implicit": 0,
            },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .map_err(|source| Error::NewSession {
                log_tail: log::tail(&driver_log),
                log: driver_log.clone(),
                source: Box::new(source),
            })?;
        let session_id = client.session_id().await.ok().flatten();
        Ok(Self {
            client,
            driver_port,
            session_id,
            driver_log,
            driver,
            _watchdog: watchdog,
            _dir: dir,
        })
    }

    /// The underlying fantoccini client, for what this type does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits until the page has loaded. A certificate the browser does not
    /// trust does not fail this: the page is then Chromium's interstitial (its text has
    /// `NET::ERR_CERT_...`) and the server gets no request. A name that does not resolve
    /// fails with `net::ERR_NAME_NOT_RESOLVED` in the error's source.
    pub async fn goto(&self, url: &str) -> Result<(), Error> {
        self.client
            .goto(url)
            .await
            .map_err(|source| web_driver(format!("go to {url}"), source))
    }

    /// The URL of the current page.
    pub async fn current_url(&self) -> Result<Url, Error> {
        self.client
            .current_url()
            .await
            .map_err(|source| web_driver("read the current URL", source))
    }

    /// Clears the input field matched by `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) -> Result<(), Error> {
        let element = self.element(css).await?;
        element
            .clear()
            .await
            .map_err(|source| web_driver(format!("clear {css}"), source))?;
        element
            .send_keys(text)
            .await
            .map_err(|source| web_driver(format!("type into {css}"), source))
    }

    /// Clicks the element matched by `css`; a click that submits a form returns once the next
    /// page has loaded.
    pub async fn click(&self, css: &str) -> Result<(), Error> {
        self.element(css)
            .await?
            .click()
            .await
            .map_err(|source| web_driver(format!("click {css}"), source))
    }

    /// The rendered text of the element matched by `css`.
    pub async fn text(&self, css: &str) -> Result<String, Error> {
        self.element(css)
            .await?
            .text()
            .await
            .map_err(|source| web_driver(format!("read the text of {css}"), source))
    }

    /// Whether an element matches `css` now (no waiting).
    pub async fn exists(&self, css: &str) -> Result<bool, Error> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|found| !found.is_empty())
            .map_err(|source| web_driver(format!("look for {css}"), source))
    }

    /// The current page's HTML as the browser serializes it.
    pub async fn page_source(&self) -> Result<String, Error> {
        self.client
            .source()
            .await
            .map_err(|source| web_driver("read the page source", source))
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exists(css).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self
                    .timeout(format!("an element matching `{css}`"), timeout)
                    .await);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the current URL satisfies `predicate`, and returns it.
    pub async fn wait_for_url(
        &self,
        predicate: impl Fn(&Url) -> bool,
        timeout: Duration,
    ) -> Result<Url, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url().await?;
            if predicate(&url) {
                return Ok(url);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("a URL that matches".to_owned(), timeout).await);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The cookies visible to the current page (WebDriver shows only those of the current
    /// document's origin).
    pub async fn cookies(&self) -> Result<Vec<Cookie>, Error> {
        let cookies = self
            .client
            .get_all_cookies()
            .await
            .map_err(|source| web_driver("read the cookies", source))?;
        Ok(cookies
            .into_iter()
            .map(|cookie| Cookie {
                name: cookie.name().to_owned(),
                value: cookie.value().to_owned(),
                domain: cookie.domain().map(str::to_owned),
                path: cookie.path().map(str::to_owned),
                secure: cookie.secure().unwrap_or(false),
                http_only: cookie.http_only().unwrap_or(false),
                same_site: cookie.same_site().map(|s| s.to_string()),
                session: cookie.expires().is_none_or(|e| e.is_session()),
            })
            .collect())
    }

    /// Deletes the cookies of the current page's origin.
    pub async fn delete_all_cookies(&self) -> Result<(), Error> {
        self.client
            .delete_all_cookies()
            .await
            .map_err(|source| web_driver("delete the cookies", source))
    }

    /// Runs `js` as the body of a function in the page and returns what it returns. A returned
    /// promise is awaited (up to 30 s), so
    /// `return fetch('/api').then(r => r.status)` gives the status.
    pub async fn execute(&self, js: &str) -> Result<Value, Error> {
        self.client
            .execute(js, Vec::new())
            .await
            .map_err(|source| web_driver("run a script", source))
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|source| web_driver("take a screenshot", source))?;
        std::fs::write(path, png).map_err(|source| Error::WriteFile {
            path: path.to_owned(),
            source,
        })
    }

    /// The file chromedriver logs to (it includes Chromium's own messages).
    pub fn driver_log(&self) -> &Path {
        &self.driver_log
    }

    async fn element(&self, css: &str) -> Result<fantoccini::elements::Element, Error> {
        self.wait_for(css, ELEMENT_TIMEOUT).await?;
        self.client
            .find(Locator::Css(css))
            .await
            .map_err(|source| web_driver(format!("find {css}"), source))
    }

    /// A timeout error with the current URL and the start of the page's text, as far as they
    /// can still be read.
    pub(crate) async fn timeout(&self, what: String, waited: Duration) -> Error {
        let url = match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(error) => format!("(unknown: {error})"),
        };
        let excerpt = match self
            .client
            .execute(
                "return document.body ? document.body.innerText \
                 : document.documentElement.outerHTML;",
                Vec::new(),
            )
            .await
        {
            Ok(Value::String(text)) => text.chars().take(EXCERPT_CHARS).collect(),
            Ok(other) => other.to_string(),
            Err(error) => format!("(unreadable: {error})"),
        };
        Error::Timeout {
            what,
            waited,
            url,
            excerpt,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chromedriver log ({}), last lines:\n{}",
                self.driver_log.display(),
                log::tail(&self.driver_log)
            );
        }
        // Ends the session so that Chromium shuts down cleanly; a plain blocking request,
        // since drop cannot await and the test's runtime may be the one running this drop.
        if let Some(id) = &self.session_id {
            let _ = delete_session(self.driver_port, id);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/<id>` to chromedriver, with short timeouts. Returns once the whole
/// response has arrived (chromedriver answers after Chromium has quit), without waiting for
/// chromedriver to close the connection.
fn delete_session(port: u16, id: &str) -> std::io::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    write!(
        stream,
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        response.extend_from_slice(&chunk[..read]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok());
        if length.is_none_or(|length| response.len() >= end + 4 + length) {
            return Ok(());
        }
    }
}

/// `MAP <pattern> 127.0.0.1` for each pattern, then everything else unresolvable except IP
/// literals and localhost.
fn host_resolver_rules(patterns: &[String]) -> String {
    let mut rules: Vec<String> = patterns
        .iter()
        .map(|pattern| format!("MAP {pattern} 127.0.0.1"))
        .collect();
    rules.push("MAP * ~NOTFOUND".to_owned());
    rules.push("EXCLUDE localhost".to_owned());
    rules.push("EXCLUDE 127.0.0.1".to_owned());
    rules.join(", ")
}

async fn wait_for_listener(driver: &mut Child, port: u16, log: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(Error::Exited {
                name: "chromedriver",
                status: status.to_string(),
                log: log.to_owned(),
                log_tail: log::tail(log),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                name: "chromedriver",
                waited: DRIVER_READY_TIMEOUT,
                log: log.to_owned(),
                log_tail: log::tail(log),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn web_driver(action: impl Into<String>, source: fantoccini::error::CmdError) -> Error {
    Error::WebDriver {
        action: action.into(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::host_resolver_rules;

    #[test]
    fn test_hosts_map_to_loopback_and_every_other_name_fails() {
        assert_eq!(
            host_resolver_rules(&["*.sekisho.test".to_owned()]),
            "MAP *.sekisho.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
        );
    }
}
