//! Ingresses become routes, follow their edits and go away with them.

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DeleteParams;

use crate::harness::{Gate, apply, named, until};

/// An Ingress of `gate`'s class: `host` with `(path, pathType, service)` rules to each
/// Service's port named `http`, public.
pub(crate) fn ingress(
    gate: &Gate,
    name: &str,
    host: &str,
    paths: &[(&str, &str, &str)],
) -> Ingress {
    paths
        .iter()
        .fold(
            gate.site(name, host).policy("public"),
            |site, (path, kind, service)| site.path(path, kind, service, named("http")),
        )
        .build()
}

#[tokio::test]
async fn an_ingress_is_served_and_its_edits_and_its_deletion_follow() -> anyhow::Result<()> {
    let gate = Gate::start("ingress").await?;
    let _web = gate.backend("web").await?;
    let _api = gate.backend("api").await?;
    let host = format!("shop.{}.test", gate.namespace);
    gate.tls_secret("shop-tls", &[&host]).await?;
    let mut shop = ingress(&gate, "shop", &host, &[("/", "Prefix", "web")]);
    shop.spec.as_mut().unwrap().tls = Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
        hosts: Some(vec![host.clone()]),
        secret_name: Some("shop-tls".into()),
    }]);
    apply(&gate.api(), &shop).await?;

    let answer = until("the Ingress to be served", || async {
        let answer = gate.get(&host, "/cart").await?;
        ensure!(answer.status == StatusCode::OK, "{answer:?}");
        Ok(answer)
    })
    .await?;
    assert!(
        answer.body.starts_with("upstream: web\n"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("path: /cart\n"), "{}", answer.body);

    // An edit: /api goes to another Service; `Exact` means exactly.
    let paths = [("/", "Prefix", "web"), ("/api", "Exact", "api")];
    let mut edited = ingress(&gate, "shop", &host, &paths);
    edited.spec.as_mut().unwrap().tls = shop.spec.as_ref().unwrap().tls.clone();
    apply(&gate.api(), &edited).await?;
    until("the edit to be served", || async {
        let answer = gate.get(&host, "/api").await?;
        ensure!(answer.body.starts_with("upstream: api\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    let below = gate.get(&host, "/api/v1").await?;
    assert!(below.body.starts_with("upstream: web\n"), "{below:?}");

    // Deleted: the host is unknown again. (Another Ingress keeps naming the certificate, so
    // that the answer can be read.)
    let mut keeper = ingress(
        &gate,
        "keeper",
        &format!("other.{}", host),
        &[("/", "Prefix", "web")],
    );
    keeper.spec.as_mut().unwrap().tls = shop.spec.as_ref().unwrap().tls.clone();
    apply(&gate.api(), &keeper).await?;
    gate.api::<Ingress>()
        .delete("shop", &DeleteParams::default())
        .await?;
    until("the deletion to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.status == StatusCode::NOT_FOUND, "{answer:?}");
        Ok(answer)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_ingress_of_another_class_is_not_served_and_a_conflict_is_told_on_the_loser()
-> anyhow::Result<()> {
    let gate = Gate::start("classes").await?;
    let _web = gate.backend("web").await?;
    let _api = gate.backend("api").await?;
    let host = format!("app.{}.test", gate.namespace);
    gate.tls_secret("app-tls", &[&host]).await?;
    let with_tls = |mut ingress: Ingress| {
        ingress.spec.as_mut().unwrap().tls =
            Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
                hosts: Some(vec![host.clone()]),
                secret_name: Some("app-tls".into()),
            }]);
        ingress
    };
    let older = with_tls(ingress(&gate, "older", &host, &[("/", "Prefix", "web")]));
    apply(&gate.api(), &older).await?;
    until("the older Ingress to be served", || async {
        let answer = gate.get(&host, "/").await?;
        ensure!(answer.body.starts_with("upstream: web\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    // creationTimestamp has a resolution of a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer = with_tls(ingress(
        &gate,
        "newer",
        &host,
        &[("/", "Prefix", "api"), ("/b", "Prefix", "api")],
    ));
    apply(&gate.api(), &newer).await?;
    let mut other = ingress(&gate, "other-class", &host, &[("/c", "Prefix", "api")]);
    other.spec.as_mut().unwrap().ingress_class_name = Some("someone-else".into());
    apply(&gate.api(), &other).await?;

    until("the newer Ingress's own path to be served", || async {
        let answer = gate.get(&host, "/b").await?;
        ensure!(answer.body.starts_with("upstream: api\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    let root = gate.get(&host, "/").await?;
    assert!(
        root.body.starts_with("upstream: web\n"),
        "the older keeps /: {root:?}"
    );
    let c = gate.get(&host, "/c").await?;
    assert!(
        c.body.starts_with("upstream: web\n"),
        "another class's path is not served: {c:?}"
    );
    until("an Event on the newer Ingress", || async {
        let reasons = gate.event_reasons("newer").await?;
        ensure!(reasons.iter().any(|r| r == "PathConflict"), "{reasons:?}");
        Ok(crate::harness::Answer::none())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_rule_without_a_host_serves_the_hosts_no_other_rule_names() -> anyhow::Result<()> {
    let gate = Gate::start("hostless").await?;
    let _web = gate.backend("web").await?;
    let _api = gate.backend("api").await?;
    let named = format!("named.{}.test", gate.namespace);
    let other = format!("anything.{}.test", gate.namespace);
    // The harness's default certificate covers both names.
    gate.tls_secret("default-tls", &[&named, &other]).await?;
    let mut any = ingress(&gate, "any", "placeholder", &[("/", "Prefix", "web")]);
    any.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = None;
    apply(&gate.api(), &any).await?;
    apply(
        &gate.api(),
        &ingress(&gate, "named", &named, &[("/only", "Exact", "api")]),
    )
    .await?;
    until("the rule without a host to serve another host", || async {
        let answer = gate.get(&other, "/x").await?;
        ensure!(answer.body.starts_with("upstream: web\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    until("the named host to be served", || async {
        let answer = gate.get(&named, "/only").await?;
        ensure!(answer.body.starts_with("upstream: api\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;
    // A host with rules of its own does not fall through to the catch-all.
    let answer = gate.get(&named, "/x").await?;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    Ok(())
}
