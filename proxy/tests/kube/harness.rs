//! One test's gate: a namespace, an IngressClass of its own, the proxy watching the API, a
//! pod network for backends, a CA for the certificates its Secrets hold, and a client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use kube::Resource;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use rustls_pki_types::ServerName;
use sekisho_testkit::{EchoUpstream, Pki, PodNetwork};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;

/// How long a change may take to be served before a test fails (the benchmark measures it;
/// this only bounds the wait).
pub(crate) const CHANGE: Duration = Duration::from_secs(10);

pub(crate) struct Gate {
    pub(crate) client: kube::Client,
    pub(crate) namespace: String,
    /// The IngressClass this test's proxy serves.
    pub(crate) class: String,
    pub(crate) pki: Pki,
    pub(crate) pods: PodNetwork,
    pub(crate) https: SocketAddr,
    /// The plain-HTTP listener (redirects to HTTPS, answers ACME challenges).
    pub(crate) http: SocketAddr,
    /// The admin listener (`/readyz`, `/metrics`).
    pub(crate) admin: SocketAddr,
    proxy: Option<sekisho_proxy::Running>,
    replica: Replica,
    _dir: tempfile::TempDir,
}

/// How the gate's proxies are started.
struct Replica {
    config: kube::Config,
    controller: String,
    namespace: String,
    /// An `identity:` section every replica shares (one session key file), if any.
    identity: Option<String>,
}

impl Replica {
    /// A proxy in Kubernetes mode with loopback listeners; its files under `dir/name`.
    fn start(
        &self,
        dir: &std::path::Path,
        name: &str,
        addresses: &[&str],
    ) -> anyhow::Result<sekisho_proxy::Running> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("static.yaml");
        let identity = self.identity.as_deref().unwrap_or_default();
        std::fs::write(&config_path, format!("{STATIC}{identity}"))?;
        let namespace = &self.namespace;
        sekisho_proxy::start(sekisho_proxy::Options {
            config_path: Some(config_path),
            access_log: Some(Box::new(std::io::sink())),
            handle_signals: false,
            dev_ca_dir: Some(dir.join("dev-ca")),
            kubernetes: Some(sekisho_proxy::KubernetesOptions {
                config: Some(self.config.clone()),
                controller: self.controller.clone(),
                default_policy: None,
                publish_service: None,
                publish_addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                lease_namespace: Some(namespace.clone()),
                default_certificate: Some(format!("{namespace}/default-tls")),
                relay_address: None,
            }),
        })
        .map_err(|e| anyhow!("{}", sekisho_proxy::error_chain(&e)))
    }
}

/// An agent in a thread of its own, stopped when dropped.
pub(crate) struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A proxy that stops when dropped.
pub(crate) struct Running(Option<sekisho_proxy::Running>);

impl Running {
    /// Its HTTPS listener.
    pub(crate) fn https(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.0.as_ref().context("running")?.https_addr)
    }

    /// Whether its `/readyz` says ready.
    pub(crate) async fn ready(&self) -> anyhow::Result<bool> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let admin = self.0.as_ref().context("running")?.admin_addr;
        let mut tcp = tokio::net::TcpStream::connect(admin).await?;
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        Ok(text.starts_with("HTTP/1.1 200"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(running) = self.proxy.take() {
            running.shutdown();
            std::thread::spawn(move || running.wait());
        }
    }
}

/// The static settings of the test's proxy: loopback listeners on ports the kernel picks.
const STATIC: &str = "
listen:
  https: 127.0.0.1:0
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
workers: 1
";

/// How the gate's replicas sign people in.
enum Login {
    None,
    /// A shared session key file; cookies made by the test.
    Keys,
    /// That, and devidp at this issuer as the provider.
    Provider(String),
}

/// Who the proxy is to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum As {
    Admin,
    /// A ServiceAccount bound to `deploy/kubernetes/proxy-clusterrole.yaml` and nothing else.
    ItsClusterRole,
}

