//! What the proxy tells an operator: metrics and the access log.

pub mod access_log;
pub mod metrics;
