//! Starting the operator as its ServiceAccount, the Proxies the tests make, and the stand-in
//! kubelet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Client, ResourceExt as _};
use kube_testenv::TestEnv;
use sekisho_api::Proxy;
use serde_json::{Value, json};
use tokio::sync::watch;

pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// The control plane with Sekisho's CRDs, a namespace for one test, an admin client.
pub(crate) struct Cluster {
    pub(crate) env: &'static TestEnv,
    pub(crate) admin: Client,
    pub(crate) namespace: String,
}

impl Cluster {
    pub(crate) async fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::on(TestEnv::shared().await?, prefix).await
    }

    /// On a control plane of its own, for a test that installs what others must not see.
    pub(crate) async fn alone(prefix: &str) -> anyhow::Result<Self> {
        let env: &'static TestEnv = Box::leak(Box::new(TestEnv::start().await?));
        Self::on(env, prefix).await
    }

    async fn on(env: &'static TestEnv, prefix: &str) -> anyhow::Result<Self> {
        env.install_crds(&sekisho_api::crd::all(), "operator-tests")
            .await?;
        let admin = env.client().await?;
        let namespace = env.namespace(prefix).await?;
        Ok(Self {
            env,
            admin,
            namespace,
        })
    }

    /// Starts an operator replica named `identity`, as ServiceAccount `NS/sekisho-operator`
    /// bound to the committed ClusterRole (and a Role for its Lease in the namespace).
    pub(crate) async fn operator(&self, identity: &str) -> anyhow::Result<Operator> {
        self.bind_operator_role().await?;
        let config = self
            .env
            .service_account_config(&self.namespace, "sekisho-operator")
            .await?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let metrics_address = listener.local_addr()?;
        drop(listener);
        let options = sekisho_operator::Options {
            metrics_address,
            lease_namespace: self.namespace.clone(),
            identity: identity.to_owned(),
            proxy_version: "0.1.0".to_owned(),
            watch_namespace: Some(self.namespace.clone()),
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let client = Client::try_from(config)?;
            sekisho_operator::run(client, options, stopped).await?;
            anyhow::Ok(())
        });
        Ok(Operator {
            stop,
            task: Some(task),
            metrics_address,
        })
    }

    async fn bind_operator_role(&self) -> anyhow::Result<()> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/operator/rbac.yaml");
        let role: ClusterRole = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)
            .context("deploy/operator/rbac.yaml")?;
        let name = format!("sekisho-operator-{}", self.namespace);
        self.env
            .bind_cluster_role(
                role,
                &name,
                &self.namespace,
                "sekisho-operator",
                "operator-tests",
            )
            .await?;
        Ok(())
    }

    pub(crate) fn proxies(&self) -> Api<Proxy> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    /// A Proxy with one Google provider and its client secret.
    pub(crate) async fn create_proxy(&self, name: &str, spec: Value) -> anyhow::Result<Proxy> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("google-oidc".into()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([("client-secret".into(), "s3cret".into())])),
            ..Secret::default()
        };
        let secrets = Api::<Secret>::namespaced(self.admin.clone(), &self.namespace);
        if secrets.get_opt("google-oidc").await?.is_none() {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        let mut base = json!({
            "domain": "example.org",
            "identityProviders": [{"name": "google", "kind": "google", "clientId": "c", "clientSecretRef": {"name": "google-oidc"}}],
            "ingressClass": {"name": format!("{}-{name}", self.namespace)},
        });
        if let (Value::Object(base), Value::Object(spec)) = (&mut base, spec) {
            base.extend(spec);
        }
        let proxy: Proxy = serde_json::from_value(json!({
            "apiVersion": "sekisho.dev/v1alpha1",
            "kind": "Proxy",
            "metadata": {"name": name},
            "spec": base,
        }))?;
        Ok(self
            .proxies()
            .create(&PostParams::default(), &proxy)
            .await?)
    }

    /// A dynamic API for `(group, version, kind, plural)`, in this namespace or cluster-wide.
    pub(crate) fn dynamic(
        &self,
        gvkp: (&str, &str, &str, &str),
        namespaced: bool,
    ) -> Api<DynamicObject> {
        let (group, version, kind, plural) = gvkp;
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        if namespaced {
            Api::namespaced_with(self.admin.clone(), &self.namespace, &resource)
        } else {
            Api::all_with(self.admin.clone(), &resource)
        }
    }

    /// Marks every pod of the namespace ready, as a kubelet would once its containers run.
    pub(crate) async fn kubelet_marks_pods_ready(&self) -> anyhow::Result<usize> {
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.namespace);
        let mut marked = 0;
        for pod in pods.list(&ListParams::default()).await? {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let now = Timestamp::now().to_string();
            pods.patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    ],
                }})),
            )
            .await?;
            marked += 1;
        }
        Ok(marked)
    }
}

/// A running operator replica; stopped (and its Lease released) on [`Operator::stop`].
pub(crate) struct Operator {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    metrics_address: std::net::SocketAddr,
}

impl Operator {
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// The value of a series: a metric's name and, if it has any, its labels as /metrics
    /// writes them (`sekisho_operator_reconcile_failures_total{reason="ApiError"}`).
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_address).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .context(format!("no {name} in /metrics"))?
            .trim()
            .parse()
            .context("a number")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Polls `check` until it gives `Some`, or fails after [`DEADLINE`] with `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if start.elapsed() > DEADLINE {
            bail!("waited {DEADLINE:?} for {what}; last error: {last_error:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status of condition `type_` of `proxy`, with its reason.
pub(crate) fn condition(proxy: &Proxy, type_: &str) -> Option<(String, String)> {
    proxy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The message of condition `type_` of `proxy` (empty when it has none).
pub(crate) fn message(proxy: &Proxy, type_: &str) -> String {
    proxy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
