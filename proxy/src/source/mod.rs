//! Where the routes come from. The configuration file (`frontdoor::reload` watches it) gives
//! them in file mode; in Kubernetes mode [`kube`] builds them from the API's objects. Both
//! produce the same [`crate::config::Config`] routing sections and the same
//! [`crate::routing::snapshot::Snapshot`], swapped in atomically.

pub(crate) mod kube;
