//! The proxy's own endpoints as the identity layer names them: the paths it answers itself,
//! the auth host's origin, and the login links and error pages every one of them uses.

use http::{Response, StatusCode};

use crate::auth::identity::IdentityRuntime;
use crate::request::context::RequestCtx;
use crate::respond::body::ResponseBody;
use crate::respond::{html, page};

/// The CLI's OAuth endpoints (`crate::auth::cli_login`).
pub(crate) const CLI_PREFIX: &str = "/.sekisho/cli/";

/// `https://AUTH_HOST[:PORT]`, with the port of the request's `Host`.
pub(crate) fn auth_origin(identity: &IdentityRuntime, ctx: &RequestCtx) -> String {
    format!("https://{}{}", identity.auth_host, ctx.port_suffix())
}

pub(crate) fn login_again_url(identity: &IdentityRuntime, ctx: &RequestCtx, rd: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("{}/.sekisho/login?rd={rd}", auth_origin(identity, ctx))
}

pub(crate) fn login_error(
    ctx: &RequestCtx,
    status: StatusCode,
    message: &str,
    retry: &str,
) -> Response<ResponseBody> {
    html(
        status,
        page::login_error(message, retry, ctx.request_id.to_str().unwrap_or("-")),
    )
}
