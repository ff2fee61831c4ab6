use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Client,
    api::{
        Api, ApiResource, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams,
    },
};
use sekisho_watchdog::Watchdog;
use tokio::sync::OnceCell;

use crate::{
    Binaries, Error,
    certificate::Pki,
    kubeconfig::{self, Credential},
    port,
    process::Process,
};

/// How long etcd gets to accept connections.
const ETCD_START: Duration = Duration::from_secs(30);
/// How long kube-apiserver gets to answer `/readyz` with `ok`. It installs every built-in
/// API and bootstraps RBAC first, which takes several seconds of CPU on a 2-core machine.
const APISERVER_START: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
/// How long a new CustomResourceDefinition may take to be served.
const CRD_SERVED: Duration = Duration::from_secs(30);
/// Lifetime asked for service-account tokens; the API server's minimum is 10 minutes.
const TOKEN_SECONDS: i64 = 3600;

static SHARED: OnceCell<Result<TestEnv, Arc<Error>>> = OnceCell::const_new();

/// A running control plane: etcd, kube-apiserver (RBAC, client-certificate and
/// service-account-token authentication) and kube-controller-manager.
///
/// Dropping it kills the processes and removes its directory.
#[derive(Debug)]
pub struct TestEnv {
    // Held for their `Drop`. Field order is drop order: processes first, then the
    // watchdog, then the directory.
    _controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    /// How kube-apiserver was started, to start it again ([`TestEnv::restart_apiserver`]).
    apiserver_start: (PathBuf, Vec<String>, u32),
    _watchdog: Watchdog,
    dir: tempfile::TempDir,
    server: String,
    ca_cert: PathBuf,
    admin_kubeconfig: PathBuf,
}

