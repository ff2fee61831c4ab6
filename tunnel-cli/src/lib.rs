//! `sekisho`, the user's CLI: log in to a Sekisho proxy (browser with a loopback redirect, or
//! the device flow on a headless box), keep its short-lived user token fresh, and open byte
//! streams through the proxy for ssh's `ProxyCommand`.
//!
//! It must stay small: it talks HTTPS to the proxy and nothing else — no OpenID provider, no
//! Kubernetes. What it shares with the proxy and the agent is in `sekisho-wire`.

pub mod exit;
pub mod net;
pub mod tunnel;
