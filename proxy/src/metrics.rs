//! Prometheus metrics, served in the OpenMetrics text format on the admin listener only.
//!
//! Label values that come from requests are bounded: methods outside the standard set count as
//! `OTHER`, statuses as classes, and routes are the configured route names.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value shared with the routing snapshot, so recording a metric allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Name,
    pub method: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: Name,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: Name,
    pub endpoint: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertificateLabels {
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub endpoint_ejections: Family<EndpointLabels, Counter>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub tls_handshakes: Family<ResultLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sekisho");
        let requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status class",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.5, 12))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving a request to sending its response head",
            request_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by upstream and kind",
            upstream_errors.clone(),
        );
        let endpoint_ejections = Family::default();
        registry.register(
            "upstream_endpoint_ejections",
            "Endpoints taken out of rotation after consecutive failures",
            endpoint_ejections.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections currently open, by listener",
            open_connections.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients by result",
            tls_handshakes.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let certificate_reloads = Family::default();
        registry.register(
            "certificate_reloads",
            "Certificate reloads by result",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Family::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each served certificate expires",
            certificate_expiry.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            upstream_errors,
            endpoint_ejections,
            open_connections,
            tls_handshakes,
            config_reloads,
            certificate_reloads,
            certificate_expiry,
        }
    }
}

impl Metrics {
    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn result(ok: bool) -> ResultLabels {
        ResultLabels {
            result: if ok { "success" } else { "failure" },
        }
    }
}

/// A bounded label for an HTTP method.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counter_appears_in_the_exposition_with_its_labels() {
        let metrics = Metrics::default();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: Name("app/".into()),
                method: "GET",
                status: "2xx",
            })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"sekisho_http_requests_total{route="app/",method="GET",status="2xx"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn unusual_methods_share_one_label() {
        let method = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&method), "OTHER");
        assert_eq!(status_class(503), "5xx");
    }
}
