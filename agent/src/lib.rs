//! `sekisho-agent`: the daemon on a remote box that dials out to Sekisho proxies and lets them
//! reach the local services it allows, with no inbound port.
//!
//! Each connection is dialed over TLS and upgraded with a signed credential
//! ([`dial`]), then turned around: the agent serves HTTP/2 on it and the proxy opens a stream
//! per client, `CONNECT` for TCP and plain requests for HTTP ([`serve`]), each checked against
//! the allow list ([`target`]). Lost connections come back with jittered [`backoff`]; the
//! [`config`] file and flags become typed settings before anything starts.
//!
//! This crate links only `sekisho-wire` of Sekisho: nothing of the proxy (config, policy,
//! OpenID, Kubernetes) may come in, so the agent stays small and builds on its own.

mod agent;
pub mod backoff;
pub mod config;
pub mod dial;
pub mod key;
mod link;
pub mod serve;
pub mod target;

pub use agent::{Agent, StartError};
pub use sekisho_wire::error_chain;
