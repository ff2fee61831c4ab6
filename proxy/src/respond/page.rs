//! The few HTML pages Sekisho shows people itself (access denied, a WebSocket from another
//! origin, login failed, choose a provider, who am I, signed out, the CLI's device approval),
//! and the JSON error body for clients that are not browsers.
//!
//! Each page is one self-contained document: inline CSS, no script, no external assets, light
//! and dark colours from `prefers-color-scheme`. Every dynamic value goes through [`escape`];
//! link targets also go through [`safe_href`], so a value that reaches a page can neither add
//! markup nor smuggle a `javascript:` URL. Serve pages with [`CONTENT_SECURITY_POLICY`].

use std::fmt::Write as _;

/// The `Content-Security-Policy` for these pages: nothing loads, nothing runs, only the inline
/// style applies.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The `Content-Security-Policy` for a page with a form ([`device_approval`]): as
/// [`CONTENT_SECURITY_POLICY`], except that forms may post to this origin.
pub(crate) const FORM_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The `Content-Type` of these pages.
pub(crate) const CONTENT_TYPE: &str = "text/html; charset=utf-8";

const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--muted:#5b6474;\
--line:#dde1e7;--accent:#2553c7;--ok:#1c7c43;--no:#b3261e}\
@media (prefers-color-scheme:dark){:root{--bg:#111418;--card:#1a1e24;--fg:#e6e9ee;\
--muted:#9aa3b2;--line:#2c323b;--accent:#8fb0ff;--ok:#6fd39a;--no:#ff8a80}}\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
padding:1.5rem;background:var(--bg);color:var(--fg);\
font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
main{width:100%;max-width:34rem;background:var(--card);border:1px solid var(--line);\
border-radius:12px;padding:2rem}\
h1{font-size:1.35rem;margin:0 0 .75rem}\
p{margin:.5rem 0}\
.muted{color:var(--muted);font-size:.9rem}\
code{font:.9em ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}\
a{color:var(--accent)}\
.button{display:block;margin:.5rem 0;padding:.65rem 1rem;border:1px solid var(--line);\
border-radius:8px;text-decoration:none;text-align:center;font-weight:600}\
.button:hover{border-color:var(--accent)}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem;margin:1rem 0}\
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}\
table{width:100%;border-collapse:collapse;margin-top:.5rem;font-size:.95rem}\
th,td{text-align:left;padding:.4rem .25rem;border-top:1px solid var(--line)}\
th{color:var(--muted);font-weight:500}\
.yes{color:var(--ok)}.no{color:var(--no)}\
label{display:block;margin-top:1rem;color:var(--muted);font-size:.9rem}\
input{width:100%;margin:.25rem 0 .75rem;padding:.6rem;border:1px solid var(--line);\
border-radius:8px;background:var(--bg);color:var(--fg);\
font:1.3rem ui-monospace,SFMono-Regular,Menlo,monospace;letter-spacing:.15em;text-align:center}\
button.button{width:100%;background:none;color:var(--accent);font:inherit;font-weight:600;\
cursor:pointer}\
button.deny{color:var(--no)}\
footer{margin-top:1.5rem;color:var(--muted);font-size:.8rem}";

/// `text` with the five HTML-special characters replaced, safe in element content and in
/// quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `url` if it is an `http`/`https` URL or a relative one, else `#`: an `href` must never run
/// code (`javascript:`, `data:`, …). The result still needs [`escape`].
pub(crate) fn safe_href(url: &str) -> &str {
    let scheme_end = url.find([':', '/', '?', '#']);
    match scheme_end {
        Some(i) if url.as_bytes()[i] == b':' => {
            let scheme = &url[..i];
            if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
                url
            } else {
                "#"
            }
        }
        // No scheme: a path, query or fragment. Control characters are refused because
        // browsers strip them and may then see a scheme.
        _ if url.chars().any(char::is_control) => "#",
        _ => url,
    }
}