impl TestEnv {
    /// The control plane shared by all tests of this test binary, started by the first
    /// test that asks. Tests must not get in each other's way: each one works in a
    /// namespace of its own (see [`TestEnv::namespace`]) and gives cluster-scoped objects
    /// names no other test uses.
    ///
    /// The processes stop when the test binary exits (see the crate documentation). If the
    /// start failed, every test that asks gets that failure.
    pub async fn shared() -> Result<&'static TestEnv, Error> {
        match SHARED
            .get_or_init(|| async { TestEnv::start().await.map_err(Arc::new) })
            .await
        {
            Ok(env) => Ok(env),
            Err(error) => Err(Error::SharedStartFailed(Arc::clone(error))),
        }
    }

    /// Starts a control plane of its own, with the binaries from [`Binaries::locate`].
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(&Binaries::locate()?).await
    }

    /// Starts a control plane of its own with the given binaries.
    pub async fn start_with(binaries: &Binaries) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("sekisho-kube-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let path = dir.path();
        let pki = Pki::generate(path)?;

        let etcd_port = port::free()?;
        let etcd_peer_port = port::free()?;
        let apiserver_port = port::free()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");

        let mut etcd = Process::spawn(
            "etcd",
            &binaries.etcd,
            &etcd_args(path, etcd_port, etcd_peer_port),
            path,
            0,
        )?;
        // Every process joins etcd's process group, which the watchdog kills.
        let group = etcd.id();
        let watchdog = Watchdog::spawn("sekisho-kube-watchdog", group, path).map_err(|source| {
            Error::Spawn {
                name: "watchdog (sh)",
                source,
            }
        })?;
        wait_for_port(&mut etcd, etcd_port, ETCD_START).await?;

        let apiserver_args = apiserver_args(path, &pki, apiserver_port, etcd_port);
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            path,
            group,
        )?;
        let admin_kubeconfig = kubeconfig::write_file(
            path,
            "admin",
            &server,
            &pki.ca_cert,
            &Credential::ClientCertificate {
                cert: &pki.admin.cert,
                key: &pki.admin.key,
            },
            "default",
        )?;
        let admin = kubeconfig::load(&admin_kubeconfig).await?;
        wait_for_readyz(&mut apiserver, &mut etcd, admin).await?;

        let controller_manager_kubeconfig = kubeconfig::write_file(
            path,
            "kube-controller-manager",
            &server,
            &pki.ca_cert,
            &Credential::ClientCertificate {
                cert: &pki.controller_manager.cert,
                key: &pki.controller_manager.key,
            },
            "kube-system",
        )?;
        let controller_manager = Process::spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            &controller_manager_args(&pki, &controller_manager_kubeconfig),
            path,
            group,
        )?;

        Ok(Self {
            _controller_manager: controller_manager,
            apiserver,
            etcd,
            apiserver_start: (binaries.kube_apiserver.clone(), apiserver_args, group),
            _watchdog: watchdog,
            server,
            ca_cert: pki.ca_cert,
            admin_kubeconfig,
            dir,
        })
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The temporary directory with the certificates, kubeconfigs and process logs
    /// (`etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig for the admin, for kubectl while debugging a test.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client authenticated by a client certificate in group `system:masters`.
    ///
    /// Build a client in each test rather than sharing one: a client belongs to the
    /// runtime it was built in, and `#[tokio::test]` gives every test its own.
    pub async fn client(&self) -> Result<Client, Error> {
        Client::try_from(self.admin_config().await?).map_err(Error::Client)
    }

    /// Installs `crds` by server-side apply as `manager` (so that any number of tests may) and
    /// waits until the objects of each can be listed.
    pub async fn install_crds(
        &self,
        crds: &[CustomResourceDefinition],
        manager: &str,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(|source| Error::Api {
                action: format!("install the CustomResourceDefinition {name}"),
                source,
            })?;
            let Some(version) = crd.spec.versions.first() else {
                continue;
            };
            let resource = ApiResource {
                group: crd.spec.group.clone(),
                version: version.name.clone(),
                api_version: format!("{}/{}", crd.spec.group, version.name),
                kind: crd.spec.names.kind.clone(),
                plural: crd.spec.names.plural.clone(),
            };
            let objects = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let start = Instant::now();
            // Served a moment after it is Established.
            while let Err(source) = objects.list(&ListParams::default().limit(1)).await {
                if start.elapsed() > CRD_SERVED {
                    return Err(Error::Api {
                        action: format!("list the objects of {name} after installing it"),
                        source,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Grants ServiceAccount `namespace/account` what `role` allows, cluster-wide: applies
    /// `role` as ClusterRole `name` and a ClusterRoleBinding of the same name (server-side
    /// apply as `manager`). Tests name it after their namespace, so that they share none.
    pub async fn bind_cluster_role(
        &self,
        mut role: ClusterRole,
        name: &str,
        namespace: &str,
        account: &str,
        manager: &str,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let params = PatchParams::apply(manager).force();
        role.metadata.name = Some(name.to_owned());
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: name.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: account.to_owned(),
                namespace: Some(namespace.to_owned()),
                api_group: None,
            }]),
        };
        let refused = |source| Error::Api {
            action: format!("bind ClusterRole {name} to {namespace}/{account}"),
            source,
        };
        Api::<ClusterRole>::all(client.clone())
            .patch(name, &params, &Patch::Apply(&role))
            .await
            .map_err(refused)?;
        Api::<ClusterRoleBinding>::all(client)
            .patch(name, &params, &Patch::Apply(&binding))
            .await
            .map_err(refused)?;
        Ok(())
    }

    /// Kills kube-apiserver (SIGKILL), as a crash would. Clients see their requests and
    /// watches fail until [`TestEnv::start_apiserver`]; etcd keeps the objects. Only for a
    /// private control plane ([`TestEnv::start`]): the shared one is in use by other tests.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// Starts kube-apiserver again on the same address (after [`TestEnv::stop_apiserver`])
    /// and returns once it is ready.
    pub async fn start_apiserver(&mut self) -> Result<(), Error> {
        let (program, args, group) = self.apiserver_start.clone();
        self.apiserver.kill();
        self.apiserver = Process::spawn("kube-apiserver", &program, &args, self.dir.path(), group)?;
        let admin = kubeconfig::load(&self.admin_kubeconfig).await?;
        wait_for_readyz(&mut self.apiserver, &mut self.etcd, admin).await
    }

    /// The admin's client configuration, for a client built elsewhere (in another runtime,
    /// such as a server's own).
    pub async fn admin_config(&self) -> Result<kube::Config, Error> {
        kubeconfig::load(&self.admin_kubeconfig).await
    }

    /// Creates a namespace with a fresh name that starts with `test-<prefix>-`, for one
    /// test's objects, and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String, Error> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("test-{prefix}-")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(self.client().await?)
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| Error::Api {
                action: format!("create a namespace named test-{prefix}-*"),
                source,
            })?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    /// A client that authenticates as ServiceAccount `namespace/name` with a token from
    /// the TokenRequest API, creating the ServiceAccount if it does not exist. It can do
    /// only what RBAC grants that ServiceAccount; its default namespace is `namespace`.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Client, Error> {
        let config = self.service_account_config(namespace, name).await?;
        Client::try_from(config).map_err(Error::Client)
    }

    /// The client configuration of [`TestEnv::service_account_client`], for a client built
    /// elsewhere (in another runtime, such as a server's own).
    pub async fn service_account_config(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Config, Error> {
        let admin = self.client().await?;
        let accounts = Api::<ServiceAccount>::namespaced(admin, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                return Err(Error::Api {
                    action: format!("create ServiceAccount {namespace}/{name}"),
                    source,
                });
            }
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let response = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| Error::Api {
                action: format!("create a token for ServiceAccount {namespace}/{name}"),
                source,
            })?;
        let token = response
            .status
            .and_then(|status| status.token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Error::TokenMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;

        let file_name = format!("service-account-{namespace}-{name}");
        let token_file =
            crate::certificate::write(self.dir(), &format!("{file_name}.token"), &token)?;
        let path = kubeconfig::write_file(
            self.dir(),
            &file_name,
            &self.server,
            &self.ca_cert,
            &Credential::TokenFile(&token_file),
            namespace,
        )?;
        kubeconfig::load(&path).await
    }
}

