//! `IngressClassParameters`: the defaults of an IngressClass whose controller is Sekisho,
//! which its `spec.parameters` points at.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::OBJECT_NAME;

/// The defaults of the IngressClasses that point at this object.
#[derive(
    CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "sekisho.dev",
    version = "v1alpha1",
    kind = "IngressClassParameters",
    plural = "ingressclassparameters",
    singular = "ingressclassparameters",
    derive = "PartialEq",
    category = "sekisho",
    doc = "Defaults for the Ingresses of an IngressClass whose controller is sekisho.dev/ingress-controller: the class's spec.parameters names it (apiGroup sekisho.dev, kind IngressClassParameters).",
    printcolumn(
        name = "Default Policy",
        type_ = "string",
        json_path = ".spec.defaultPolicy"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngressClassParametersSpec {
    /// The access policy of the class's Ingresses that have no `sekisho.dev/access-policy`
    /// annotation: the name of a ClusterAccessPolicy, or `public` for a class meant for
    /// public sites. Without it, such an Ingress is served to no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(OBJECT_NAME))]
    pub default_policy: Option<String>,
}