fn link(class: &str, url: &str, text: &str) -> String {
    format!(
        "<a class=\"{class}\" href=\"{}\">{}</a>",
        escape(safe_href(url)),
        escape(text)
    )
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<meta name=\"robots\" content=\"noindex\">\
<title>{title} · Sekisho</title><style>{STYLE}</style></head>\
<body><main>{body}<footer>Sekisho</footer></main></body></html>\n",
        title = escape(title),
    )
}

/// Signed in, but the route's policy does not let this identity through.
pub(crate) fn denied(
    signed_in_as: &str,
    route: &str,
    request_id: &str,
    logout_url: &str,
) -> String {
    let body = format!(
        "<h1>Not allowed here</h1>\
<p>You are signed in as <strong>{who}</strong>, but that account may not use \
<code>{route}</code>.</p>\
<p>If you have another account that is allowed, sign in with it. Otherwise ask whoever \
runs this service for access, and give them the request id below.</p>\
{switch}\
<p class=\"muted\">Request id: <code>{request_id}</code></p>",
        who = escape(signed_in_as),
        route = escape(route),
        switch = link("button", logout_url, "Sign in as someone else"),
        request_id = escape(request_id),
    );
    document("Not allowed", &body)
}

/// A page on another origin tried to open a WebSocket to a route (browsers do not show this to
/// the script, but someone may open the handshake's URL by hand).
pub(crate) fn cross_origin(origin: &str, route: &str, request_id: &str) -> String {
    let body = format!(
        "<h1>Not allowed from that page</h1>\
<p>A page on <code>{origin}</code> tried to open a WebSocket to <code>{route}</code>. Only the \
site itself, and the sites it names, may do that.</p>\
<p class=\"muted\">Request id: <code>{request_id}</code></p>",
        origin = escape(origin),
        route = escape(route),
        request_id = escape(request_id),
    );
    document("Not allowed", &body)
}

/// The login did not complete (the IdP refused, the state expired, …).
pub(crate) fn login_error(message: &str, retry_url: &str, request_id: &str) -> String {
    let body = format!(
        "<h1>Sign-in failed</h1>\
<p>{message}</p>\
{retry}\
<p class=\"muted\">Request id: <code>{request_id}</code></p>",
        message = escape(message),
        retry = link("button", retry_url, "Try again"),
        request_id = escape(request_id),
    );
    document("Sign-in failed", &body)
}

/// The login page when several identity providers are configured: `(display name, login URL)`.
pub(crate) fn choose_provider(providers: &[(&str, &str)]) -> String {
    let mut body = String::from("<h1>Sign in</h1><p>Choose how to sign in:</p>");
    for (name, url) in providers {
        body.push_str(&link("button", url, name));
    }
    if providers.is_empty() {
        body.push_str("<p class=\"muted\">No sign-in method is configured.</p>");
    }
    document("Sign in", &body)
}

/// One route on the `/.sekisho/me` page and whether the viewer may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteAccess {
    pub host: String,
    pub path: String,
    pub allowed: bool,
}

/// What `/.sekisho/me` shows about the viewer's session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MePage {
    pub email: String,
    pub subject: String,
    pub issuer: String,
    pub groups: Vec<String>,
    /// When the session ends, as text for people ("in 7 hours (18:20 UTC)").
    pub session_expires: String,
    /// When the session ends if unused, as text for people.
    pub idle_expires: String,
    pub routes: Vec<RouteAccess>,
}