fn etcd_args(dir: &Path, port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name=default".to_owned(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        // Test data is thrown away: no need to wait for the disk.
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ]
}

fn apiserver_args(dir: &Path, pki: &Pki, port: u16, etcd_port: u16) -> Vec<String> {
    vec![
        "--advertise-address=127.0.0.1".to_owned(),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.display()),
        format!("--tls-cert-file={}", pki.serving.cert.display()),
        format!("--tls-private-key-file={}", pki.serving.key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--authorization-mode=RBAC".to_owned(),
        "--anonymous-auth=false".to_owned(),
        format!("--service-account-issuer=https://127.0.0.1:{port}"),
        format!(
            "--service-account-key-file={}",
            pki.service_account_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--profiling=false".to_owned(),
    ]
}

fn controller_manager_args(pki: &Pki, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".to_owned(),
        // No HTTPS endpoint: nothing reads its health or metrics here.
        "--secure-port=0".to_owned(),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ),
    ]
}

async fn wait_for_port(process: &mut Process, port: u16, limit: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        process.check_running()?;
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(process.not_ready(limit));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_for_readyz(
    apiserver: &mut Process,
    etcd: &mut Process,
    admin: kube::Config,
) -> Result<(), Error> {
    let client = Client::try_from(admin).map_err(Error::Client)?;
    let start = Instant::now();
    loop {
        etcd.check_running()?;
        apiserver.check_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a GET without headers is a valid request");
        // A server that accepts but does not answer must not stall the wait.
        if let Ok(Ok(body)) = tokio::time::timeout(POLL * 25, client.request_text(request)).await
            && body.trim() == "ok"
        {
            return Ok(());
        }
        if start.elapsed() > APISERVER_START {
            return Err(apiserver.not_ready(APISERVER_START));
        }
        tokio::time::sleep(POLL).await;
    }
}
