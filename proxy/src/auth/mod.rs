//! Who is asking, and may they pass.

pub mod access;
pub mod cli_login;
pub(crate) mod endpoint;
pub mod identity;
pub mod login;
pub mod session;
pub(crate) mod who;