impl Gate {
    pub(crate) async fn start(prefix: &str) -> anyhow::Result<Self> {
        Self::start_as(prefix, As::Admin).await
    }

    pub(crate) async fn start_as(prefix: &str, who: As) -> anyhow::Result<Self> {
        Self::start_on(kube_testenv::TestEnv::shared().await?, prefix, who).await
    }

    /// A gate whose replicas sign people in (`identity:` with one session key file for all
    /// of them, auth host `auth.NAMESPACE.test`); [`Gate::session`] makes their cookies.
    pub(crate) async fn start_with_identity(prefix: &str, who: As) -> anyhow::Result<Self> {
        let env = kube_testenv::TestEnv::shared().await?;
        Self::start_full(env, prefix, who, Login::Keys).await
    }

    /// [`Gate::start_with_identity`], with devidp at `issuer` as the provider (client
    /// `sekisho`).
    pub(crate) async fn start_with_provider(
        prefix: &str,
        who: As,
        issuer: &str,
    ) -> anyhow::Result<Self> {
        let env = kube_testenv::TestEnv::shared().await?;
        Self::start_full(env, prefix, who, Login::Provider(issuer.to_owned())).await
    }

    /// On a control plane of the test's own.
    pub(crate) async fn start_on(
        env: &kube_testenv::TestEnv,
        prefix: &str,
        who: As,
    ) -> anyhow::Result<Self> {
        Self::start_full(env, prefix, who, Login::None).await
    }

    async fn start_full(
        env: &kube_testenv::TestEnv,
        prefix: &str,
        who: As,
        login: Login,
    ) -> anyhow::Result<Self> {
        let client = env.client().await?;
        env.install_crds(&sekisho_api::crd::all(), "sekisho-test")
            .await?;
        let namespace = env.namespace(prefix).await?;
        let config = match who {
            As::Admin => env.admin_config().await?,
            As::ItsClusterRole => {
                bind_cluster_role(&client, &namespace).await?;
                env.service_account_config(&namespace, "sekisho-proxy")
                    .await?
            }
        };
        let class = namespace.clone();
        let controller = format!("sekisho.dev/test-{namespace}");
        let gate_class = IngressClass {
            metadata: ObjectMeta {
                name: Some(class.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(controller.clone()),
                parameters: None,
            }),
        };
        apply(&Api::<IngressClass>::all(client.clone()), &gate_class).await?;
        let dir = tempfile::tempdir()?;
        let identity = match login {
            Login::None => None,
            Login::Keys | Login::Provider(_) => {
                let keys = dir.path().join("session-keys");
                sekisho_proxy::add_session_key(&keys)
                    .map_err(|e| anyhow!("{}", sekisho_proxy::error_chain(&e)))?;
                let mut yaml = format!(
                    "identity:\n  auth_host: auth.{namespace}.test\n  session_keys_file: {}\n",
                    keys.display()
                );
                if let Login::Provider(issuer) = login {
                    let secret = dir.path().join("client-secret");
                    std::fs::write(&secret, sekisho_site::CLIENT_SECRET)?;
                    yaml.push_str(&format!(
                        "  dangerous_allow_http_issuers: true\n  providers:\n    - {{name: uniqe, \
                         issuer: '{issuer}', client_id: sekisho, client_secret_file: '{}'}}\n",
                        secret.display()
                    ));
                }
                Some(yaml)
            }
        };
        let replica = Replica {
            config,
            controller,
            namespace: namespace.clone(),
            identity,
        };
        let proxy = replica.start(dir.path(), "main", &["192.0.2.10", "gate.example.test"])?;
        Ok(Self {
            client,
            class,
            pki: Pki::new("Sekisho kube test CA")?,
            pods: PodNetwork::new()?,
            https: proxy.https_addr,
            admin: proxy.admin_addr,
            http: proxy
                .http_addr
                .context("the static settings have a plain listener")?,
            proxy: Some(proxy),
            replica,
            namespace,
            _dir: dir,
        })
    }

