//! End-to-end tests of `sekisho login` and its relatives with real parts: devidp (the
//! project's OpenID provider under Node.js), headless Chromium, the proxy in-process on a
//! loopback port, an echo upstream behind a `bearer: true` route, a TCP echo server behind a
//! tunnel route, and the built `sekisho` binary; and the local demo's own configuration
//! (`demo`). One binary, so the parts are linked once.

mod browser_flow;
mod demo;
mod device_flow;
mod harness;
mod refusal;
mod tunnel;
