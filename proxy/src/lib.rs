//! `sekisho-proxy`: Sekisho's TLS front door and L7 reverse proxy.
//!
//! A request's life: a worker accepts the connection ([`server`]), rustls picks a certificate by
//! SNI ([`tls`]), hyper parses the request, and the pipeline in [`proxy`] routes it by host and
//! path ([`route`]) through the current [`snapshot`] to an upstream endpoint ([`upstream`]),
//! streaming bodies both ways ([`body`]). Configuration and certificates reload without a
//! restart ([`reload`]); metrics and health live on a separate admin listener ([`admin`]).
//! Agents dial in and `sekisho tunnel` streams go through them in the tunnel [`hub`].
//!
//! This crate must not depend on the agent or the CLI; Kubernetes watching feeds the same
//! snapshot later.

pub mod auth;
pub mod config;
pub mod forward;
pub mod frontdoor;
pub mod hub;
pub mod observe;
pub mod policy;
pub mod request;
pub mod respond;
pub mod routing;
pub mod state;

pub use frontdoor::server::{Options, Running, StartError, start};
pub use sekisho_wire::error_chain;
