//! Who is asking, and may they pass.

pub mod access;
pub mod cli_login;
pub mod identity;
pub mod login;
pub mod session;
