//! End-to-end tests of the identity layer (docs/identity.md) with real parts: devidp (the
//! project's OpenID provider under Node.js), headless Chromium, the proxy in-process on a
//! loopback port, and echo upstreams. One binary, so the parts are linked once.
//!
//! `harness` starts a [`harness::Site`]; `harness_check` tests the harness itself against any
//! proxy, with or without identity; the other files test the contract.

mod backchannel;
mod bearer;
mod browser_login;
mod harness;
mod harness_check;
mod path_tricks;
mod session;
#[path = "../it/support.rs"]
mod support;
mod webhook;
mod websocket;
