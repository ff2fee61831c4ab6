//! The Proxy's status (conditions `Ready`, `Progressing`, `Degraded` with `observedGeneration`)
//! and its Events.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use sekisho_api::{KeysStatus, Proxy, ProxyStatus, condition};
use serde_json::json;

use super::Context;
use crate::desired::INPUTS_ANNOTATION;
use crate::keys::{Phase, Ring};

pub(crate) const PROGRESSING: &str = "Progressing";
pub(crate) const DEGRADED: &str = "Degraded";

/// Something the operator cannot do for a Proxy: a reason (CamelCase) and words for people.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Whether every pod of `deployment` runs the template whose inputs digest is `inputs`.
pub(super) fn rolled_out(deployment: &Deployment, inputs: &str) -> bool {
    let template = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(INPUTS_ANNOTATION));
    template.map(String::as_str) == Some(inputs) && rollout(deployment).done
}

struct Rollout {
    done: bool,
    wanted: i32,
    updated: i32,
    available: i32,
}

fn rollout(deployment: &Deployment) -> Rollout {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    Rollout {
        done: observed && updated == wanted && available == wanted && total == wanted,
        wanted,
        updated,
        available,
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Writes the status when it changed. Whether the gate is still progressing.
pub(super) async fn write(
    context: &Context,
    proxy: &Proxy,
    deployment: Option<&Deployment>,
    ring: &Ring,
    problems: &[Problem],
) -> Result<bool, kube::Error> {
    let generation = proxy.metadata.generation;
    let rollout = deployment.map(rollout);
    let old = proxy.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let (ready, ready_reason, ready_message) = match &rollout {
        Some(r) if r.available > 0 => (
            true,
            "PodsAvailable",
            format!("{} of {} pods are ready", r.available, r.wanted),
        ),
        Some(r) => (
            false,
            "NoPodAvailable",
            format!("none of {} pods is ready yet", r.wanted),
        ),
        None => (
            false,
            "NoDeployment",
            "the proxy's Deployment does not exist yet".to_owned(),
        ),
    };
    let rotating = ring.phase == Phase::Introducing;
    let (progressing, progress_reason, progress_message) = match &rollout {
        Some(r) if !r.done => (
            true,
            "RollingOut",
            format!(
                "{} of {} pods run the current configuration, {} ready",
                r.updated, r.wanted, r.available
            ),
        ),
        _ if rotating => (
            true,
            "KeysRotating",
            "new keys are being rolled out".to_owned(),
        ),
        Some(_) => (
            false,
            "RolledOut",
            "every pod runs the current configuration".to_owned(),
        ),
        None => (
            true,
            "Creating",
            "the proxy's Deployment is being created".to_owned(),
        ),
    };
    let (degraded, degraded_reason, degraded_message) = match problems {
        [] => (false, "AsExpected", "nothing is in the way".to_owned()),
        [first, ..] => (
            true,
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    condition::set(
        &mut conditions,
        condition(
            condition::READY,
            ready,
            ready_reason,
            ready_message,
            generation,
        ),
    );
    condition::set(
        &mut conditions,
        condition(
            PROGRESSING,
            progressing,
            progress_reason,
            progress_message,
            generation,
        ),
    );
    condition::set(
        &mut conditions,
        condition(
            DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
            generation,
        ),
    );
    let status = ProxyStatus {
        conditions,
        observed_generation: generation,
        available_replicas: rollout.as_ref().map(|r| r.available),
        version: Some(
            proxy
                .spec
                .version
                .clone()
                .unwrap_or_else(|| context.version.clone()),
        ),
        keys: Some(KeysStatus {
            rotation: ring.rotation.clone(),
            phase: Some(ring.phase.as_str().to_owned()),
            since: Some(Time(ring.since)),
        }),
    };
    if status != old {
        patch(context, proxy, &status).await?;
    }
    Ok(progressing)
}

/// Reports a Proxy the operator cannot act on: a Warning Event and [`write_invalid`].
pub(super) async fn halt(
    context: &Context,
    proxy: &Proxy,
    problem: &Problem,
) -> Result<(), kube::Error> {
    warn(context, proxy, problem).await;
    write_invalid(context, proxy, problem).await
}

/// A Warning Event for `problem` on the Proxy.
pub(super) async fn warn(context: &Context, proxy: &Proxy, problem: &Problem) {
    event(
        context,
        proxy,
        EventType::Warning,
        problem.reason,
        &problem.message,
    )
    .await;
}

/// The status of a Proxy the operator cannot act on (a spec that cannot be built, keys it
/// cannot read): Degraded, and nothing else changes.
async fn write_invalid(
    context: &Context,
    proxy: &Proxy,
    problem: &Problem,
) -> Result<(), kube::Error> {
    let generation = proxy.metadata.generation;
    let mut status = proxy.status.clone().unwrap_or_default();
    let old = status.clone();
    condition::set(
        &mut status.conditions,
        condition(
            DEGRADED,
            true,
            problem.reason,
            problem.message.clone(),
            generation,
        ),
    );
    condition::set(
        &mut status.conditions,
        condition(
            PROGRESSING,
            false,
            problem.reason,
            "waiting until this is fixed; what runs is left as it is".to_owned(),
            generation,
        ),
    );
    if !status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY)
    {
        condition::set(
            &mut status.conditions,
            condition(
                condition::READY,
                false,
                problem.reason,
                problem.message.clone(),
                generation,
            ),
        );
    }
    status.observed_generation = generation;
    if status != old {
        patch(context, proxy, &status).await?;
    }
    Ok(())
}

async fn patch(context: &Context, proxy: &Proxy, status: &ProxyStatus) -> Result<(), kube::Error> {
    let api = Api::<Proxy>::namespaced(
        context.client.clone(),
        &proxy.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &proxy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Records an Event on the Proxy (and logs it).
pub(super) async fn event(
    context: &Context,
    proxy: &Proxy,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    crate::event::record(&context.recorder, proxy, type_, reason, message).await;
}
