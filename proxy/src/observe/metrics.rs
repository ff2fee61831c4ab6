//! Prometheus metrics, served in the OpenMetrics text format on the admin listener only.
//!
//! Label values that come from requests are bounded: methods outside the standard set count as
//! `OTHER`, statuses as classes, and routes are the configured route names. Every series whose
//! labels are known in advance (results, reasons, decisions, configured providers and
//! upstreams) is registered at zero, so that an alert on its first increase can fire. The
//! standard `process_*` metrics come from [`super::process`]. `docs/operations.md` lists every
//! metric and what to alert on.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value shared with the routing snapshot, so recording a metric allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: Name,
    pub method: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct UpstreamErrorLabels {
    pub upstream: Name,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub upstream: Name,
    pub endpoint: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CertificateLabels {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct AgentLabels {
    /// A configured agent's name (only agents that proved themselves are counted by name).
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    /// `to_target` or `to_client`.
    pub direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RoleLabels {
    pub role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CauseLabels {
    pub cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct LoginLabels {
    pub provider: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ProviderErrorLabels {
    pub provider: String,
    pub operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// What an access decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionKind {
    Allowed,
    LoginRequired,
    Denied,
}

/// Why: the part of the configuration that decided, or what was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionReason {
    /// A `public: true` route.
    PublicRoute,
    /// One of the policy's `rules`.
    Rule,
    /// The policy's `allow` list.
    Allow,
    /// `cors_preflight: true`.
    CorsPreflight,
    /// Nothing allowed the request.
    DefaultDeny,
    /// The route has no policy.
    NoPolicy,
    /// The login is older, or idle longer, than the route allows.
    SessionAge,
    /// A bearer token that does not verify, or on a route that takes none.
    BadToken,
    /// A webhook's signature.
    Webhook,
    /// A WebSocket handshake from a page on another origin.
    WebsocketOrigin,
}

const VERDICTS: [(DecisionKind, &str); 3] = [
    (DecisionKind::Allowed, "allowed"),
    (DecisionKind::LoginRequired, "login_required"),
    (DecisionKind::Denied, "denied"),
];

const REASONS: [(DecisionReason, &str); 10] = [
    (DecisionReason::PublicRoute, "public_route"),
    (DecisionReason::Rule, "rule"),
    (DecisionReason::Allow, "allow"),
    (DecisionReason::CorsPreflight, "cors_preflight"),
    (DecisionReason::DefaultDeny, "default_deny"),
    (DecisionReason::NoPolicy, "no_policy"),
    (DecisionReason::SessionAge, "session_age"),
    (DecisionReason::BadToken, "bad_token"),
    (DecisionReason::Webhook, "webhook"),
    (DecisionReason::WebsocketOrigin, "websocket_origin"),
];

/// What a login callback ended in: `success`, `refused` (by the provider, or a sign-in that
/// does not verify) or `failed` (the provider could not be reached, or the proxy failed).
pub(crate) const LOGIN_RESULTS: [&str; 3] = ["success", "refused", "failed"];

/// What was asked of a provider when it failed: `discovery` (its configuration and keys) or
/// `token` (the code exchange and the ID token).
pub(crate) const PROVIDER_OPERATIONS: [&str; 2] = ["discovery", "token"];

/// Why an agent connection can be refused (the `reason` of `sekisho_agent_refusals_total`).
pub(crate) const AGENT_REFUSAL_REASONS: [&str; 7] = [
    "bad_request",
    "no_credential",
    "malformed",
    "unknown_agent",
    "replay",
    "bad_signature",
    "clock_skew",
];

/// What can go wrong with an upstream (the `kind` of `sekisho_upstream_errors_total`).
pub(crate) const UPSTREAM_ERROR_KINDS: [&str; 7] = [
    "connect",
    "connect_timeout",
    "response_timeout",
    "protocol",
    "unexpected_upgrade",
    "no_endpoint",
    "agent_offline",
];

/// The tunnel hub's metrics.
#[derive(Debug, Default)]
pub(crate) struct TunnelMetrics {
    pub agents_connected: Family<AgentLabels, Gauge>,
    pub agent_connections: Family<AgentLabels, Counter>,
    pub agent_refusals: Family<ReasonLabels, Counter>,
    pub streams_open: Gauge,
    pub bytes: Family<DirectionLabels, Counter>,
    pub stream_failures: Family<ReasonLabels, Counter>,
    pub stream_ends: Family<CauseLabels, Counter>,
    /// Shared with the hub, which counts.
    pub links_unresponsive: Counter,
    /// Tunnel streams relayed between replicas, by this replica's role: `sent` (through the
    /// replica holding the agent), `carried` (for another replica), `refused` (no valid proof).
    pub relayed: Family<RoleLabels, Counter>,
    /// Relayed streams whose connection from the other replica was lost, by what became of
    /// them on this replica (the one holding the agent): `waiting` (kept to be resumed),
    /// `resumed`, `expired` (not resumed in time).
    pub resumes: Family<ResultLabels, Counter>,
}

impl TunnelMetrics {
    /// Registers the hub's families, with their known labels at zero: every refusal reason,
    /// stream failure code and stream end, and both directions.
    fn register(&self, registry: &mut Registry) {
        for reason in AGENT_REFUSAL_REASONS {
            drop(self.agent_refusals.get_or_create(&ReasonLabels { reason }));
        }
        for error in sekisho_wire::tunnel::TunnelError::ALL {
            drop(self.stream_failures.get_or_create(&ReasonLabels {
                reason: error.code(),
            }));
        }
        for end in sekisho_wire::tunnel::StreamEnd::ALL {
            drop(
                self.stream_ends
                    .get_or_create(&CauseLabels { cause: end.code() }),
            );
        }
        for direction in ["to_target", "to_client"] {
            drop(self.bytes.get_or_create(&DirectionLabels { direction }));
        }
        for role in ["sent", "carried", "refused"] {
            drop(self.relayed.get_or_create(&RoleLabels { role }));
        }
        for result in ["waiting", "resumed", "expired"] {
            drop(self.resumes.get_or_create(&ResultLabels { result }));
        }
        registry.register(
            "agents_connected",
            "Live agent connections, by agent",
            self.agents_connected.clone(),
        );
        registry.register(
            "agent_connections",
            "Agent connections accepted (first connections and reconnects), by agent",
            self.agent_connections.clone(),
        );
        registry.register(
            "agent_refusals",
            "Agent connections refused, by reason",
            self.agent_refusals.clone(),
        );
        registry.register(
            "tunnel_streams_open",
            "Tunnel streams currently open",
            self.streams_open.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes carried by tunnel streams that ended, by direction",
            self.bytes.clone(),
        );
        registry.register(
            "tunnel_stream_failures",
            "Tunnel streams that could not be opened, by reason",
            self.stream_failures.clone(),
        );
        registry.register(
            "agent_links_unresponsive",
            "Agent links cut because they did not answer a check while a stream waited on them",
            self.links_unresponsive.clone(),
        );
        registry.register(
            "tunnel_relayed_streams",
            "Tunnel streams relayed between replicas, by this replica's role (sent, carried, refused)",
            self.relayed.clone(),
        );
        registry.register(
            "tunnel_stream_resumes",
            "Relayed tunnel streams whose connection from the other replica was lost, by what became of them here (waiting, resumed, expired)",
            self.resumes.clone(),
        );
        registry.register(
            "tunnel_stream_ends",
            "Tunnel streams that ended, by how they ended",
            self.stream_ends.clone(),
        );
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    pub tunnel: TunnelMetrics,
    /// Every access decision, by what it was and why; counters resolved at start, so that
    /// counting one costs an atomic add.
    decisions: [[Counter; REASONS.len()]; VERDICTS.len()],
    pub logins: Family<LoginLabels, Counter>,
    pub provider_errors: Family<ProviderErrorLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub endpoint_ejections: Family<EndpointLabels, Counter>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub tls_handshakes: Family<ResultLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Kubernetes mode only (see [`Metrics::enable_kubernetes`]).
    pub kubernetes: KubernetesMetrics,
}

/// What Kubernetes mode reports about its watches of the API.
#[derive(Debug, Default, Clone)]
pub(crate) struct KubernetesMetrics {
    /// Failed watch requests, by the kind watched.
    pub watch_errors: Family<KindLabels, Counter>,
    /// 1 while every watch works, 0 from a failure until the next success.
    pub api_reachable: Gauge,
    /// Whether Kubernetes mode registered these.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("sekisho");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running sekisho-proxy's version (always 1)",
            build_info,
        );
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
        let tunnel = TunnelMetrics::default();
        tunnel.register(registry);
        let decisions_family = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "access_decisions",
            "Access decisions by what they were (allowed, login_required, denied) and why",
            decisions_family.clone(),
        );
        let decisions = VERDICTS.map(|(_, decision)| {
            REASONS.map(|(_, reason)| {
                decisions_family
                    .get_or_create(&DecisionLabels { decision, reason })
                    .clone()
            })
        });
        let logins = Family::default();
        registry.register(
            "logins",
            "Browser logins by provider and result (success, refused, failed)",
            logins.clone(),
        );
        let provider_errors = Family::default();
        registry.register(
            "provider_errors",
            "Failed requests to identity providers, by provider and operation",
            provider_errors.clone(),
        );
        for result in [true, false] {
            for family in [&tls_handshakes, &config_reloads, &certificate_reloads] {
                drop(family.get_or_create(&Self::result(result)));
            }
        }
        for listener in ["https", "http"] {
            drop(open_connections.get_or_create(&ListenerLabels { listener }));
        }
        Self {
            registry: root,
            tunnel,
            decisions,
            logins,
            provider_errors,
            requests,
            request_duration,
            upstream_errors,
            endpoint_ejections,
            open_connections,
            tls_handshakes,
            config_reloads,
            certificate_reloads,
            certificate_expiry,
            kubernetes: KubernetesMetrics::default(),
        }
    }
}

impl Metrics {
    /// Whether Kubernetes mode is on and a watch of the API fails now.
    pub(crate) fn kubernetes_unreachable(&self) -> bool {
        self.kubernetes.enabled && self.kubernetes.api_reachable.get() == 0
    }

    /// Registers the Kubernetes-mode metrics (before the metrics are shared).
    pub(crate) fn enable_kubernetes(&mut self) {
        self.kubernetes.enabled = true;
        let registry = self.registry.sub_registry_with_prefix("sekisho_kubernetes");
        registry.register(
            "watch_errors",
            "Failed watches of the Kubernetes API, by kind; the last state keeps serving",
            self.kubernetes.watch_errors.clone(),
        );
        registry.register(
            "api_reachable",
            "1 while every watch of the Kubernetes API works, 0 from a failure until it recovers",
            self.kubernetes.api_reachable.clone(),
        );
    }

    /// The registry in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn result(ok: bool) -> ResultLabels {
        ResultLabels {
            result: if ok { "success" } else { "failure" },
        }
    }

    /// Counts one access decision.
    pub(crate) fn decision(&self, verdict: DecisionKind, reason: DecisionReason) {
        let v = VERDICTS.iter().position(|(v, _)| *v == verdict);
        let r = REASONS.iter().position(|(r, _)| *r == reason);
        if let (Some(v), Some(r)) = (v, r) {
            self.decisions[v][r].inc();
        }
    }

    /// Registers the error series of a configured upstream at zero.
    pub(crate) fn register_upstream(&self, upstream: &Name) {
        for kind in UPSTREAM_ERROR_KINDS {
            drop(self.upstream_errors.get_or_create(&UpstreamErrorLabels {
                upstream: upstream.clone(),
                kind,
            }));
        }
    }

    /// Registers the login and provider-error series of a configured provider at zero.
    pub(crate) fn register_provider(&self, provider: &str) {
        for result in LOGIN_RESULTS {
            drop(self.logins.get_or_create(&LoginLabels {
                provider: provider.to_owned(),
                result,
            }));
        }
        for operation in PROVIDER_OPERATIONS {
            drop(self.provider_errors.get_or_create(&ProviderErrorLabels {
                provider: provider.to_owned(),
                operation,
            }));
        }
    }

    /// Counts a browser login's end.
    pub(crate) fn login(&self, provider: &str, result: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                provider: provider.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a failed request to a provider.
    pub(crate) fn provider_error(&self, provider: &str, operation: &'static str) {
        self.provider_errors
            .get_or_create(&ProviderErrorLabels {
                provider: provider.to_owned(),
                operation,
            })
            .inc();
    }
}

/// One route's request metrics, resolved when the snapshot is built so that recording a
/// request costs a few atomic operations instead of label hashing and map lookups.
pub(crate) struct RouteMetrics {
    name: Name,
    duration: Histogram,
    /// By method label and status class, created on first use so that only combinations that
    /// happened are exported.
    requests: [[OnceLock<Counter>; 5]; METHODS.len()],
    family: Family<RequestLabels, Counter>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.name.0)
            .finish()
    }
}

impl RouteMetrics {
    pub(crate) fn new(metrics: &Metrics, name: Name) -> Self {
        let duration = metrics
            .request_duration
            .get_or_create(&RouteLabels {
                route: name.clone(),
            })
            .clone();
        Self {
            name,
            duration,
            requests: Default::default(),
            family: metrics.requests.clone(),
        }
    }

    /// Counts a request and observes the time to its response head.
    pub(crate) fn record(&self, method: &http::Method, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let m = method_index(method);
        let s = usize::from(status.clamp(100, 599) / 100 - 1);
        self.requests[m][s]
            .get_or_init(|| {
                self.family
                    .get_or_create(&RequestLabels {
                        route: self.name.clone(),
                        method: METHODS[m],
                        status: STATUS_CLASSES[s],
                    })
                    .clone()
            })
            .inc();
    }
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::HEAD => 4,
        http::Method::OPTIONS => 5,
        http::Method::PATCH => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

/// A bounded label for an HTTP method.
#[cfg(test)]
fn method_label(method: &http::Method) -> &'static str {
    METHODS[method_index(method)]
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
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
    }

    #[test]
    fn route_metrics_count_by_method_and_status_class() {
        let metrics = Metrics::default();
        let route = RouteMetrics::new(&metrics, Name("r".into()));
        route.record(&http::Method::GET, 204, 0.001);
        route.record(&http::Method::GET, 200, 0.001);
        route.record(&http::Method::from_bytes(b"PURGE").unwrap(), 503, 0.001);
        let text = metrics.encode();
        for line in [
            r#"sekisho_http_requests_total{route="r",method="GET",status="2xx"} 2"#,
            r#"sekisho_http_requests_total{route="r",method="OTHER",status="5xx"} 1"#,
            r#"sekisho_http_request_duration_seconds_count{route="r"} 3"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains(r#"method="POST""#),
            "unused combinations stay out"
        );
    }
}
