//! Revocations the replicas share: what this replica revokes (a sign-out, a back-channel
//! logout, the CLI's token revocation) is written as a `Revocation` object in the proxy's
//! namespace, and every replica applies every such object its watch sees, its own included
//! (applying one twice changes nothing). An administrator's `Revocation` (by `email` or
//! `subject`) is applied the same way. Objects are deleted once every session they name has
//! expired.
//!
//! Names are derived from what is revoked, so that two replicas writing the same revocation
//! make one object (the second create is a conflict, which is success here).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt as _};
use sekisho_api as api;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::{Notify, watch};

use crate::auth::identity::IdentityState;
use hex::FromHex;

use crate::auth::revocation::Revoked;
use crate::auth::session::unix_now;
use crate::state::Shared;

/// How often objects whose sessions have all expired are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How long a revocation that cannot be written is tried again, with backoff, before it is
/// given up (it holds on this replica all the same).
const WRITE_FOR: Duration = Duration::from_secs(300);
/// Who writes the objects.
const FIELD_MANAGER: &str = "sekisho-proxy";

/// Applies the store's revocations whenever it changes, writes this replica's, and sweeps the
/// expired ones, until `stop`.
pub(super) async fn run(
    client: Client,
    namespace: String,
    store: Store<api::Revocation>,
    changed: Arc<Notify>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<api::Revocation> = Api::namespaced(client, &namespace);
    let (outbox, written) = unbounded_channel();
    tokio::spawn(write(api.clone(), written, stop.clone()));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // The objects whose problem was logged, by name and resourceVersion: once each.
    let mut told = HashSet::new();
    loop {
        if let Some(state) = identity_state(&shared) {
            state.revocations.share_with(outbox.clone());
            for object in store.state() {
                match revoked(&object, session_lifetime(&shared)) {
                    Ok(revoked) => state.revocations.apply(&revoked),
                    Err(problem) => {
                        if told.insert((object.name_any(), object.resource_version())) {
                            tracing::warn!(revocation = %object.name_any(), namespace = %namespace, problem, "a Revocation cannot be applied");
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            _ = sweep.tick() => delete_expired(&api, &store, session_lifetime(&shared)).await,
            () = crate::state::stopped(&mut stop) => return,
        }
    }
}

fn identity_state(shared: &Shared) -> Option<Arc<IdentityState>> {
    shared
        .snapshot
        .load()
        .identity
        .as_ref()
        .map(|identity| identity.state.clone())
}

fn session_lifetime(shared: &Shared) -> u64 {
    shared
        .snapshot
        .load()
        .identity
        .as_ref()
        .map_or(0, |identity| identity.session_lifetime().as_secs())
}

/// Writes each revocation this replica makes, retrying with backoff for [`WRITE_FOR`].
async fn write(
    api: Api<api::Revocation>,
    mut written: UnboundedReceiver<Revoked>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let revoked = tokio::select! {
            next = written.recv() => match next {
                Some(revoked) => revoked,
                None => return,
            },
            () = crate::state::stopped(&mut stop) => return,
        };
        let api = api.clone();
        // One task per revocation: one that cannot be written holds up no other.
        tokio::spawn(async move {
            let object = object(&revoked);
            let name = object.name_any();
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_millis(200);
            loop {
                match api.create(&params, &object).await {
                    Ok(_) => return,
                    // Another replica wrote the same revocation (or this one, before a retry).
                    Err(kube::Error::Api(status)) if status.code == 409 => return,
                    Err(error) if started.elapsed() < WRITE_FOR => {
                        tracing::warn!(revocation = %name, error = %crate::error_chain(&error), "cannot write a Revocation for the other replicas; trying again");
                    }
                    Err(error) => {
                        tracing::error!(revocation = %name, error = %crate::error_chain(&error), "gave up writing a Revocation: the other replicas do not know of it (it holds on this one)");
                        return;
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
}

/// Deletes the objects whose sessions have all expired.
async fn delete_expired(api: &Api<api::Revocation>, store: &Store<api::Revocation>, lifetime: u64) {
    let now = unix_now();
    for object in store.state() {
        if expires(&object, lifetime) > now {
            continue;
        }
        let name = object.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::debug!(revocation = %name, "deleted an expired Revocation"),
            // Another replica was first.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(revocation = %name, error = %crate::error_chain(&error), "cannot delete an expired Revocation");
            }
        }
    }
}

/// Unix seconds of a `Time`.
fn seconds(time: &Time) -> u64 {
    u64::try_from(time.0.as_second()).unwrap_or(0)
}

fn time(seconds: u64) -> Time {
    Time(
        Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::MAX),
    )
}

/// When the object's subject or email revocation took effect: `before`, else its creation.
fn before(object: &api::Revocation) -> u64 {
    object
        .spec
        .before
        .as_ref()
        .or(object.metadata.creation_timestamp.as_ref())
        .map_or_else(unix_now, seconds)
}

/// When everything the object names has expired: `expires`, else `before` (or the creation)
/// plus the session lifetime.
fn expires(object: &api::Revocation, lifetime: u64) -> u64 {
    object
        .spec
        .expires
        .as_ref()
        .map_or_else(|| before(object).saturating_add(lifetime), seconds)
}

/// What an object revokes; why not, for one the schema let through that cannot be read (it was
/// stored before a schema change, or the CRD is not the one this proxy knows).
fn revoked(object: &api::Revocation, lifetime: u64) -> Result<Revoked, &'static str> {
    let spec = &object.spec;
    let until = expires(object, lifetime);
    match (
        &spec.session,
        &spec.subject,
        &spec.email,
        &spec.provider_session,
    ) {
        (Some(session), None, None, None) => Ok(Revoked::Session {
            id: FromHex::from_hex(session).map_err(|_| "session is not 32 hexadecimal digits")?,
            until,
        }),
        (None, Some(subject), None, None) => Ok(Revoked::Subject {
            issuer: subject.issuer.clone(),
            subject: subject.subject.clone(),
            at: before(object),
        }),
        (None, None, Some(email), None) => Ok(Revoked::Email {
            email: email.to_ascii_lowercase(),
            at: before(object),
        }),
        (None, None, None, Some(key)) => Ok(Revoked::ProviderSession {
            key: FromHex::from_hex(key)
                .map_err(|_| "providerSession is not 16 hexadecimal digits")?,
            until,
        }),
        _ => Err("needs exactly one of session, subject, email or providerSession"),
    }
}

/// The object for a revocation this replica made, named after what it revokes.
fn object(revoked: &Revoked) -> api::Revocation {
    let mut spec = api::RevocationSpec::default();
    let name = match revoked {
        Revoked::Session { id, until } => {
            spec.session = Some(hex::encode(id));
            spec.expires = Some(time(*until));
            format!("session-{}", hex::encode(id))
        }
        Revoked::ProviderSession { key, until } => {
            spec.provider_session = Some(hex::encode(key));
            spec.expires = Some(time(*until));
            format!("provider-session-{}", hex::encode(key))
        }
        Revoked::Subject {
            issuer,
            subject,
            at,
        } => {
            spec.subject = Some(api::RevokedSubject {
                issuer: issuer.clone(),
                subject: subject.clone(),
            });
            spec.before = Some(time(*at));
            format!(
                "subject-{}-{at}",
                short_hash(&[issuer.as_str(), subject.as_str()])
            )
        }
        Revoked::Email { email, at } => {
            spec.email = Some(email.clone());
            spec.before = Some(time(*at));
            format!("email-{}-{at}", short_hash(&[email.as_str()]))
        }
    };
    api::Revocation {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec,
    }
}

/// 16 hexadecimal digits of SHA-256 of `parts` joined by NUL bytes: a name that does not show
/// who was signed out to whoever can list the objects.
fn short_hash(parts: &[&str]) -> String {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update(&[0]);
        }
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finish().as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000;

    fn read_back(revoked: &Revoked) -> Revoked {
        let mut object = object(revoked);
        object.metadata.creation_timestamp = Some(time(T + 5));
        super::revoked(&object, 3600).expect("readable")
    }

    #[test]
    fn every_revocation_reads_back_as_it_was_written() {
        for revoked in [
            Revoked::Session {
                id: [0xab; 16],
                until: T,
            },
            Revoked::ProviderSession {
                key: [1, 2, 3, 4, 5, 6, 7, 8],
                until: T,
            },
            Revoked::Subject {
                issuer: "https://id.example".into(),
                subject: "alice".into(),
                at: T,
            },
            Revoked::Email {
                email: "alice@uniqe.example".into(),
                at: T,
            },
        ] {
            assert_eq!(read_back(&revoked), revoked);
        }
    }

    #[test]
    fn names_are_the_same_for_the_same_revocation_and_do_not_show_the_user() {
        let email = |at| Revoked::Email {
            email: "alice@uniqe.example".into(),
            at,
        };
        assert_eq!(object(&email(T)).name_any(), object(&email(T)).name_any());
        assert_ne!(
            object(&email(T)).name_any(),
            object(&email(T + 1)).name_any()
        );
        assert!(!object(&email(T)).name_any().contains("alice"));
        let name = object(&Revoked::Session {
            id: [0xab; 16],
            until: T,
        })
        .name_any();
        assert_eq!(name, format!("session-{}", "ab".repeat(16)));
    }

    #[test]
    fn an_administrators_revocation_takes_effect_at_its_creation_and_expires_a_lifetime_later() {
        let mut object = api::Revocation::new(
            "sign-out-alice",
            api::RevocationSpec {
                email: Some("Alice@Uniqe.example".into()),
                ..api::RevocationSpec::default()
            },
        );
        object.metadata.creation_timestamp = Some(time(T));
        assert_eq!(
            revoked(&object, 3600),
            Ok(Revoked::Email {
                email: "alice@uniqe.example".into(),
                at: T
            })
        );
        assert_eq!(expires(&object, 3600), T + 3600);
    }

    #[test]
    fn an_object_that_names_two_things_or_a_malformed_id_is_refused() {
        let spec = api::RevocationSpec {
            email: Some("alice@uniqe.example".into()),
            session: Some("ab".repeat(16)),
            ..api::RevocationSpec::default()
        };
        assert!(revoked(&api::Revocation::new("two", spec), 60).is_err());
        let spec = api::RevocationSpec {
            session: Some("zz".repeat(16)),
            ..api::RevocationSpec::default()
        };
        assert!(revoked(&api::Revocation::new("bad", spec), 60).is_err());
        let spec = api::RevocationSpec {
            session: Some("é".repeat(16)),
            ..api::RevocationSpec::default()
        };
        assert!(revoked(&api::Revocation::new("bytes", spec), 60).is_err());
    }
}
