//! The front door: listeners, worker threads, client connections, TLS and the admin listener.

pub(crate) mod admin;
pub mod connection;
pub(crate) mod reload;
pub mod server;
pub mod tls;
pub(crate) mod worker;
