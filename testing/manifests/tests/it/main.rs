//! The install manifests, rendered by the real tools and read by a real API server.

mod agent;
mod chart;
mod dockerfile;
mod server;
mod support;