    /// Another proxy process of this gate (same controller name, same Lease), publishing
    /// `addresses` into the Ingresses' status when it holds the Lease.
    pub(crate) fn another_replica(&self, addresses: &[&str]) -> anyhow::Result<Running> {
        let name = format!("replica-{}", addresses.join("-"));
        Ok(Running(Some(self.replica.start(
            self._dir.path(),
            &name,
            addresses,
        )?)))
    }

    /// [`Gate::another_replica`], once it is ready.
    pub(crate) async fn another_ready_replica(
        &self,
        addresses: &[&str],
    ) -> anyhow::Result<Running> {
        let other = self.another_replica(addresses)?;
        until("the second replica to be ready", || async {
            anyhow::ensure!(other.ready().await?, "not ready yet");
            Ok(Answer::none())
        })
        .await?;
        Ok(other)
    }

    /// Stops this gate's own proxy (as a rolling restart would), letting its Lease go.
    pub(crate) fn stop_proxy(&mut self) {
        if let Some(running) = self.proxy.take() {
            running.shutdown();
            running.wait();
        }
    }

    /// The value of the metric series `series` (its whole name with labels) on the admin
    /// listener.
    pub(crate) async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = self.admin_get("/metrics").await?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {series} in the metrics"))
    }

    /// `GET path` on the admin listener: the whole answer, head and body.
    pub(crate) async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = tokio::net::TcpStream::connect(self.admin).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        Ok(text)
    }

    /// A session cookie (its value) for `host`, sealed with the replicas' key: `email`, in
    /// group `staff`, begun at `issued_at` (Unix seconds) and good for an hour after it.
    /// Returns the session's id too.
    pub(crate) fn session(
        &self,
        host: &str,
        email: &str,
        issued_at: u64,
    ) -> anyhow::Result<([u8; 16], String)> {
        self.session_of(host, "https://id.kube.test", email, email, issued_at)
    }

    /// [`Gate::session`], from provider `issuer` for its subject `subject`.
    pub(crate) fn session_of(
        &self,
        host: &str,
        issuer: &str,
        subject: &str,
        email: &str,
        issued_at: u64,
    ) -> anyhow::Result<([u8; 16], String)> {
        let keys = sekisho_proxy::SessionKeys::load(&self._dir.path().join("session-keys"))
            .map_err(|e| anyhow!("{}", sekisho_proxy::error_chain(&e)))?;
        let id = sekisho_proxy::SessionId::random()
            .map_err(|e| anyhow!("{}", sekisho_proxy::error_chain(&e)))?;
        let record = sekisho_proxy::SessionRecord {
            id,
            subject: subject.to_owned(),
            email: email.to_owned(),
            groups: vec!["staff".into()],
            issuer: issuer.to_owned(),
            auth_time: issued_at,
            issued_at,
            expires_at: issued_at + 3600,
            last_seen: sekisho_proxy::unix_now(),
            host: host.to_owned(),
            groups_trimmed: false,
        };
        let sealed = keys
            .seal(&record, &|_| true)
            .map_err(|e| anyhow!("{}", sekisho_proxy::error_chain(&e)))?;
        Ok((id.0, sealed.value().to_owned()))
    }

    /// Ends session `id` on this gate's own replica, as a sign-out there does.
    pub(crate) fn sign_out(&self, id: [u8; 16], until: u64) -> anyhow::Result<()> {
        let proxy = self
            .proxy
            .as_ref()
            .context("the gate's replica is running")?;
        anyhow::ensure!(proxy.revoke_session(id, until), "the gate has no identity");
        Ok(())
    }

    /// `GET https://host/path` with the session cookie `cookie`, through the replica
    /// listening on `https` (the gate's own by default: [`Gate::https`]).
    pub(crate) async fn get_signed_in(
        &self,
        https: SocketAddr,
        host: &str,
        path: &str,
        cookie: &str,
    ) -> anyhow::Result<Answer> {
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::COOKIE, format!("__Host-sekisho={cookie}"))
            .body(Full::new(Bytes::new()))?;
        send(https, self.trust()?, host, request).await
    }

    /// A form POST (`application/x-www-form-urlencoded`) of `form` to `https://host/path`
    /// through the replica listening on `https`.
    pub(crate) async fn post_form(
        &self,
        https: SocketAddr,
        host: &str,
        path: &str,
        form: String,
    ) -> anyhow::Result<Answer> {
        self.post_form_as(https, host, path, None, form).await
    }

    /// [`Gate::post_form`], with the session cookie `cookie` when there is one.
    pub(crate) async fn post_form_as(
        &self,
        https: SocketAddr,
        host: &str,
        path: &str,
        cookie: Option<&str>,
        form: String,
    ) -> anyhow::Result<Answer> {
        let mut request = http::Request::post(path)
            .header(http::header::HOST, host)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(cookie) = cookie {
            request = request.header(http::header::COOKIE, format!("__Host-sekisho={cookie}"));
        }
        send(
            https,
            self.trust()?,
            host,
            request.body(Full::new(Bytes::from(form)))?,
        )
        .await
    }

    /// A WebSocket to `wss://host/path` with the session cookie `cookie`, through the replica
    /// listening on `https`.
    pub(crate) async fn websocket(
        &self,
        https: SocketAddr,
        host: &str,
        path: &str,
        cookie: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let tcp = tokio::net::TcpStream::connect(https).await?;
        let tls = TlsConnector::from(self.trust()?)
            .connect(ServerName::try_from(host.to_owned())?, tcp)
            .await?;
        let mut request = format!("wss://{host}{path}").into_client_request()?;
        request.headers_mut().insert(
            http::header::COOKIE,
            format!("__Host-sekisho={cookie}").parse()?,
        );
        let (socket, _) = tokio_tungstenite::client_async(request, tls).await?;
        Ok(socket)
    }

    /// How many links the agent `name` has to the proxy.
    /// A public site at `host` with its own certificate (Secret `NAME-tls`) and backend
    /// (Service `NAME-web`), once it is served.
    pub(crate) async fn public_site(&self, name: &str, host: &str) -> anyhow::Result<EchoUpstream> {
        let backend = format!("{name}-web");
        let echo = EchoUpstream::on("web", self.pods.listen(false)?)?;
        self.service_to(&backend, echo.addr).await?;
        let secret = format!("{name}-tls");
        self.tls_secret(&secret, &[host]).await?;
        let site = self.site(name, host).policy("public").tls(&secret).path(
            "/",
            "Prefix",
            &backend,
            number(80),
        );
        apply(&self.api(), &site.build()).await?;
        until("the site to be served", || async {
            let answer = self.get(host, "/").await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{answer:?}");
            Ok(answer)
        })
        .await?;
        Ok(echo)
    }

    /// An Agent object `name` with a fresh key, and `sekisho-agent` running under that name
    /// against this gate's proxy at `host` (a name whose certificate the proxy serves), in a
    /// thread of its own until dropped.
    pub(crate) async fn agent(&self, name: &str, host: &str) -> anyhow::Result<RunningAgent> {
        let (key, pem) = sekisho_wire::agent_auth::AgentKey::generate()?;
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, pem)?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &self.pki.ca_pem)?;
        let mut agent = sekisho_api::Agent::new(
            name,
            sekisho_api::AgentSpec {
                public_keys: vec![key.public_key().to_string()],
                targets: Vec::new(),
            },
        );
        agent.metadata.namespace = Some(self.namespace.clone());
        apply(&self.api(), &agent).await?;
        let yaml = format!(
            "name: {name}\nkey_file: '{}'\nca_file: '{}'\nproxies:\n  - {{url: 'https://{host}:{port}', address: '{addr}'}}\nallow: {{tcp: ['127.0.0.1:22']}}\n",
            key_file.display(),
            ca_file.display(),
            port = self.https.port(),
            addr = self.https,
        );
        let settings =
            sekisho_agent::config::Config::parse(&yaml, std::path::Path::new("agent.yaml"))?
                .settings(None, Default::default())?;
        let running = sekisho_agent::Agent::new(settings)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts");
            runtime.block_on(running.run(async {
                let _ = stopped.await;
            }));
        });
        Ok(RunningAgent {
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        })
    }

    pub(crate) fn agent_links(&self, name: &str) -> usize {
        self.proxy.as_ref().map_or(0, |p| p.agent_links(name))
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// An echo upstream named `name` on the pod network, behind a Service `name` (no selector,
    /// port 80 named `http`) with a hand-made EndpointSlice that says it is ready.
    pub(crate) async fn backend(&self, name: &'static str) -> anyhow::Result<EchoUpstream> {
        let echo = EchoUpstream::on(name, self.pods.listen(false)?)?;
        self.service_to(name, echo.addr).await?;
        Ok(echo)
    }

    /// A Service `name` (no selector, port 80 named `http`) whose hand-made EndpointSlice
    /// says `addr` is ready.
    pub(crate) async fn service_to(&self, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let service = Service {
            metadata: self.meta(name),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        apply(&self.api::<Service>(), &service).await?;
        self.endpoints(name, &[(addr, true)]).await
    }

    /// Writes the EndpointSlice of Service `service`: these addresses, ready or not.
    pub(crate) async fn endpoints(
        &self,
        service: &str,
        endpoints: &[(SocketAddr, bool)],
    ) -> anyhow::Result<()> {
        let mut meta = self.meta(&format!("{service}-slice"));
        meta.labels = Some(BTreeMap::from([(
            "kubernetes.io/service-name".to_owned(),
            service.to_owned(),
        )]));
        let port = endpoints.first().map_or(80, |(addr, _)| addr.port());
        let slice = EndpointSlice {
            metadata: meta,
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(addr, ready)| Endpoint {
                        addresses: vec![addr.ip().to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            serving: Some(*ready),
                            terminating: Some(false),
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(i32::from(port)),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        };
        apply(&self.api::<EndpointSlice>(), &slice).await
    }

    /// A `kubernetes.io/tls` Secret as cert-manager writes it, for `hosts`, signed by the test
    /// CA. Returns the leaf's PEM.
    pub(crate) async fn tls_secret(&self, name: &str, hosts: &[&str]) -> anyhow::Result<String> {
        let leaf = self.pki.leaf(hosts)?;
        let mut meta = self.meta(name);
        meta.annotations = Some(BTreeMap::from([
            (
                "cert-manager.io/certificate-name".to_owned(),
                name.to_owned(),
            ),
            (
                "cert-manager.io/issuer-name".to_owned(),
                "test-ca".to_owned(),
            ),
            (
                "cert-manager.io/issuer-kind".to_owned(),
                "Issuer".to_owned(),
            ),
            ("cert-manager.io/alt-names".to_owned(), hosts.join(",")),
        ]));
        let secret = Secret {
            metadata: meta,
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (
                    "tls.crt".to_owned(),
                    ByteString(leaf.cert_pem.clone().into_bytes()),
                ),
                ("tls.key".to_owned(), ByteString(leaf.key_pem.into_bytes())),
                (
                    "ca.crt".to_owned(),
                    ByteString(self.pki.ca_pem.clone().into_bytes()),
                ),
            ])),
            ..Secret::default()
        };
        apply(&self.api::<Secret>(), &secret).await?;
        Ok(leaf.cert_pem)
    }

    pub(crate) fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            ..ObjectMeta::default()
        }
    }

    /// `GET https://host/path` through the proxy. Returns the status, the body and the
    /// certificate served.
    pub(crate) async fn get(&self, host: &str, path: &str) -> anyhow::Result<Answer> {
        request(self.https, self.trust()?, host, path).await
    }

    /// A POST of `body` with `headers` to `https://host/path`.
    pub(crate) async fn post(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> anyhow::Result<Answer> {
        let mut request = http::Request::post(path).header(http::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from_static(body)))?;
        send(self.https, self.trust()?, host, request).await
    }

    /// TLS trusting the test CA and the proxy's development CA (whose certificate it serves
    /// for names no Secret covers).
    fn trust(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let dev_ca = std::fs::read(self._dir.path().join("main/dev-ca/ca.pem"))?;
        for pem in [self.pki.ca_pem.as_bytes(), &dev_ca] {
            roots.add(rustls_pki_types::CertificateDer::from_pem_slice(pem)?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The reasons of the Events recorded on Ingress `name`.
    pub(crate) async fn event_reasons(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let events = self
            .api::<Event>()
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?;
        Ok(events.items.into_iter().filter_map(|e| e.reason).collect())
    }
}

/// What the proxy answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    /// The `Location` header, if any.
    pub(crate) location: Option<String>,
    /// The leaf certificate the proxy presented (DER).
    pub(crate) certificate: Vec<u8>,
}

impl Answer {
    /// Nothing, for waits on the API rather than on the proxy.
    pub(crate) fn none() -> Self {
        Self {
            status: StatusCode::OK,
            body: String::new(),
            location: None,
            certificate: Vec::new(),
        }
    }
}

pub(crate) async fn request(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
) -> anyhow::Result<Answer> {
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))?;
    send(addr, tls, host, request).await
}

