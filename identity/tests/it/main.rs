//! Integration tests against the real dev IdP (`testing/devidp/`, Node + oidc-provider).

mod bearer;
mod discovery;
mod login;
mod logout;
mod support;
