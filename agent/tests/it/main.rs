//! Integration tests: the agent against a fake proxy that speaks the real protocol.
//!
//! - `stream`: what the proxy can open on an agent connection (CONNECT, HTTP, refusals);
//! - `lifecycle`: drain, reconnection, refused keys, graceful stop;
//! - `cli`: the built binary (init, public-key, check-config, run and SIGTERM).

mod cli;
mod lifecycle;
mod stream;
mod support;