/// Sends `request` to `host` over TLS and reads the whole answer.
pub(crate) async fn send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    request: http::Request<Full<Bytes>>,
) -> anyhow::Result<Answer> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned())?;
    let stream = TlsConnector::from(tls).connect(name, tcp).await?;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .context("a certificate was presented")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        location,
        certificate,
    })
}

/// Server-side apply as the test's field manager.
pub(crate) async fn apply<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().context("objects have names")?;
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = K::api_version(&Default::default()).into();
    value["kind"] = K::kind(&Default::default()).into();
    api.patch(
        &name,
        &PatchParams::apply("sekisho-test").force(),
        &Patch::Apply(&value),
    )
    .await
    .with_context(|| format!("applying {} {name}", K::kind(&Default::default())))?;
    Ok(())
}

/// Waits until `check` passes on what the proxy answers, up to [`CHANGE`].
pub(crate) async fn until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<Answer>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Answer>>,
{
    let deadline = tokio::time::Instant::now() + CHANGE;
    loop {
        let error = match check().await {
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(error.context(format!("waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Binds the committed ClusterRole (renamed for this namespace, so tests don't share it) to
/// ServiceAccount `namespace/sekisho-proxy`.
async fn bind_cluster_role(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleRef, Subject};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/proxy-clusterrole.yaml");
    let text = std::fs::read_to_string(&path)?;
    let first = text.split("\n---\n").next().unwrap_or_default();
    let role: ClusterRole =
        serde_yaml_ng::from_str(first).with_context(|| format!("reading {}", path.display()))?;
    kube_testenv::TestEnv::shared()
        .await?
        .bind_cluster_role(
            role,
            &format!("sekisho-proxy-{namespace}"),
            namespace,
            "sekisho-proxy",
            "sekisho-test",
        )
        .await?;
    // The Role for the status Lease, from the same file, bound in the proxy's namespace.
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let text = std::fs::read_to_string(&path)?;
    let document = text
        .split("\n---\n")
        .find(|d| d.contains("kind: Role\n"))
        .context("the file has the Lease's Role")?;
    let mut lease_role: Role = serde_yaml_ng::from_str(document)?;
    lease_role.metadata.namespace = Some(namespace.to_owned());
    let lease_name = lease_role
        .metadata
        .name
        .clone()
        .context("the Role has a name")?;
    apply(
        &Api::<Role>::namespaced(client.clone(), namespace),
        &lease_role,
    )
    .await?;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(lease_name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: lease_name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "sekisho-proxy".into(),
            namespace: Some(namespace.to_owned()),
            api_group: None,
        }]),
    };
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), namespace),
        &binding,
    )
    .await
}

