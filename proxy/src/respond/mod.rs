//! What the proxy answers itself.

pub mod page;
