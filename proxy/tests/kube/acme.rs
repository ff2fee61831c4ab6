//! cert-manager's HTTP-01 solver Ingresses: answered on the plain-HTTP listener only.

use anyhow::ensure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Answer, Gate, apply, named, until};

/// A plain-HTTP GET; the status line and the whole answer.
async fn plain(gate: &Gate, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(gate.http).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let status = text.split(' ').nth(1).unwrap_or("0").parse()?;
    Ok((status, text))
}

#[tokio::test]
async fn a_solver_ingress_is_reachable_without_login_only_on_its_path_over_plain_http()
-> anyhow::Result<()> {
    let gate = Gate::start("acme").await?;
    let _web = gate.backend("web").await?;
    let _solver = gate.backend("solver").await?;
    let host = format!("shop.{}.test", gate.namespace);
    gate.tls_secret("shop-tls", &[&host]).await?;
    let shop = gate
        .site("shop", &host)
        .policy("public")
        .tls("shop-tls")
        .path("/", "Prefix", "web", named("http"));
    apply(&gate.api(), &shop.build()).await?;
    let solver = gate.site("cm-acme-http-solver-x", &host).solver().path(
        "/.well-known/acme-challenge/tok3n",
        "ImplementationSpecific",
        "solver",
        named("http"),
    );
    apply(&gate.api(), &solver.build()).await?;

    until("the challenge to be answered", || async {
        let (status, text) = plain(&gate, &host, "/.well-known/acme-challenge/tok3n").await?;
        ensure!(
            status == 200 && text.contains("upstream: solver\n"),
            "{text}"
        );
        Ok(Answer::none())
    })
    .await?;
    let (status, text) = plain(&gate, &host, "/cart").await?;
    assert_eq!(status, 308, "{text}");
    let (status, text) = plain(&gate, &host, "/.well-known/acme-challenge/../../cart").await?;
    assert_eq!(status, 308, "{text}");
    let answer = until("the certificate to be served", || async {
        gate.get(&host, "/.well-known/acme-challenge/tok3n").await
    })
    .await?;
    assert!(
        answer.body.starts_with("upstream: web\n"),
        "{}",
        answer.body
    );
    Ok(())
}