/// An Ingress of a gate's class for one host, built up by a test ([`Gate::site`]).
pub(crate) struct Site(k8s_openapi::api::networking::v1::Ingress);

/// A backend port by number.
pub(crate) fn number(port: i32) -> k8s_openapi::api::networking::v1::ServiceBackendPort {
    k8s_openapi::api::networking::v1::ServiceBackendPort {
        number: Some(port),
        name: None,
    }
}

/// A backend port by name.
pub(crate) fn named(port: &str) -> k8s_openapi::api::networking::v1::ServiceBackendPort {
    k8s_openapi::api::networking::v1::ServiceBackendPort {
        number: None,
        name: Some(port.to_owned()),
    }
}

impl Gate {
    /// An Ingress `name` of this gate's class for `host`, without paths yet.
    pub(crate) fn site(&self, name: &str, host: &str) -> Site {
        use k8s_openapi::api::networking::v1::{HTTPIngressRuleValue, IngressRule, IngressSpec};
        Site(k8s_openapi::api::networking::v1::Ingress {
            metadata: self.meta(name),
            spec: Some(IngressSpec {
                ingress_class_name: Some(self.class.clone()),
                rules: Some(vec![IngressRule {
                    host: Some(host.to_owned()),
                    http: Some(HTTPIngressRuleValue { paths: Vec::new() }),
                }]),
                ..IngressSpec::default()
            }),
            status: None,
        })
    }
}

