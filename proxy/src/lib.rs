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

pub mod access;
pub mod access_log;
mod admin;
pub mod body;
pub mod cli_login;
pub mod config;
pub mod connection;
mod header;
pub mod hub;
pub mod identity;
mod login;
pub mod metrics;
pub mod page;
pub mod path;
pub mod policy;
pub mod proxy;
mod reload;
pub mod route;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod websocket;
mod worker;

pub use sekisho_wire::error_chain;
pub use server::{Options, Running, StartError, start};
