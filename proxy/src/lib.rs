//! `sekisho-proxy`: Sekisho's TLS front door, L7 reverse proxy, OpenID Connect relying party,
//! policy engine and tunnel hub.
//!
//! The crate is layered; each folder's module comment says what it owns and what it may use,
//! and no module imports another in a cycle (`scripts/module-cycles.py` checks it in CI):
//!
//! - [`frontdoor`](crate::frontdoor): listeners, worker threads, client connections, TLS, the
//!   admin listener and reloads. It calls the pipeline.
//! - `request`: one request's context, errors and the pipeline of named phases.
//! - `auth` (who is asking and may they pass), `hub` (agents and tunnels), `forward`
//!   (upstreams, request bodies, headers, WebSockets): the phases.
//! - `respond`: what the proxy answers itself. `state`: what requests share.
//! - `routing` (the one normal path, the route table, the snapshot), `policy`, `config`,
//!   `observe` (metrics, the access log): data and pure decisions at the bottom.
//!
//! The public surface is what the binary, the tests and the operator need: [`start`] and
//! [`Running`], configuration checks ([`Config`], [`check_config`]) and key files
//! ([`add_session_key`]). This crate must not depend on the agent or the CLI. Routes come from
//! the configuration file or, in Kubernetes mode, from the API (`source`): both build the same
//! snapshot.

mod auth;
mod check;
mod config;
mod every;
mod forward;
mod frontdoor;
mod hub;
mod observe;
mod policy;
mod request;
mod respond;
mod routing;
mod source;
mod state;

pub use auth::session::{
    KeyError, SessionId, SessionKeys, SessionRecord, add_key_to_file as add_session_key, unix_now,
};
pub use check::{CheckedConfig, check_config};
pub use config::{Config, ConfigError, IdentityConfig, Problem};
pub use frontdoor::handover::InheritError;
pub use frontdoor::server::{Options, Running, StartError, start};
pub use sekisho_wire::error_chain;
pub use source::kube::KubernetesOptions;

/// The parsers the fuzz targets in `fuzz/` drive (see `docs/fuzzing.md`). Not an API: it
/// follows the code it exposes.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::routing::path::{PathError, normalize_path};
    pub use crate::routing::table::normalize_host;

    /// Sealed cookies, handoff codes and the CLI's codes.
    pub mod session {
        pub use crate::auth::session::fuzzing::*;
    }
}