impl Site {
    /// `sekisho.dev/access-policy: policy`.
    pub(crate) fn policy(mut self, policy: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("sekisho.dev/access-policy".to_owned(), policy.to_owned());
        self
    }

    /// The certificate of Secret `secret` for the site's host.
    pub(crate) fn tls(mut self, secret: &str) -> Self {
        let spec = self.0.spec.as_mut().expect("built with a spec");
        let host = spec.rules.as_ref().and_then(|r| r[0].host.clone());
        spec.tls
            .get_or_insert_default()
            .push(k8s_openapi::api::networking::v1::IngressTLS {
                hosts: host.map(|h| vec![h]),
                secret_name: Some(secret.to_owned()),
            });
        self
    }

    /// A path of `path_type` to `service`'s `port`.
    pub(crate) fn path(
        mut self,
        path: &str,
        path_type: &str,
        service: &str,
        port: k8s_openapi::api::networking::v1::ServiceBackendPort,
    ) -> Self {
        use k8s_openapi::api::networking::v1::{
            HTTPIngressPath, IngressBackend, IngressServiceBackend,
        };
        let spec = self.0.spec.as_mut().expect("built with a spec");
        let rules = spec.rules.as_mut().expect("built with a rule");
        rules[0]
            .http
            .as_mut()
            .expect("built with paths")
            .paths
            .push(HTTPIngressPath {
                path: Some(path.to_owned()),
                path_type: path_type.to_owned(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: service.to_owned(),
                        port: Some(port),
                    }),
                    resource: None,
                },
            });
        self
    }

    /// The label that marks cert-manager's HTTP-01 solver Ingresses.
    pub(crate) fn solver(mut self) -> Self {
        self.0.metadata.labels.get_or_insert_default().insert(
            "acme.cert-manager.io/http01-solver".to_owned(),
            "true".to_owned(),
        );
        self
    }

    pub(crate) fn build(self) -> k8s_openapi::api::networking::v1::Ingress {
        self.0
    }
}
