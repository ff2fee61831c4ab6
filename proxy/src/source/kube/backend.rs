//! A Service port of an Ingress backend, as the upstream it becomes: the addresses of the
//! Service's EndpointSlices for that port (ready ones; serving ones while terminating when
//! nothing else is left), or the `ExternalName`; the protocol from the port's `appProtocol`.
//! Pure: the objects come in, an [`UpstreamConfig`] or the reason there is none goes out.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::ServiceBackendPort;

use crate::config::upstream::Endpoint;
use crate::config::{Ejection, UpstreamConfig, UpstreamProtocol, UpstreamTls};

/// Why a backend has no upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("the Service {0} does not exist")]
    NoService(String),
    #[error("the Service {service} has no port {port}")]
    NoPort { service: String, port: String },
    #[error("the backend names neither a port number nor a port name")]
    NoPortGiven,
    #[error("the ExternalName Service {service} has no port {port} and a number is needed")]
    ExternalNameNeedsPort { service: String, port: String },
    #[error("the ExternalName `{0}` is not a DNS name")]
    BadExternalName(String),
}

/// The upstream for `port` of `service`, with the endpoints of its `slices` (those labelled
/// `kubernetes.io/service-name` with the Service's name; any order).
pub(crate) fn upstream(
    service: &Service,
    port: &ServiceBackendPort,
    slices: &[&EndpointSlice],
) -> Result<UpstreamConfig, BackendError> {
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let label = format!("{namespace}/{name}");
    let spec = service.spec.clone().unwrap_or_default();
    let wanted = port_label(port)?;
    let service_port = spec.ports.as_deref().unwrap_or_default().iter().find(|p| {
        port.number.is_some_and(|n| p.port == n)
            || port
                .name
                .as_deref()
                .is_some_and(|n| p.name.as_deref() == Some(n))
    });
    let (scheme, protocol) = protocol_of(service_port);
    if spec.type_.as_deref() == Some("ExternalName") {
        let external = spec.external_name.unwrap_or_default();
        let external = external.trim_end_matches('.');
        if !crate::config::problem::is_dns_name(external) {
            return Err(BackendError::BadExternalName(external.to_owned()));
        }
        let number = port
            .number
            .or(service_port.map(|p| p.port))
            .ok_or_else(|| BackendError::ExternalNameNeedsPort {
                service: label.clone(),
                port: wanted.clone(),
            })?;
        let endpoint = endpoint(scheme, &format!("{external}:{number}"))?;
        return Ok(config(vec![endpoint], protocol, scheme, Some(external)));
    }
    let service_port = service_port.ok_or(BackendError::NoPort {
        service: label,
        port: wanted,
    })?;
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue; // FQDN slices are deprecated and name no address to dial
        }
        let Some(number) = slice_port(slice, service_port) else {
            continue;
        };
        for found in slice.endpoints.iter().flatten() {
            let list = match state(found) {
                State::Ready => &mut ready,
                State::ServingWhileTerminating => &mut serving,
                State::Out => continue,
            };
            for address in &found.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    list.push((ip, number));
                }
            }
        }
    }
    let mut chosen = if ready.is_empty() { serving } else { ready };
    chosen.sort();
    chosen.dedup();
    let endpoints = chosen
        .into_iter()
        .map(|(ip, port)| {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            endpoint(scheme, &format!("{host}:{port}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let server_name = format!(
        "{}.{}.svc",
        service.metadata.name.as_deref().unwrap_or_default(),
        service.metadata.namespace.as_deref().unwrap_or_default()
    );
    Ok(config(endpoints, protocol, scheme, Some(&server_name)))
}

/// How a backend names its port, for messages and upstream names.
pub(crate) fn port_label(port: &ServiceBackendPort) -> Result<String, BackendError> {
    match (&port.number, &port.name) {
        (Some(number), _) => Ok(number.to_string()),
        (None, Some(name)) if !name.is_empty() => Ok(name.clone()),
        _ => Err(BackendError::NoPortGiven),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The scheme and protocol a Service port's `appProtocol` asks for: `kubernetes.io/h2c` is
/// HTTP/2 with prior knowledge, `https` (or `kubernetes.io/wss`) is TLS, anything else
/// (`http`, `kubernetes.io/ws`, none) is HTTP/1.1.
fn protocol_of(port: Option<&ServicePort>) -> (Scheme, UpstreamProtocol) {
    match port.and_then(|p| p.app_protocol.as_deref()) {
        Some("kubernetes.io/h2c") => (Scheme::Http, UpstreamProtocol::Http2),
        Some("https" | "kubernetes.io/wss") => (Scheme::Https, UpstreamProtocol::Auto),
        _ => (Scheme::Http, UpstreamProtocol::Auto),
    }
}

fn endpoint(scheme: Scheme, authority: &str) -> Result<Endpoint, BackendError> {
    let scheme = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    Endpoint::try_from(format!("{scheme}://{authority}")).map_err(BackendError::BadExternalName)
}

fn config(
    endpoints: Vec<Endpoint>,
    protocol: UpstreamProtocol,
    scheme: Scheme,
    server_name: Option<&str>,
) -> UpstreamConfig {
    let tls = match scheme {
        Scheme::Https => UpstreamTls {
            server_name: server_name.map(str::to_owned),
            ..UpstreamTls::default()
        },
        Scheme::Http => UpstreamTls::default(),
    };
    UpstreamConfig {
        endpoints,
        protocol,
        connect_timeout: crate::config::upstream::default_connect_timeout(),
        response_header_timeout: crate::config::upstream::default_response_header_timeout(),
        tls,
        ejection: Ejection::default(),
        agent: None,
    }
}

/// The port number a slice gives for the Service port: the slice's port of the same name
/// (both unnamed when the Service has one port).
fn slice_port(slice: &EndpointSlice, service_port: &ServicePort) -> Option<u16> {
    let wanted = service_port.name.as_deref().unwrap_or_default();
    slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref().unwrap_or_default() == wanted)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

enum State {
    Ready,
    ServingWhileTerminating,
    Out,
}

/// `ready` absent means ready (the API's convention); `serving` likewise.
fn state(endpoint: &SliceEndpoint) -> State {
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    if conditions.ready.unwrap_or(true) {
        return State::Ready;
    }
    if conditions.serving.unwrap_or(false) && conditions.terminating.unwrap_or(false) {
        return State::ServingWhileTerminating;
    }
    State::Out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    use super::*;

    fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn port(name: Option<&str>, number: i32, app_protocol: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            port: number,
            app_protocol: app_protocol.map(str::to_owned),
            ..ServicePort::default()
        }
    }

    /// An endpoint: its address and its `ready`, `serving` and `terminating` conditions.
    type Row<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

    fn slice(
        address_type: &str,
        ports: &[(Option<&str>, i32)],
        endpoints: &[Row<'_>],
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|&(address, ready, serving, terminating)| SliceEndpoint {
                        addresses: vec![address.into()],
                        conditions: Some(EndpointConditions {
                            ready,
                            serving,
                            terminating,
                        }),
                        ..SliceEndpoint::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|&(name, port)| EndpointPort {
                        name: name.map(str::to_owned),
                        port: Some(port),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            metadata: ObjectMeta::default(),
        }
    }

    fn by_number(n: i32) -> ServiceBackendPort {
        ServiceBackendPort {
            number: Some(n),
            name: None,
        }
    }

    fn labels(config: &UpstreamConfig) -> Vec<String> {
        config.endpoints.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ready_endpoints_of_both_families_are_the_upstream_and_unready_ones_are_not() {
        let svc = service(vec![port(Some("http"), 80, None)]);
        let v4 = slice(
            "IPv4",
            &[(Some("http"), 8080)],
            &[
                ("10.0.0.2", Some(true), None, None),
                ("10.0.0.1", None, None, None),
                ("10.0.0.3", Some(false), Some(false), None),
            ],
        );
        let v6 = slice(
            "IPv6",
            &[(Some("http"), 8080)],
            &[("fd00::1", Some(true), None, None)],
        );
        let fqdn = slice(
            "FQDN",
            &[(Some("http"), 8080)],
            &[("example.com", None, None, None)],
        );
        let up = upstream(&svc, &by_number(80), &[&v4, &v6, &fqdn]).unwrap();
        assert_eq!(
            labels(&up),
            [
                "http://10.0.0.1:8080",
                "http://10.0.0.2:8080",
                "http://[fd00::1]:8080"
            ]
        );
        assert_eq!(up.protocol, UpstreamProtocol::Auto);
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_nothing_is_ready() {
        let svc = service(vec![port(None, 80, None)]);
        let draining = slice(
            "IPv4",
            &[(None, 80)],
            &[("10.0.0.9", Some(false), Some(true), Some(true))],
        );
        let up = upstream(&svc, &by_number(80), &[&draining]).unwrap();
        assert_eq!(labels(&up), ["http://10.0.0.9:80"]);
        let fresh = slice(
            "IPv4",
            &[(None, 80)],
            &[("10.0.0.1", Some(true), None, None)],
        );
        let up = upstream(&svc, &by_number(80), &[&draining, &fresh]).unwrap();
        assert_eq!(labels(&up), ["http://10.0.0.1:80"]);
        let none = upstream(&svc, &by_number(80), &[]).unwrap();
        assert!(none.endpoints.is_empty());
    }

    #[test]
    fn a_port_is_found_by_name_or_number_and_its_app_protocol_picks_the_protocol() {
        let svc = service(vec![
            port(Some("grpc"), 9000, Some("kubernetes.io/h2c")),
            port(Some("tls"), 443, Some("https")),
        ]);
        let s = slice(
            "IPv4",
            &[(Some("grpc"), 9090), (Some("tls"), 8443)],
            &[("10.0.0.1", None, None, None)],
        );
        let grpc = ServiceBackendPort {
            name: Some("grpc".into()),
            number: None,
        };
        let up = upstream(&svc, &grpc, &[&s]).unwrap();
        assert_eq!(labels(&up), ["http://10.0.0.1:9090"]);
        assert_eq!(up.protocol, UpstreamProtocol::Http2);
        let up = upstream(&svc, &by_number(443), &[&s]).unwrap();
        assert_eq!(labels(&up), ["https://10.0.0.1:8443"]);
        assert_eq!(up.tls.server_name.as_deref(), Some("web.shop.svc"));
        assert_eq!(
            upstream(&svc, &by_number(81), &[&s]).unwrap_err(),
            BackendError::NoPort {
                service: "shop/web".into(),
                port: "81".into()
            }
        );
    }

    #[test]
    fn an_external_name_service_is_dialled_by_its_name() {
        let mut svc = service(vec![port(Some("http"), 80, None)]);
        let spec = svc.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("db.example.com.".into());
        let up = upstream(&svc, &by_number(8080), &[]).unwrap();
        assert_eq!(labels(&up), ["http://db.example.com:8080"]);
        let named = ServiceBackendPort {
            name: Some("http".into()),
            number: None,
        };
        assert_eq!(
            labels(&upstream(&svc, &named, &[]).unwrap()),
            ["http://db.example.com:80"]
        );
        svc.spec.as_mut().unwrap().external_name = Some("bad name".into());
        assert!(matches!(
            upstream(&svc, &by_number(80), &[]),
            Err(BackendError::BadExternalName(_))
        ));
    }
}
