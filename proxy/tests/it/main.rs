//! Integration tests: the proxy on real sockets, with real TLS and real upstreams.

mod check_config;
mod dashboard;
mod forwarding;
mod grpc;
mod hygiene;
mod keys;
mod lifecycle;
mod observability;
mod relay;
mod reload;
mod streaming;
mod support;
mod tls;
mod upstream_tls;
mod websocket;