/// `/.sekisho/me`: who the viewer is to Sekisho and where they may go.
pub(crate) fn me(page: &MePage) -> String {
    let mut body = String::from("<h1>Your Sekisho session</h1><dl>");
    let email = if page.email.is_empty() {
        "(none given)"
    } else {
        &page.email
    };
    for (label, value) in [
        ("Email", email),
        ("Subject", &page.subject),
        ("Identity provider", &page.issuer),
        ("Session ends", &page.session_expires),
        ("Ends if idle", &page.idle_expires),
    ] {
        let _ = write!(body, "<dt>{label}</dt><dd>{}</dd>", escape(value));
    }
    body.push_str("<dt>Groups</dt><dd>");
    if page.groups.is_empty() {
        body.push_str("(none)");
    } else {
        let groups: Vec<String> = page
            .groups
            .iter()
            .map(|g| format!("<code>{}</code>", escape(g)))
            .collect();
        body.push_str(&groups.join(", "));
    }
    body.push_str("</dd></dl>");

    if !page.routes.is_empty() {
        body.push_str(
            "<table><thead><tr><th>Host</th><th>Path</th><th>Access</th></tr></thead><tbody>",
        );
        for route in &page.routes {
            let (class, text) = if route.allowed {
                ("yes", "allowed")
            } else {
                ("no", "denied")
            };
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td><code>{}</code></td>\
<td class=\"{class}\">{text}</td></tr>",
                escape(&route.host),
                escape(&route.path),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str(&link("button", "/.sekisho/logout", "Sign out"));
    document("Your session", &body)
}

/// After logout. `at_provider`: the identity provider signed the person out too (it sent
/// them back here); `sign_in_url` offers signing in again.
pub(crate) fn signed_out(at_provider: bool, sign_in_url: Option<&str>) -> String {
    let mut body = String::from("<h1>Signed out</h1>");
    if at_provider {
        body.push_str(
            "<p>You are signed out of Sekisho and of your identity provider on this \
browser.</p>",
        );
    } else {
        body.push_str(
            "<p>You are signed out of Sekisho on this browser.</p>\
<p class=\"muted\">Your identity provider may still remember you; on a shared computer, sign \
out there too.</p>",
        );
    }
    if let Some(url) = sign_in_url {
        body.push_str(&link("button", url, "Sign in again"));
    }
    document("Signed out", &body)
}

/// The auth host's home for someone without a session.
pub(crate) fn not_signed_in(sign_in_url: &str) -> String {
    let body = format!(
        "<h1>Not signed in</h1><p>This is the sign-in page of the sites Sekisho guards. You \
are not signed in on this browser.</p>{}",
        link("button", sign_in_url, "Sign in")
    );
    document("Not signed in", &body)
}

/// A request the proxy answers with an error itself: what happened, in words, and the
/// request id to give whoever runs the service.
pub(crate) fn error(status: u16, title: &str, message: &str, request_id: &str) -> String {
    let body = format!(
        "<h1>{title}</h1><p>{message}</p>\
<p class=\"muted\">If this keeps happening, give whoever runs this service the request id \
below.</p><dl><dt>Status</dt><dd>{status}</dd><dt>Request id</dt><dd><code>{id}</code></dd></dl>",
        title = escape(title),
        message = escape(message),
        id = escape(request_id),
    );
    document(title, &body)
}

/// What the device page shows: the person signed in, the code (when the link carried one) and
/// a CSRF token for the form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DevicePage {
    pub signed_in_as: String,
    /// `XXXX-XXXX`, or empty for the person to type it.
    pub user_code: String,
    pub csrf: String,
    /// Where the form posts (a path on this origin).
    pub action: String,
    /// A line above the form, e.g. that the code in the link is unknown.
    pub notice: Option<String>,
}

/// The auth host's device page: approve or deny a `sekisho login` started elsewhere. Serve it
/// with [`FORM_CONTENT_SECURITY_POLICY`].
pub(crate) fn device_approval(page: &DevicePage) -> String {
    let notice = page
        .notice
        .as_deref()
        .map(|n| format!("<p class=\"no\">{}</p>", escape(n)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in the Sekisho command line</h1>\
<p>A <code>sekisho login</code> asks to act as <strong>{who}</strong>.</p>\
<p class=\"muted\">Approve only if you started it yourself and the code below is the one your \
terminal shows. Anyone holding that terminal can then reach what you can.</p>\
{notice}\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"user_code\">Code</label>\
<input id=\"user_code\" name=\"user_code\" value=\"{code}\" placeholder=\"XXXX-XXXX\" \
autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" maxlength=\"16\" required>\
<button class=\"button\" id=\"approve\" type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
<button class=\"button deny\" id=\"deny\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button>\
</form>",
        who = escape(&page.signed_in_as),
        action = escape(safe_href(&page.action)),
        csrf = escape(&page.csrf),
        code = escape(&page.user_code),
    );
    document("Approve a sign-in", &body)
}

/// After the person approved or denied a device login.
pub(crate) fn device_decided(approved: bool, signed_in_as: &str) -> String {
    let body = if approved {
        format!(
            "<h1>Approved</h1><p>The command line is signed in as <strong>{}</strong>. \
You can close this tab and go back to your terminal.</p>",
            escape(signed_in_as)
        )
    } else {
        "<h1>Denied</h1><p>Nothing was signed in. If you did not start this, someone may \
have tried to get you to approve their sign-in: tell whoever runs this service.</p>"
            .to_owned()
    };
    document(if approved { "Approved" } else { "Denied" }, &body)
}

/// The error body for clients that are not browsers (the CLI, scripts):
/// `{"error": status_text, "message": message, "login_url": …}` (`login_url` only when given).
pub(crate) fn json_error(status_text: &str, message: &str, login_url: Option<&str>) -> String {
    let mut body = serde_json::json!({
        "error": status_text,
        "message": message,
    });
    if let Some(url) = login_url {
        body["login_url"] = serde_json::Value::from(url);
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &str = "<script>alert(\"x&y\")</script>'";
    const NASTY_ESCAPED: &str = "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;";

    /// Fails when `page` holds unescaped markup from `NASTY`, or loads anything from elsewhere:
    /// once the links passed in are removed, no URL, `src` or stylesheet import may remain.
    fn assert_self_contained(page: &str, links: &[&str]) {
        assert!(!page.contains("<script"), "{page}");
        let mut rest = page.to_owned();
        for url in links {
            let escaped = format!("href=\"{}\"", escape(url));
            assert!(rest.contains(&escaped), "link {url} missing from {page}");
            rest = rest.replace(&escaped, "");
        }
        for forbidden in [
            "http://", "https://", "src=", "<link", "url(", "@import", "//",
        ] {
            assert!(!rest.contains(forbidden), "{forbidden} in {rest}");
        }
        assert!(page.contains("<meta name=\"viewport\""));
        assert!(page.contains("prefers-color-scheme:dark"));
    }

    #[test]
    fn escape_replaces_every_html_special_character() {
        assert_eq!(escape(NASTY), NASTY_ESCAPED);
        assert_eq!(escape("a & b"), "a &amp; b");
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("plain ünïcode 関所"), "plain ünïcode 関所");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn safe_href_keeps_web_and_relative_links_and_drops_script_urls() {
        for ok in [
            "https://auth.example.com/logout?x=1&y=2",
            "HTTP://a.example",
            "/.sekisho/logout",
            "?retry=1",
            "#top",
            "relative/path",
            "/a:b",
        ] {
            assert_eq!(safe_href(ok), ok);
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,<script>",
            "vbscript:x",
            "java\tscript:alert(1)",
            "\u{1}javascript:alert(1)",
        ] {
            assert_eq!(safe_href(bad), "#", "{bad:?}");
        }
    }

    #[test]
    fn the_denied_page_shows_who_where_and_the_request_id_escaped() {
        let logout = "https://auth.example.com/logout?rd=https%3A%2F%2Fapp&x=\"1\"";
        let page = denied(NASTY, "app.example.com/<admin>", "req-<1>&2", logout);
        assert!(page.contains(NASTY_ESCAPED));
        assert!(page.contains("app.example.com/&lt;admin&gt;"));
        assert!(page.contains("req-&lt;1&gt;&amp;2"));
        assert!(page.contains("Sign in as someone else"));
        assert_self_contained(&page, &[logout]);
    }

    #[test]
    fn the_cross_origin_page_shows_the_origin_route_and_request_id_escaped() {
        let page = cross_origin(NASTY, "app.example.com/<ws>", "req-<1>&2");
        assert!(page.contains(NASTY_ESCAPED));
        assert!(page.contains("app.example.com/&lt;ws&gt;"));
        assert!(page.contains("req-&lt;1&gt;&amp;2"));
        assert_self_contained(&page, &[]);
    }

    #[test]
    fn the_denied_page_refuses_a_script_logout_link() {
        let page = denied("ada@example.com", "app", "r1", "javascript:alert(1)");
        assert!(!page.contains("javascript:"));
        assert!(page.contains("href=\"#\""));
    }

    #[test]
    fn the_login_error_page_shows_the_message_and_a_retry_link_escaped() {
        let retry = "https://auth.example.com/login?rd=/'x'";
        let page = login_error(NASTY, retry, "req-9");
        assert!(page.contains(NASTY_ESCAPED));
        assert!(page.contains("req-9"));
        assert!(page.contains("Try again"));
        assert_self_contained(&page, &[retry]);
    }

    #[test]
    fn the_provider_page_lists_every_provider_escaped() {
        let google = "https://auth.example.com/login/google";
        let other = "/login/other?a=1&b=2";
        let page = choose_provider(&[("Google", google), (NASTY, other)]);
        assert!(page.contains(">Google</a>"));
        assert!(page.contains(NASTY_ESCAPED));
        assert!(page.contains("href=\"/login/other?a=1&amp;b=2\""));
        assert_self_contained(&page, &[google, other]);
        assert!(choose_provider(&[]).contains("No sign-in method"));
    }

    #[test]
    fn the_me_page_shows_identity_groups_and_routes_escaped() {
        let page = me(&MePage {
            email: "ada@example.com".into(),
            subject: NASTY.into(),
            issuer: "https://accounts.google.com".into(),
            groups: vec!["staff".into(), "<ops>".into()],
            session_expires: "in 7 hours".into(),
            idle_expires: "in 30 minutes".into(),
            routes: vec![
                RouteAccess {
                    host: "app.example.com".into(),
                    path: "/".into(),
                    allowed: true,
                },
                RouteAccess {
                    host: "admin.example.com".into(),
                    path: "/\"x\"".into(),
                    allowed: false,
                },
            ],
        });
        for shown in [
            "ada@example.com",
            NASTY_ESCAPED,
            "<code>staff</code>, <code>&lt;ops&gt;</code>",
            "in 7 hours",
            "in 30 minutes",
            "<code>app.example.com</code>",
            "<code>/&quot;x&quot;</code>",
            "class=\"yes\">allowed",
            "class=\"no\">denied",
        ] {
            assert!(page.contains(shown), "{shown} missing from {page}");
        }
        // The issuer is shown as text, not as a link: strip it and nothing external remains.
        let without_issuer = page.replace("https://accounts.google.com", "");
        assert_self_contained(&without_issuer, &[]);
    }

    #[test]
    fn the_me_page_says_when_there_is_no_email_or_group() {
        let page = me(&MePage::default());
        assert!(page.contains("(none given)"));
        assert!(page.contains("<dt>Groups</dt><dd>(none)</dd>"));
        assert!(!page.contains("<table>"));
    }

    #[test]
    fn the_signed_out_page_offers_signing_in_again_only_with_a_return_url() {
        let back = "https://app.example.com/?a=<b>";
        let page = signed_out(false, Some(back));
        assert!(page.contains("Sign in again"));
        assert!(page.contains("href=\"https://app.example.com/?a=&lt;b&gt;\""));
        assert_self_contained(&page, &[back]);
        let page = signed_out(false, None);
        assert!(!page.contains("Sign in again"));
        assert_self_contained(&page, &[]);
    }

    #[test]
    fn the_signed_out_page_says_whether_the_provider_signed_out_too() {
        let here = signed_out(false, None);
        assert!(here.contains("may still remember you"), "{here}");
        let both = signed_out(true, None);
        assert!(both.contains("and of your identity provider"), "{both}");
        assert!(!both.contains("may still remember you"), "{both}");
    }

    #[test]
    fn the_home_of_someone_never_signed_in_offers_a_sign_in_and_no_signed_out_text() {
        let page = not_signed_in("/.sekisho/login?rd=x");
        assert!(page.contains("Not signed in"));
        assert!(page.contains("href=\"/.sekisho/login?rd=x\""));
        assert!(!page.contains("Signed out"));
        assert_self_contained(&page, &[]);
    }

    #[test]
    fn error_pages_say_what_happened_and_name_the_request_id() {
        for (status, title) in [
            (400, "This request cannot be served"),
            (404, "Nothing here"),
            (502, "The service behind this address failed"),
            (503, "Not available right now"),
            (
                504,
                "The service behind this address did not answer in time",
            ),
        ] {
            let page = error(status, title, NASTY, "abc123");
            assert!(page.contains(&format!("<h1>{title}</h1>")), "{page}");
            assert!(page.contains("<code>abc123</code>"), "{page}");
            assert!(page.contains(&format!("<dd>{status}</dd>")), "{page}");
            assert!(page.contains(NASTY_ESCAPED), "{page}");
            assert_self_contained(&page, &[]);
        }
    }

    #[test]
    fn the_me_page_has_a_sign_out_link() {
        let page = me(&MePage::default());
        assert!(page.contains("href=\"/.sekisho/logout\""), "{page}");
    }

    #[test]
    fn the_device_page_shows_who_and_the_code_escaped_with_a_form_to_this_origin() {
        let page = device_approval(&DevicePage {
            signed_in_as: NASTY.into(),
            user_code: "BCDF-\"><x".into(),
            csrf: "tok\"en".into(),
            action: "/.sekisho/cli/device/approve".into(),
            notice: Some(NASTY.into()),
        });
        assert!(page.contains(NASTY_ESCAPED));
        assert!(page.contains("value=\"BCDF-&quot;&gt;&lt;x\""));
        assert!(page.contains("name=\"csrf\" value=\"tok&quot;en\""));
        assert!(page.contains("action=\"/.sekisho/cli/device/approve\""));
        assert!(page.contains("id=\"approve\"") && page.contains("id=\"deny\""));
        assert_self_contained(&page, &[]);
        let page = device_approval(&DevicePage {
            action: "javascript:alert(1)".into(),
            ..DevicePage::default()
        });
        assert!(!page.contains("javascript:"));
        assert!(FORM_CONTENT_SECURITY_POLICY.contains("form-action 'self'"));
        assert!(!FORM_CONTENT_SECURITY_POLICY.contains("script-src"));
    }

    #[test]
    fn the_device_decision_pages_say_what_happened() {
        let page = device_decided(true, NASTY);
        assert!(page.contains("Approved") && page.contains(NASTY_ESCAPED));
        assert_self_contained(&page, &[]);
        let page = device_decided(false, NASTY);
        assert!(page.contains("Denied") && !page.contains(NASTY_ESCAPED));
        assert_self_contained(&page, &[]);
    }

    #[test]
    fn json_errors_are_valid_json_with_the_login_url_only_when_given() {
        let body = json_error(
            "Unauthorized",
            NASTY,
            Some("https://auth.example.com/login"),
        );
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["error"], "Unauthorized");
        assert_eq!(value["message"], NASTY);
        assert_eq!(value["login_url"], "https://auth.example.com/login");

        let body = json_error("Forbidden", "no", None);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value.as_object().unwrap().len(), 2);
        assert!(value.get("login_url").is_none());
    }
}
