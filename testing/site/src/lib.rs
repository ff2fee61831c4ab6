//! A Sekisho site for end-to-end tests: the dev OpenID provider, a throwaway CA with a leaf
//! for the site's hosts, and `sekisho-proxy` in this process on a loopback port chosen before
//! it starts (devidp must know the callback URL first). [`Setup`] makes the parts and the
//! configuration sections every such site shares; the test writes its own routes around them
//! and starts the [`Proxy`]. The identity tests (`proxy/tests/identity`) and the CLI's login
//! tests (`tunnel-cli/tests/login`) build their sites on it.
//!
//! Test-only: use it as a dev-dependency. It depends on `sekisho-proxy` (and so
//! `sekisho-testkit`, whose parts it puts together, stays free of Sekisho's own crates).

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, ensure};
use sekisho_testkit::{Idp, IdpBuilder, Pki, free_port};

/// The secret of devidp's client `sekisho`.
pub const CLIENT_SECRET: &str = "sekisho-dev-secret";

/// What a site is made of before its proxy starts.
#[derive(Debug)]
pub struct Setup {
    /// The proxy's HTTPS port: every URL of the site is `https://<host>:<port>/…`.
    pub port: u16,
    pub idp: Idp,
    pub pki: Pki,
    /// The certificate the proxy serves for every host of the site (PEM).
    pub leaf_pem: String,
    /// The CA's certificate, as a file.
    pub ca_file: PathBuf,
    /// Where the site's files are; removed when dropped.
    pub dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_secret: PathBuf,
}

impl Setup {
    /// Picks the proxy's port, starts devidp with `https://<auth_host>:<port>/.sekisho/callback`
    /// as a redirect URI of client `sekisho` (and whatever `idp` adds to its flags, given the
    /// port), makes a CA named `ca_name` and a leaf for `hosts`, and writes the files the
    /// configuration sections name.
    pub async fn new(
        ca_name: &str,
        auth_host: &str,
        hosts: &[&str],
        idp: impl FnOnce(IdpBuilder, u16) -> IdpBuilder,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let builder =
            Idp::builder().redirect_uri(format!("https://{auth_host}:{port}/.sekisho/callback"));
        let idp = idp(builder, port).start().await.context("devidp starts")?;
        let pki = Pki::new(ca_name)?;
        let leaf = pki.leaf(hosts)?;
        let dir = tempfile::tempdir()?;
        let mut setup = Self {
            port,
            idp,
            pki,
            leaf_pem: leaf.cert_pem.clone(),
            ca_file: PathBuf::new(),
            dir,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_secret: PathBuf::new(),
        };
        setup.ca_file = setup.file("ca.pem", &setup.pki.ca_pem)?;
        setup.cert = setup.file("site.crt", &leaf.cert_pem)?;
        setup.key = setup.file("site.key", &leaf.key_pem)?;
        setup.client_secret = setup.file("client-secret", CLIENT_SECRET)?;
        Ok(setup)
    }

    /// Writes `contents` to `name` in the site's directory; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The configuration's first sections: `listen` (HTTPS on the chosen port, the admin
    /// listener on an ephemeral one), `workers`, and `tls` with the site's certificate.
    pub fn head(&self, workers: usize) -> String {
        format!(
            "listen:
  https: 127.0.0.1:{port}
  admin: 127.0.0.1:0
workers: {workers}
tls:
  certificates:
    - {{cert: '{cert}', key: '{key}'}}
",
            port = self.port,
            cert = self.cert.display(),
            key = self.key.display(),
        )
    }

    /// devidp's entry in `identity.providers`: client `sekisho` with its secret file.
    pub fn devidp_provider(&self) -> String {
        format!(
            "    - name: devidp
      display_name: devidp
      kind: generic
      issuer: '{issuer}'
      client_id: sekisho
      client_secret_file: '{client_secret}'
      scopes: [openid, email, profile, groups]
",
            issuer = self.idp.issuer(),
            client_secret = self.client_secret.display(),
        )
    }

    /// Writes `config` as `sekisho.yaml` and starts the proxy on it, with its access log
    /// discarded and no signal handlers. The proxy must listen on the chosen port.
    pub fn start_proxy(&self, config: &str) -> anyhow::Result<Proxy> {
        let config_path = self.file("sekisho.yaml", config)?;
        let running = sekisho_proxy::start(sekisho_proxy::Options {
            config_path: Some(config_path),
            access_log: Some(Box::new(std::io::sink())),
            handle_signals: false,
            dev_ca_dir: None,
            kubernetes: None,
        })
        .map_err(|error| anyhow!("{}", sekisho_proxy::error_chain(&error)))
        .with_context(|| format!("the proxy starts with this configuration:\n{config}"))?;
        let proxy = Proxy {
            running: Some(running),
        };
        ensure!(
            proxy.addr().port() == self.port,
            "the proxy listens on {} instead of the configured port {}",
            proxy.addr(),
            self.port
        );
        Ok(proxy)
    }
}

/// `sekisho-proxy` running in this process. Dropping it starts a graceful shutdown without
/// waiting for it: the test's runtime, which drives the clients' connections, may be the one
/// on this thread.
pub struct Proxy {
    running: Option<sekisho_proxy::Running>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("https_addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn running(&self) -> &sekisho_proxy::Running {
        self.running.as_ref().expect("runs until dropped")
    }

    /// The HTTPS listener's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running().https_addr
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}
