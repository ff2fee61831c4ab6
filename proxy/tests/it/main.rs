//! Integration tests: the proxy on real sockets, with real TLS and real upstreams.

mod forwarding;
mod reload;
mod support;
