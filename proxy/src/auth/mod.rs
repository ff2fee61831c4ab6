//! Who is asking, and may they pass.

pub(crate) mod access;
pub(crate) mod cli_login;
pub(crate) mod endpoint;
pub(crate) mod identity;
pub(crate) mod login;
pub(crate) mod once;
pub(crate) mod revocation;
pub(crate) mod session;
pub(crate) mod who;
