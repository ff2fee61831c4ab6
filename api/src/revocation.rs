//! `Revocation`: sessions that end before they expire, on every replica of the proxy that
//! watches the object's namespace. The proxy writes one for each sign-out and back-channel
//! logout it takes, so that the replicas that did not take it end the same sessions; an
//! administrator writes one to sign a user out everywhere.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::EMAIL;

/// What a revocation ends: exactly one of `session`, `subject`, `email` or `providerSession`.
// Clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "Revocation",
    plural = "revocations",
    namespaced,
    derive = "PartialEq",
    category = "sekisho",
    doc = "Sessions that end before they expire, on every replica of the proxy in this namespace: their cookies, CLI tokens, open WebSockets and tunnel streams. The proxy writes one for each sign-out and back-channel logout it takes; write one with `email` or `subject` to sign a user out everywhere. The proxy deletes it once everything it names has expired.",
    printcolumn(name = "Email", type_ = "string", json_path = ".spec.email"),
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".spec.subject.subject"
    ),
    printcolumn(name = "Session", type_ = "string", json_path = ".spec.session"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expires"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.session), has(self.subject), has(self.email), has(self.providerSession)].exists_one(k, k)",
    "message": "needs exactly one of session, subject, email or providerSession",
}]))]
#[serde(rename_all = "camelCase")]
pub struct RevocationSpec {
    /// One session, by the 32 hexadecimal digits the proxy's logs name it by (`session=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{32}$"))]
    pub session: Option<String>,
    /// Every session of one user of one OpenID provider that began before `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<RevokedSubject>,
    /// Every session with this email address (ASCII case-insensitive), whatever the provider,
    /// that began before `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320), pattern(EMAIL))]
    pub email: Option<String>,
    /// The sessions that logged in with one session of an OpenID provider (a back-channel
    /// logout's `sid`): the first 16 hexadecimal digits of SHA-256 of the issuer, a NUL byte
    /// and the `sid`. The proxy writes these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{16}$"))]
    pub provider_session: Option<String>,
    /// For `subject` and `email`: the sessions that began at or before this time end, later
    /// ones live. Unset: when the object was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Time>,
    /// When everything named here would have ended anyway; the proxy deletes the object after
    /// that. Unset: `before` (or the creation) plus the proxy's session lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// A user as one OpenID provider names them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSubject {
    /// The provider's issuer URL, as in its discovery document.
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: String,
    /// The provider's `sub` for the user.
    #[schemars(length(min = 1, max = 255))]
    pub subject: String,
}
