//! Talking to upstreams: endpoints and pools, bodies, headers, WebSockets.

pub mod body;
pub(crate) mod header;
pub mod upstream;
pub mod websocket;
