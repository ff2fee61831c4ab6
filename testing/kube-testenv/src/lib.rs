//! A real Kubernetes control plane for Sekisho's tests: etcd, kube-apiserver and
//! kube-controller-manager, started on free loopback ports in a temporary directory with
//! freshly generated certificates and service-account keys, RBAC authorization and real
//! authentication (client certificates for the admin, TokenRequest tokens for
//! ServiceAccounts).
//!
//! Test-only: nothing in a shipped binary may depend on this crate. The binaries come from
//! `testing/kube/build.sh`, which builds them from Go modules into `.cache/kube/bin` (or
//! `$SEKISHO_KUBE_BIN`); without them every start fails with an error that says so.
//!
//! Tests of one binary share one control plane ([`TestEnv::shared`]) and each works in a
//! namespace of its own ([`TestEnv::namespace`]): starting kube-apiserver costs seconds of
//! CPU on a small machine, a namespace costs one request. [`TestEnv::start`] gives a test a
//! private control plane when it needs one. Either way the processes run in their own
//! process group, watched by a small `sh` process that kills that group and removes the
//! temporary directory as soon as the test process is gone, however it ended.

mod binary;
mod certificate;
mod env;
mod error;
mod kubeconfig;
mod port;
mod process;

pub use binary::Binaries;
pub use env::TestEnv;
pub use error::Error;
