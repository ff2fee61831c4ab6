//! `status.loadBalancer.ingress` of the Ingresses served: where clients reach the proxy, from
//! `--publish-address` or the `--publish-service`'s load balancer. Only one replica writes it:
//! the holder of a Lease (`sekisho-lease`), renewed while it lives and taken over when it
//! expires.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

use super::object::Key;

/// Where the Ingresses say the proxy is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Publish {
    /// No status is written.
    #[default]
    Nothing,
    /// These IP addresses or host names.
    Addresses(Vec<String>),
    /// The load balancer addresses of this Service.
    Service(Key),
}

/// The `loadBalancer.ingress` entries to publish; `None` when there is nothing to say yet.
pub(crate) fn addresses(
    publish: &Publish,
    service: impl Fn(&Key) -> Option<Arc<Service>>,
) -> Option<Vec<IngressLoadBalancerIngress>> {
    let entry = |address: &str| {
        let ip = address.parse::<IpAddr>().is_ok();
        IngressLoadBalancerIngress {
            ip: ip.then(|| address.to_owned()),
            hostname: (!ip).then(|| address.to_owned()),
            ports: None,
        }
    };
    match publish {
        Publish::Nothing => None,
        Publish::Addresses(list) => Some(list.iter().map(|a| entry(a)).collect()),
        Publish::Service(key) => {
            let found = service(key)?;
            let balanced: Vec<IngressLoadBalancerIngress> = found
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().or(i.hostname.as_deref()))
                .map(entry)
                .collect();
            if !balanced.is_empty() {
                return Some(balanced);
            }
            let external: Vec<IngressLoadBalancerIngress> = found
                .spec
                .as_ref()
                .and_then(|s| s.external_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|a| entry(a))
                .collect();
            Some(external)
        }
    }
}

/// Writes `addresses` into each served Ingress whose status says otherwise.
pub(crate) async fn write(
    client: &Client,
    ingresses: &[Arc<Ingress>],
    served: &[Key],
    addresses: &[IngressLoadBalancerIngress],
) {
    for ingress in ingresses {
        let Some(key) = Key::of(&ingress.metadata) else {
            continue;
        };
        if !served.contains(&key) {
            continue;
        }
        let current = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        if current == addresses {
            continue;
        }
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": addresses } } });
        let api = Api::<Ingress>::namespaced(client.clone(), &key.namespace);
        if let Err(error) = api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(ingress = %key, error = %crate::error_chain(&error), "cannot write an Ingress's status");
        }
    }
}

/// Holds the Lease `key` while it can ([`sekisho_lease::hold`]), telling `leader` whether it
/// does, until `stop`.
pub(crate) async fn lead(
    client: Client,
    key: Key,
    identity: String,
    leader: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
    stop: watch::Receiver<bool>,
) {
    let api = Api::<Lease>::namespaced(client, &key.namespace);
    let (holds, mut held) = watch::channel(false);
    let holding = tokio::spawn(sekisho_lease::hold(api, key.name, identity, holds, stop));
    while held.changed().await.is_ok() {
        let now = *held.borrow_and_update();
        if now != leader.swap(now, Ordering::Relaxed) {
            // A new holder writes the status of everything at once.
            changed.notify_one();
        }
    }
    let _ = holding.await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    use super::*;

    #[test]
    fn addresses_come_from_the_flag_or_the_services_load_balancer() {
        let none = |_: &Key| None;
        assert_eq!(addresses(&Publish::Nothing, none), None);
        let given = addresses(
            &Publish::Addresses(vec![
                "192.0.2.7".into(),
                "gate.example.com".into(),
                "2001:db8::1".into(),
            ]),
            none,
        )
        .unwrap();
        assert_eq!(given[0].ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(given[1].hostname.as_deref(), Some("gate.example.com"));
        assert_eq!(given[2].ip.as_deref(), Some("2001:db8::1"));

        let key = Key::new("sekisho", "gate");
        assert_eq!(addresses(&Publish::Service(key.clone()), none), None);
        let service = Arc::new(Service {
            spec: Some(ServiceSpec {
                external_ips: Some(vec!["198.51.100.1".into()]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("203.0.113.9".into()),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        });
        let found = addresses(&Publish::Service(key.clone()), |_| Some(service.clone())).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ip.as_deref(), Some("203.0.113.9"));
        let mut pending = (*service).clone();
        pending.status = None;
        let pending = Arc::new(pending);
        let found = addresses(&Publish::Service(key), |_| Some(pending.clone())).unwrap();
        assert_eq!(found[0].ip.as_deref(), Some("198.51.100.1"));
    }
}
