//! Tenants: the namespace that claimed a host first keeps it; another namespace's Ingress for
//! it is refused with an Event until a SharedHost lets that namespace in.

use std::collections::BTreeSet;

use anyhow::ensure;
use http::StatusCode;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::IngressTLS;
use kube::api::{Api, ObjectMeta};
use sekisho_api::{SharedHost, SharedHostSpec};

use crate::harness::{Answer, Gate, apply, until};
use crate::ingress::ingress;

#[tokio::test]
async fn another_namespace_cannot_take_over_a_host_unless_it_is_shared() -> anyhow::Result<()> {
    let gate = Gate::start("owner").await?;
    let web = gate.backend("web").await?;
    let host = format!("shop.{}.test", gate.namespace);
    gate.tls_secret("shop-tls", &[&host]).await?;
    let tls = Some(vec![IngressTLS {
        hosts: Some(vec![host.clone()]),
        secret_name: Some("shop-tls".into()),
    }]);
    let mut shop = ingress(&gate, "shop", &host, &[("/", "Prefix", "web")]);
    shop.spec.as_mut().unwrap().tls = tls;
    apply(&gate.api(), &shop).await?;
    until("the owner's site to be served", || async {
        let answer = gate.get(&host, "/admin").await?;
        ensure!(answer.body.starts_with("upstream: web\n"), "{answer:?}");
        Ok(answer)
    })
    .await?;

    // Another tenant, with a Service of its own and an Ingress for the same host.
    let env = kube_testenv::TestEnv::shared().await?;
    let other = env.namespace("intruder").await?;
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(other.clone()),
        ..ObjectMeta::default()
    };
    let service = Service {
        metadata: meta("evil"),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    apply(&Api::namespaced(gate.client.clone(), &other), &service).await?;
    let mut slice_meta = meta("evil-slice");
    slice_meta.labels = Some(
        [("kubernetes.io/service-name".to_owned(), "evil".to_owned())]
            .into_iter()
            .collect(),
    );
    let slice = EndpointSlice {
        metadata: slice_meta,
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![web.addr.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(web.addr.port())),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    };
    apply(&Api::namespaced(gate.client.clone(), &other), &slice).await?;
    let mut takeover = ingress(&gate, "takeover", &host, &[("/admin", "Exact", "evil")]);
    takeover.metadata.namespace = Some(other.clone());
    apply(&Api::namespaced(gate.client.clone(), &other), &takeover).await?;

    let events = || async {
        let list =
            Api::<k8s_openapi::api::core::v1::Event>::namespaced(gate.client.clone(), &other)
                .list(&kube::api::ListParams::default().fields("involvedObject.name=takeover"))
                .await?;
        Ok::<_, anyhow::Error>(
            list.items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect::<Vec<_>>(),
        )
    };
    until("the takeover to be refused with an Event", || async {
        let reasons = events().await?;
        ensure!(
            reasons.iter().any(|r| r == "HostOwnedElsewhere"),
            "{reasons:?}"
        );
        Ok(Answer::none())
    })
    .await?;
    let answer = gate.get(&host, "/admin").await?;
    assert!(answer.body.contains("path: /admin"), "{answer:?}");
    let seen = web.received_at("/admin").len();

    // Shared: the other namespace may add its path.
    let shared = SharedHost::new(
        &format!("shop-{}", gate.namespace),
        SharedHostSpec {
            host: host.clone(),
            namespaces: BTreeSet::from([other.clone()]).into_iter().collect(),
        },
    );
    apply(&Api::<SharedHost>::all(gate.client.clone()), &shared).await?;
    until(
        "the shared host to serve the other namespace's path",
        || async {
            let answer = gate.get(&host, "/admin").await?;
            ensure!(answer.status == StatusCode::OK, "{answer:?}");
            ensure!(web.received_at("/admin").len() > seen, "not routed yet");
            Ok(answer)
        },
    )
    .await?;
    Ok(())
}
