//! One path for every decision (issue 12): every spelling trick that reads one path to the
//! proxy and another to the upstream, from every route a caller can pass into every route it
//! cannot, over HTTP/1.1 and HTTP/2, against a real nginx that serves the protected files.
//! nginx logs each request's case and its own reading of the path (`$uri`), so "not reached"
//! is checked where it matters: at the upstream.

use std::collections::BTreeMap;

use sekisho_testkit::Seen;

use crate::harness::{GATE, GATE_VIA_AGENT, Site, SiteOptions, id_token};

const BOB: &str = "bob@uniqe.example";

/// What nginx serves. Every protected file's body starts with `SECRET`.
const FILES: &[(&str, &str)] = &[
    ("public/index", "PUBLIC"),
    ("protected/x", "SECRET protected"),
    ("admin/secret", "SECRET admin"),
    ("api/data", "SECRET api"),
    ("hooks/github", "SECRET webhook"),
    ("ws", "SECRET websocket"),
    (".sekisho/me", "SECRET own page"),
    (".sekisho/login", "SECRET own page"),
];

/// Ways to write "from `{e}` go to `{t}`" that a proxy and nginx may read differently.
const TRICKS: &[&str] = &[
    "{e}/../{t}",
    "{e}/./../{t}",
    "{e}/x/../../{t}",
    "{e}/%2e%2e/{t}",
    "{e}/%2E%2E/{t}",
    "{e}/.%2e/{t}",
    "{e}/%2e./{t}",
    "{e}/..%2f{t}",
    "{e}/..%2F{t}",
    "{e}%2f..%2f{t}",
    "{e}/%2e%2e%2f{t}",
    "{e}/%252e%252e/{t}",
    "{e}/%252e%252e%252f{t}",
    "{e}/..%252f{t}",
    "{e}/..\\{t}",
    "{e}\\..\\{t}",
    "{e}/%5c..%5c{t}",
    "{e}/..%5c{t}",
    "{e}/..;/{t}",
    "{e}/..;x=1/{t}",
    "{e}/.;/../{t}",
    "{e};/../{t}",
    "{e}//../{t}",
    "{e}/%c0%ae%c0%ae/{t}",
    "{e}/..%c0%af{t}",
    "{e}/%u002e%u002e/{t}",
    "{e}/..%00/{t}",
    "{e}/..%0d%0a/{t}",
    "{e}/..%09/{t}",
    "/{t}",
    "//{t}",
    "/./{t}",
    "{e}/..//{t}",
];

/// Who tries: their credentials, the route they may pass, and the routes they may not.
struct Caller {
    name: &'static str,
    host: &'static str,
    /// The prefix of a route this caller passes.
    entry: &'static str,
    headers: Vec<(&'static str, String)>,
    /// Files (as nginx's `$uri`) this caller must never reach.
    forbidden: &'static [&'static str],
}

