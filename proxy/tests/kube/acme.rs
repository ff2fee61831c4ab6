//! cert-manager's HTTP-01 solver Ingresses: answered on the plain-HTTP listener only.

use std::collections::BTreeMap;

use anyhow::ensure;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Answer, Gate, apply, until};

fn ingress(
    gate: &Gate,
    name: &str,
    host: &str,
    path: &str,
    path_type: &str,
    service: &str,
) -> Ingress {
    Ingress {
        metadata: gate.meta(name),
        spec: Some(IngressSpec {
            ingress_class_name: Some(gate.class.clone()),
            rules: Some(vec![IngressRule {
                host: Some(host.to_owned()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(path.to_owned()),
                        path_type: path_type.to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: service.to_owned(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

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
    let mut shop = ingress(&gate, "shop", &host, "/", "Prefix", "web");
    shop.metadata.annotations = Some(BTreeMap::from([(
        "sekisho.dev/access-policy".to_owned(),
        "public".to_owned(),
    )]));
    gate.tls_secret("shop-tls", &[&host]).await?;
    shop.spec.as_mut().unwrap().tls = Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
        hosts: Some(vec![host.clone()]),
        secret_name: Some("shop-tls".into()),
    }]);
    apply(&gate.api(), &shop).await?;
    let mut solver = ingress(
        &gate,
        "cm-acme-http-solver-x",
        &host,
        "/.well-known/acme-challenge/tok3n",
        "ImplementationSpecific",
        "solver",
    );
    solver.metadata.labels = Some(BTreeMap::from([(
        "acme.cert-manager.io/http01-solver".to_owned(),
        "true".to_owned(),
    )]));
    apply(&gate.api(), &solver).await?;

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
