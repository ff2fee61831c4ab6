//! The front door: listeners, worker threads, client connections, TLS and the admin listener.

pub(crate) mod admin;
pub(crate) mod connection;
mod dev_ca;
pub(crate) mod handover;
mod linger;
pub(crate) mod reload;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod worker;