#[tokio::test]
async fn no_path_trick_reaches_a_route_its_caller_may_not_pass_over_http1_or_http2()
-> anyhow::Result<()> {
    let site = Site::start(SiteOptions {
        nginx: Some(FILES.to_vec()),
        ..SiteOptions::default()
    })
    .await?;
    let _agent = site.start_agent().await?;
    let bob_on_gate = site.login_on(GATE, BOB).await?;
    let bob_token = id_token(&site.idp, "sekisho", BOB).await?;
    let nginx = site.nginx.as_ref().expect("the site runs nginx");

    let anonymous_targets: &[&str] = &[
        "/protected/x",
        "/admin/secret",
        "/api/data",
        "/hooks/github",
        "/ws",
        "/.sekisho/me",
        "/.sekisho/login",
    ];
    let callers = [
        Caller {
            name: "anonymous, from the public route",
            host: GATE,
            entry: "/public",
            headers: vec![],
            forbidden: anonymous_targets,
        },
        Caller {
            name: "anonymous WebSocket handshake, from the public route",
            host: GATE,
            entry: "/public",
            headers: vec![
                ("connection", "Upgrade".into()),
                ("upgrade", "websocket".into()),
                ("sec-websocket-version", "13".into()),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ],
            forbidden: anonymous_targets,
        },
        Caller {
            name: "a bearer token, from the bearer route",
            host: GATE,
            entry: "/api",
            headers: vec![("authorization", format!("Bearer {bob_token}"))],
            forbidden: &[
                "/protected/x",
                "/admin/secret",
                "/hooks/github",
                "/ws",
                "/.sekisho/me",
            ],
        },
        Caller {
            name: "a signed-in staff member, from the staff route",
            host: GATE,
            entry: "/protected",
            headers: vec![("cookie", format!("__Host-sekisho={bob_on_gate}"))],
            forbidden: &["/admin/secret", "/hooks/github", "/.sekisho/me"],
        },
        Caller {
            name: "anonymous, from the public route of an agent upstream",
            host: GATE_VIA_AGENT,
            entry: "/public",
            headers: vec![],
            forbidden: &["/protected/x", "/.sekisho/me"],
        },
    ];

    // Case id -> what that request may not reach.
    let mut cases: BTreeMap<String, (&Caller, String)> = BTreeMap::new();
    let mut leaks = Vec::new();
    for caller in &callers {
        for target in caller.forbidden {
            for trick in TRICKS {
                let path = trick
                    .replace("{e}", caller.entry)
                    .replace("{t}", target.trim_start_matches('/'));
                for http2 in [false, true] {
                    let case = format!("{}", cases.len());
                    let mut headers: Vec<(&str, &str)> = vec![("x-test-case", case.as_str())];
                    // HTTP/2 has no connection-level headers (RFC 9113 §8.2.2).
                    let upgrade = caller.headers.iter().any(|(n, _)| *n == "upgrade");
                    if !(http2 && upgrade) {
                        headers.extend(caller.headers.iter().map(|(n, v)| (*n, v.as_str())));
                    }
                    let reply = site.get_target(caller.host, &path, &headers, http2).await;
                    let reply = match reply {
                        Ok(reply) => reply,
                        // A client library refusing to send it is not a leak; anything the
                        // proxy answers is checked below and at nginx.
                        Err(error) => {
                            eprintln!("{path} (h2: {http2}) not sent: {error:#}");
                            continue;
                        }
                    };
                    if reply.body.contains("SECRET") {
                        leaks.push(format!(
                            "{}: {path} (h2: {http2}) answered with a protected file: {reply}",
                            caller.name
                        ));
                    }
                    cases.insert(case, (caller, format!("{path} (h2: {http2})")));
                }
            }
        }
    }
    assert!(cases.len() > 500, "only {} cases ran", cases.len());

    // At the upstream: no case reached a file its caller may not pass.
    let seen = nginx.seen();
    for Seen { case, uri } in &seen {
        let Some((caller, sent)) = cases.get(case) else {
            continue;
        };
        if caller.forbidden.contains(&uri.as_str()) {
            leaks.push(format!("{}: {sent} reached nginx as {uri}", caller.name));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );

    // The positive side: each caller does reach what it may, through the same proxy, so the
    // refusals above are decisions and not a broken site.
    let bob_cookie = format!("__Host-sekisho={bob_on_gate}");
    let bearer = format!("Bearer {bob_token}");
    for (host, path, headers, body) in [
        (GATE, "/public/index", vec![], "PUBLIC"),
        (GATE, "/public/./x/../index", vec![], "PUBLIC"),
        (
            GATE,
            "/protected/x",
            vec![("cookie", bob_cookie.as_str())],
            "SECRET protected",
        ),
        (
            GATE,
            "/api/data",
            vec![("authorization", bearer.as_str())],
            "SECRET api",
        ),
        (GATE_VIA_AGENT, "/public/index", vec![], "PUBLIC"),
    ] {
        for http2 in [false, true] {
            let reply = site.get_target(host, path, &headers, http2).await?;
            assert_eq!(reply.body, body, "{host}{path} (h2: {http2}): {reply}");
        }
    }
    Ok(())
}
