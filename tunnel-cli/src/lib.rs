//! `sekisho`, the user's CLI: log in to a Sekisho proxy (browser with a loopback redirect, or
//! the device flow on a headless box), keep its short-lived user token fresh, and open byte
//! streams through the proxy for ssh's `ProxyCommand`.
//!
//! It must stay small: it talks HTTPS to the proxy and nothing else — no OpenID provider, no
//! Kubernetes. The proxy is the CLI's authorization server ([`grant`]); the login is the
//! proxy's own browser login ([`login`], [`loopback`], [`device`], [`browser`]); tokens live in
//! a private file ([`cache`]). What it shares with the proxy and the agent is in `sekisho-wire`.

pub mod browser;
pub mod cache;
pub mod device;
pub mod exit;
pub mod grant;
pub mod login;
pub mod loopback;
pub mod net;
pub mod secret;
pub mod tunnel;
