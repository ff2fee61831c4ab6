//! The install manifests, rendered by the real tools and read by a real API server.

mod chart;
mod dockerfile;
mod server;
mod support;
