//! `sekisho-identity`: who a request comes from.
//!
//! The parts of Sekisho's identity layer that talk to OpenID providers or sign and verify tokens,
//! kept apart from the proxy's data path so that the proxy, the agent and the CLI can share them.
//! This crate must not depend on the proxy, on Kubernetes, or on how requests are served.

pub mod assertion;
pub mod signing;
pub mod user_token;
pub mod webhook;
