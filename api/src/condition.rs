//! Status conditions as Sekisho writes them: the condition types and reasons it uses, and
//! [`set`], which replaces a condition the way Kubernetes conventions want (its
//! `lastTransitionTime` moves only when its status changes). The proxy and the operator write
//! conditions through this module, so that both say the same things the same way.
//!
//! Pure logic: the caller passes the current time and writes the status itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition every Sekisho kind with a status carries: `True` when the object is served
/// as its spec says, `False` (with a reason) when it is not.
pub const READY: &str = "Ready";

/// The reasons of [`READY`] (CamelCase, as Kubernetes wants them).
pub mod reason {
    /// The object is valid and served.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec has a problem the schema could not refuse; the message names the field.
    pub const INVALID: &str = "Invalid";
    /// The policy the object names exists neither in its namespace nor in the cluster.
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    /// The Agent the object names does not exist in its namespace.
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    /// Another object, or another namespace, holds the host (or path) this one claims.
    pub const HOST_TAKEN: &str = "HostTaken";
    /// The agent holds a connection to a replica.
    pub const CONNECTED: &str = "Connected";
    /// The agent holds no connection.
    pub const NOT_CONNECTED: &str = "NotConnected";
}

/// A [`READY`] condition: `True` when `ready`, else `False`, with its reason, message, the
/// generation it describes and `now` as its transition time (which [`set`] keeps from the
/// condition it replaces when the status is the same).
pub fn ready(
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: READY.to_owned(),
        status: if ready { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Puts `condition` in `conditions` in place of the one of its type (or at the end), keeping
/// the old `lastTransitionTime` when the status did not change; other conditions keep their
/// places. Returns whether the conditions changed, so that a caller can skip writing a status
/// that says the same again.
pub fn set(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    let Some(i) = conditions.iter().position(|c| c.type_ == condition.type_) else {
        conditions.push(condition);
        return true;
    };
    // A list written by someone else may hold the type more than once: keep the first.
    let mut seen = false;
    let before = conditions.len();
    conditions.retain(|c| c.type_ != condition.type_ || !std::mem::replace(&mut seen, true));
    let deduplicated = conditions.len() != before;
    let old = &mut conditions[i];
    if old.status == condition.status {
        condition.last_transition_time = old.last_transition_time.clone();
    }
    let changed = *old != condition;
    *old = condition;
    changed || deduplicated
}

/// The condition of this type, if there is one.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is there and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("a valid time"))
    }

    fn other(type_: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            reason: "Fine".to_owned(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at(1),
        }
    }

    #[test]
    fn a_new_condition_is_added_after_the_others() {
        let mut conditions = vec![other("Programmed")];
        let changed = set(
            &mut conditions,
            ready(true, reason::ACCEPTED, "", Some(2), at(10)),
        );
        assert!(changed);
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0], other("Programmed"));
        assert_eq!(conditions[1].type_, READY);
        assert_eq!(conditions[1].status, "True");
        assert_eq!(conditions[1].last_transition_time, at(10));
    }

    #[test]
    fn the_same_status_keeps_its_transition_time_while_reason_message_and_generation_move() {
        let mut conditions = vec![
            ready(
                false,
                reason::POLICY_NOT_FOUND,
                "no policy `staff`",
                Some(1),
                at(10),
            ),
            other("Programmed"),
        ];
        let changed = set(
            &mut conditions,
            ready(
                false,
                reason::AGENT_NOT_FOUND,
                "no agent `nas`",
                Some(2),
                at(20),
            ),
        );
        assert!(changed);
        assert_eq!(
            conditions[0],
            ready(
                false,
                reason::AGENT_NOT_FOUND,
                "no agent `nas`",
                Some(2),
                at(10)
            )
        );
        assert_eq!(
            conditions[1],
            other("Programmed"),
            "others keep their place"
        );
    }

    #[test]
    fn a_status_change_takes_the_new_transition_time() {
        let mut conditions = vec![ready(false, reason::NOT_CONNECTED, "", Some(1), at(10))];
        assert!(set(
            &mut conditions,
            ready(true, reason::CONNECTED, "", Some(1), at(20))
        ));
        assert_eq!(conditions[0].last_transition_time, at(20));
        assert!(is_true(&conditions, READY));
    }

    #[test]
    fn setting_what_is_already_there_changes_nothing() {
        let first = ready(true, reason::ACCEPTED, "served", Some(3), at(10));
        let mut conditions = vec![first.clone()];
        let changed = set(
            &mut conditions,
            ready(true, reason::ACCEPTED, "served", Some(3), at(99)),
        );
        assert!(!changed, "only the time differed, and it is kept");
        assert_eq!(conditions, [first]);
    }

    #[test]
    fn a_type_listed_twice_is_left_once() {
        let mut conditions = vec![
            ready(true, reason::ACCEPTED, "", Some(1), at(10)),
            other("Programmed"),
            ready(false, reason::INVALID, "", Some(1), at(5)),
        ];
        let changed = set(
            &mut conditions,
            ready(true, reason::ACCEPTED, "", Some(1), at(20)),
        );
        assert!(changed, "the duplicate went away");
        assert_eq!(
            conditions,
            [
                ready(true, reason::ACCEPTED, "", Some(1), at(10)),
                other("Programmed")
            ]
        );
    }

    #[test]
    fn find_and_is_true_look_at_the_type_asked_for() {
        let conditions = vec![
            other("Programmed"),
            ready(false, reason::HOST_TAKEN, "", None, at(1)),
        ];
        assert_eq!(
            find(&conditions, READY).map(|c| c.reason.as_str()),
            Some(reason::HOST_TAKEN)
        );
        assert!(!is_true(&conditions, READY));
        assert!(is_true(&conditions, "Programmed"));
        assert!(find(&conditions, "Missing").is_none());
        assert!(!is_true(&[], READY));
    }
}
