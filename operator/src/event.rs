//! Events on the objects the operator reconciles, also logged.

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt as _};

/// Records an Event with `reason` (CamelCase) and `message` (cut at 1,000 characters) on
/// `object`, and logs it. A failure to record is logged, not returned: Events are a courtesy.
pub(crate) async fn record<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    tracing::info!(
        %kind,
        namespace = object.namespace().unwrap_or_default(),
        name = object.name_any(),
        reason,
        message,
        "event"
    );
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%kind, %error, "cannot record an Event");
    }
}
