//! Key rotation: introduced, promoted once every pod has the new keys, retired after the
//! overlap, and at no point a session that stops opening on a pod that should open it.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use sekisho_proxy::{SessionId, SessionKeys, SessionRecord, unix_now};
use serde_json::json;

use crate::harness::{Cluster, condition, eventually};

const HOST: &str = "app.example.org";

/// The session key file of the keys Secret once its phase is `phase`, marking pods ready
/// meanwhile so that rollouts finish.
async fn keys_in_phase(cluster: &Cluster, phase: &str) -> anyhow::Result<String> {
    let secrets = Api::<Secret>::namespaced(cluster.admin.clone(), &cluster.namespace);
    eventually(&format!("the keys in phase {phase}"), || async {
        cluster.kubelet_marks_pods_ready().await?;
        let Some(secret) = secrets.get_opt("gate-keys").await? else {
            return Ok(None);
        };
        if secret
            .annotations()
            .get("sekisho.dev/rotation-phase")
            .map(String::as_str)
            != Some(phase)
        {
            return Ok(None);
        }
        let data = secret.data.unwrap_or_default();
        let file = data
            .get("session-keys")
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        Ok(file)
    })
    .await
}

fn seal(file: &str) -> anyhow::Result<String> {
    let keys = SessionKeys::parse(file)?;
    let now = unix_now();
    let record = SessionRecord {
        id: SessionId::random()?,
        subject: "ada".into(),
        email: "ada@example.org".into(),
        groups: vec![],
        issuer: "https://accounts.google.com".into(),
        auth_time: now,
        issued_at: now,
        expires_at: now + 3600,
        last_seen: now,
        host: HOST.into(),
        groups_trimmed: false,
    };
    Ok(keys.seal(&record, &|_| true)?.value().to_owned())
}

fn opens(file: &str, cookie: &str) -> anyhow::Result<bool> {
    Ok(SessionKeys::parse(file)?
        .open(
            cookie,
            HOST,
            unix_now(),
            std::time::Duration::from_secs(3600),
        )
        .is_ok())
}

#[tokio::test]
async fn a_rotation_keeps_every_session_open_on_every_pod_until_the_overlap_ends()
-> anyhow::Result<()> {
    let cluster = Cluster::new("op-keys").await?;
    let operator = cluster.operator("only").await?;
    cluster
        .create_proxy("gate", json!({"keys": {"overlap": "3s"}}))
        .await?;
    let before = keys_in_phase(&cluster, "Stable").await?;
    assert_eq!(before.lines().count(), 1);
    let old_session = seal(&before)?;

    cluster
        .proxies()
        .patch(
            "gate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keys": {"rotation": "2026-12"}}})),
        )
        .await?;
    // New keys are known, but the old ones still seal: pods not yet rolled make and open
    // the same cookies as rolled ones.
    let introducing = keys_in_phase(&cluster, "Introducing").await?;
    assert_eq!(
        introducing.lines().next(),
        before.lines().next(),
        "the old key still seals"
    );
    assert_eq!(introducing.lines().count(), 2);
    assert!(opens(&introducing, &old_session)?);

    // Once every pod has them, the new keys seal; pods of the previous rollout open those
    // cookies, and everyone still opens the old ones.
    let retiring = keys_in_phase(&cluster, "Retiring").await?;
    assert_eq!(
        retiring.lines().nth(1),
        before.lines().next(),
        "the old key is second"
    );
    let new_session = seal(&retiring)?;
    assert!(
        opens(&introducing, &new_session)?,
        "a pod with the introduced keys opens new cookies"
    );
    assert!(
        opens(&retiring, &old_session)?,
        "old cookies open through the overlap"
    );

    // After the overlap the old key is gone.
    let after = keys_in_phase(&cluster, "Stable").await?;
    assert_eq!(
        after.lines().collect::<Vec<_>>(),
        retiring.lines().take(1).collect::<Vec<_>>()
    );
    assert!(!opens(&after, &old_session)?);
    assert!(opens(&after, &new_session)?);

    // The status follows the Secret within the same pass.
    let proxies = cluster.proxies();
    let proxy =
        eventually("the status to say the rotation is done", || async {
            let proxy = proxies.get("gate").await?;
            let keys = proxy
                .status
                .clone()
                .unwrap_or_default()
                .keys
                .unwrap_or_default();
            Ok((keys.rotation.as_deref() == Some("2026-12")
                && keys.phase.as_deref() == Some("Stable"))
            .then_some(proxy))
        })
        .await?;
    assert_eq!(
        condition(&proxy, "Degraded").map(|c| c.0).as_deref(),
        Some("False")
    );
    // The signing keys followed the same steps.
    let secret = Api::<Secret>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .get("gate-keys")
        .await?;
    let signing = secret
        .data
        .unwrap_or_default()
        .get("signing-keys")
        .map(|v| v.0.clone())
        .unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&signing)
            .matches("BEGIN PRIVATE KEY")
            .count(),
        1
    );
    operator.stop().await
}
