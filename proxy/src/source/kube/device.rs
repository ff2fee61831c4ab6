//! Device logins shared by the replicas (`auth/cli_login/device.rs`): a grant is a Lease in
//! the proxy's namespace, named after a hash of its user code, with its state in annotations.
//! A decision replaces the Lease at the resourceVersion read, and a decided grant is taken by
//! deleting the Lease at the resourceVersion read, so the API server lets one replica win each
//! step. Expired grants' Leases are deleted with the spent codes' (`once.rs`, which also
//! makes the replicas share grants through [`LeaseGrants`]).
//!
//! The annotations hold the device code's SHA-256 and an approval sealed with the replicas'
//! session keys for that hash: reading the Leases gives no one a way to poll or sign in.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Preconditions};

use super::leases::{created, post_params, short_lived, unshared, within, written_at_version};
use crate::auth::cli_login::device::{Decision, Grant, GrantStore, UserCode};
use crate::auth::once::Unshared;

/// The label of the Leases that stand for device logins (the value is always `true`).
pub(super) const LABEL: &str = "sekisho.dev/device-login";
/// SHA-256 of the device code, in hexadecimal.
const DEVICE_CODE: &str = "sekisho.dev/device-code-sha256";
/// When the grant expires, in Unix milliseconds.
const EXPIRES_AT: &str = "sekisho.dev/expires-at-ms";
/// `pending`, `denied` or `approved`.
const DECISION: &str = "sekisho.dev/decision";
/// The sealed approval, when approved.
const APPROVAL: &str = "sekisho.dev/approval";

/// Device logins as Leases in one namespace.
pub(super) struct LeaseGrants {
    api: Api<Lease>,
    replica: String,
}

impl LeaseGrants {
    pub(super) fn new(api: Api<Lease>, replica: String) -> Self {
        Self { api, replica }
    }

    fn lease(&self, user_code: &UserCode, grant: &Grant) -> Lease {
        let until = grant.expires_at.div_ceil(1000);
        let mut lease = short_lived(name(user_code), LABEL, &self.replica, until);
        lease.metadata.annotations = Some(annotations(grant));
        lease
    }
}

/// The Lease of a user code: a prefix and a hash of the code, so that the name does not show
/// the code a person would type.
fn name(user_code: &UserCode) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, user_code.as_str().as_bytes());
    format!("sekisho-device-{}", hex::encode(&digest.as_ref()[..16]))
}

fn annotations(grant: &Grant) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (
            DEVICE_CODE.to_owned(),
            hex::encode(grant.device_code_sha256),
        ),
        (EXPIRES_AT.to_owned(), grant.expires_at.to_string()),
    ]);
    let decision = match &grant.decision {
        Decision::Pending => "pending",
        Decision::Denied => "denied",
        Decision::Approved(approval) => {
            annotations.insert(APPROVAL.to_owned(), approval.clone());
            "approved"
        }
    };
    annotations.insert(DECISION.to_owned(), decision.to_owned());
    annotations
}

/// The grant a Lease stands for; `None` when its annotations are not a grant's (a Lease
/// someone else wrote), which a poll then treats as unknown.
fn grant_of(lease: &Lease) -> Option<Grant> {
    let annotations = lease.metadata.annotations.as_ref()?;
    let device_code_sha256 = hex::FromHex::from_hex(annotations.get(DEVICE_CODE)?).ok()?;
    let decision = match annotations.get(DECISION)?.as_str() {
        "pending" => Decision::Pending,
        "denied" => Decision::Denied,
        "approved" => Decision::Approved(annotations.get(APPROVAL)?.clone()),
        _ => return None,
    };
    Some(Grant {
        device_code_sha256,
        expires_at: annotations.get(EXPIRES_AT)?.parse().ok()?,
        decision,
    })
}

impl GrantStore for LeaseGrants {
    fn create<'a>(
        &'a self,
        user_code: &'a UserCode,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            let lease = self.lease(user_code, grant);
            created(self.api.create(&post_params(), &lease)).await
        })
    }

    fn get<'a>(
        &'a self,
        user_code: &'a UserCode,
    ) -> BoxFuture<'a, Result<Option<(Grant, String)>, Unshared>> {
        Box::pin(async move {
            let lease = within(self.api.get_opt(&name(user_code)))
                .await?
                .map_err(|error| unshared(&error))?;
            Ok(lease.and_then(|lease| {
                let version = lease.resource_version()?;
                Some((grant_of(&lease)?, version))
            }))
        })
    }

    fn replace<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            let mut lease = self.lease(user_code, grant);
            lease.metadata.resource_version = Some(version.to_owned());
            written_at_version(self.api.replace(&name(user_code), &post_params(), &lease)).await
        })
    }

    fn remove<'a>(
        &'a self,
        user_code: &'a UserCode,
        version: &'a str,
    ) -> BoxFuture<'a, Result<bool, Unshared>> {
        Box::pin(async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(version.to_owned()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            written_at_version(self.api.delete(&name(user_code), &params)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(decision: Decision) -> Grant {
        Grant {
            device_code_sha256: [0xa7; 32],
            expires_at: 1_800_000_600_123,
            decision,
        }
    }

    fn lease_of(grant: &Grant) -> Lease {
        let mut lease = short_lived("x".into(), LABEL, "replica", 1_800_000_600);
        lease.metadata.annotations = Some(annotations(grant));
        lease
    }

    #[test]
    fn a_grant_reads_back_from_its_lease_whatever_its_decision() {
        for decision in [
            Decision::Pending,
            Decision::Denied,
            Decision::Approved("c2VhbGVk".into()),
        ] {
            let grant = grant(decision);
            assert_eq!(grant_of(&lease_of(&grant)), Some(grant));
        }
    }

    #[test]
    fn a_lease_whose_annotations_are_not_a_grants_is_no_grant() {
        let good = lease_of(&grant(Decision::Approved("c2VhbGVk".into())));
        let broken: [(&str, Option<&str>); 7] = [
            (DEVICE_CODE, Some("a7")),
            (DEVICE_CODE, Some(&"zz".repeat(32))),
            (DEVICE_CODE, None),
            (DECISION, Some("maybe")),
            (APPROVAL, None),
            (EXPIRES_AT, Some("soon")),
            (EXPIRES_AT, None),
        ];
        for (key, value) in broken {
            let mut lease = good.clone();
            let annotations = lease.metadata.annotations.as_mut().unwrap();
            match value {
                Some(value) => annotations.insert(key.to_owned(), value.to_owned()),
                None => annotations.remove(key),
            };
            assert_eq!(grant_of(&lease), None, "{key}: {value:?}");
        }
        let mut bare = good;
        bare.metadata.annotations = None;
        assert_eq!(grant_of(&bare), None);
    }

    #[test]
    fn the_lease_name_hides_the_user_code_and_is_a_valid_name() {
        let code = UserCode::parse("BCDF-GHJK").unwrap();
        let name = name(&code);
        assert!(name.starts_with("sekisho-device-"), "{name}");
        assert_eq!(name.len(), "sekisho-device-".len() + 32);
        assert!(!name.to_uppercase().contains("BCDFGHJK"));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}
