//! `sekisho-identity`: who a request comes from.
//!
//! The parts of Sekisho's identity layer that talk to OpenID providers or sign and verify tokens,
//! kept apart from the proxy's data path so that the proxy, the agent and the CLI can share them.
//! This crate must not depend on the proxy, on Kubernetes, or on how requests are served.
//!
//! - [`http`]: the HTTP client for providers (hyper + rustls, deadline, size limit).
//! - [`jwks`]: a provider's signing keys, refetched on unknown key ids at a bounded rate.
//! - [`oidc`]: the OpenID Connect relying party: discovery, login, logout tokens.
//! - [`bearer`]: verifying JWT access tokens from configured issuers.
//! - [`signing`]: Sekisho's own ES256 key ring and its JWKS; [`assertion`] (the identity header
//!   upstreams get) and [`user_token`] (the CLI's short-lived tokens) are signed with it.
//! - [`key_file`]: reading and atomically replacing key files (for adding a key on top).
//! - [`webhook`]: GitHub webhook signatures.

pub mod assertion;
pub mod bearer;
mod claim;
pub mod http;
pub mod jwks;
mod jws;
pub mod key_file;
pub mod oidc;
pub mod signing;
pub mod user_token;
pub mod webhook;

pub use jws::SIGNING_ALGORITHMS;
