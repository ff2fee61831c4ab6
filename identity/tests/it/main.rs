//! Integration tests against the real dev IdP (`devidp/`, Node + oidc-provider).

mod bearer;
mod discovery;
mod login;
mod logout;
mod support;
