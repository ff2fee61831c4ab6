//! What the proxy tells an operator: metrics and the access log.

pub(crate) mod access_log;
pub(crate) mod metrics;
mod process;
