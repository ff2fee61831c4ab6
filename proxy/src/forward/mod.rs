//! Talking to upstreams: endpoints and pools, bodies, headers, WebSockets.

pub(crate) mod body;
pub(crate) mod header;
pub(crate) mod upstream;
pub(crate) mod websocket;
