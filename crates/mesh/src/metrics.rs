//! Per-service Prometheus metrics and the admin HTTP endpoint that serves them.
//!
//! The server stack ([`crate::server`]) records, per RPC: requests by final
//! gRPC code, a latency histogram, requests in flight and requests shed.
//! Services may register their own metrics with [`Metrics::register`].
//!
//! Label values that come from callers (tenant ids, team and tool names) go
//! through [`Metrics::tenant`], [`Metrics::team`] or [`LabelBound`], so a
//! family never grows past the allow-list or `telemetry.metric_label_limit`
//! values: the rest are reported as `other`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

/// Labels of per-RPC, per-code metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCodeLabels {
    rpc: String,
    code: String,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The label value reported for values past a bound.
pub const OTHER: &str = "other";

/// Bounds one label's values: an allow-list, or else the first `limit`
/// distinct values seen; everything else is [`OTHER`].
#[derive(Debug)]
pub struct LabelBound {
    allowed: Option<HashSet<String>>,
    limit: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelBound {
    /// Values in `allow` only when it is not empty, else the first `limit`.
    pub fn new(allow: &[String], limit: usize) -> Self {
        Self {
            allowed: (!allow.is_empty()).then(|| allow.iter().cloned().collect()),
            limit,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The label value to report for `value`.
    pub fn label(&self, value: &str) -> String {
        if let Some(allowed) = &self.allowed {
            return if allowed.contains(value) {
                value.to_owned()
            } else {
                OTHER.to_owned()
            };
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.limit && value != OTHER {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// Audit appends that failed in this process (every trail it writes).
static AUDIT_APPEND_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Redis command and connection errors in this process's backends.
static REDIS_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Round trips to Redis from this process's backends (a pipeline is one).
static REDIS_ROUND_TRIPS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Commands sent to Redis by this process's backends (a script call is one).
static REDIS_COMMANDS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Counts one round trip to Redis carrying `commands` commands.
pub fn redis_sent(commands: u64) {
    REDIS_ROUND_TRIPS.inc();
    REDIS_COMMANDS.inc_by(commands);
}

/// Round trips to Redis and commands sent so far by this process.
pub fn redis_sent_so_far() -> (u64, u64) {
    (REDIS_ROUND_TRIPS.get(), REDIS_COMMANDS.get())
}

/// Counts an audit append that did not reach the trail.
pub fn audit_append_failed() {
    AUDIT_APPEND_FAILURES.inc();
}

/// Counts a Redis error seen by a backend.
pub fn redis_error() {
    REDIS_ERRORS.inc();
}

/// A latency histogram from 0.5 ms to about 16 s (the buckets every
/// duration metric of the mesh shares, so dashboards and SLOs can name
/// the same `le` values).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One service's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    requests: Family<RpcCodeLabels, Counter>,
    latency: HistogramFamily,
    in_flight: Gauge,
    shed: Counter,
    tenants: LabelBound,
    teams: LabelBound,
    limit: usize,
    tenant_classes: BTreeMap<String, String>,
}

impl Metrics {
    /// A registry whose metrics carry `service="<service>"`, with the
    /// default label bounds.
    pub fn new(service: &'static str) -> Self {
        Self::with_telemetry(service, &crate::config::TelemetryConfig::default())
    }

    /// A registry whose metrics carry `service="<service>"`, bounding
    /// labels as `telemetry` says.
    pub fn with_telemetry(
        service: &'static str,
        telemetry: &crate::config::TelemetryConfig,
    ) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "amaos",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Borrowed(service),
            )]
            .into_iter(),
        );
        let requests = Family::<RpcCodeLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let in_flight = Gauge::default();
        let shed = Counter::default();
        registry.register(
            "grpc_requests",
            "gRPC requests by RPC and final status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC request latency by RPC, until the response ends",
            latency.clone(),
        );
        registry.register(
            "grpc_in_flight_requests",
            "gRPC requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "grpc_shed_requests",
            "gRPC requests refused at the concurrency limit",
            shed.clone(),
        );
        registry.register(
            "audit_append_failures",
            "audit records this process could not append to its trail (must stay 0)",
            AUDIT_APPEND_FAILURES.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis command and connection errors seen by this process's backends",
            REDIS_ERRORS.clone(),
        );
        registry.register(
            "redis_round_trips",
            "round trips to Redis from this process's backends (a pipeline counts once)",
            REDIS_ROUND_TRIPS.clone(),
        );
        registry.register(
            "redis_commands",
            "commands sent to Redis by this process's backends (a script call counts once)",
            REDIS_COMMANDS.clone(),
        );
        let limit = telemetry.metric_label_limit;
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                requests,
                latency,
                in_flight,
                shed,
                tenants: LabelBound::new(&telemetry.metric_tenants, limit),
                teams: LabelBound::new(&telemetry.metric_teams, limit),
                limit,
                tenant_classes: telemetry.tenant_classes.clone(),
            }),
        }
    }

    /// The label value for tenant `tenant` (bounded).
    pub fn tenant(&self, tenant: &str) -> String {
        self.inner.tenants.label(tenant)
    }

    /// The label value for team `team` (bounded).
    pub fn team(&self, team: &str) -> String {
        self.inner.teams.label(team)
    }

    /// The SLO class of `tenant` (`standard` unless configured).
    pub fn tenant_class(&self, tenant: &str) -> String {
        self.inner
            .tenant_classes
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| "standard".to_owned())
    }

    /// A new bound for another caller-named label (tool names), with this
    /// registry's limit.
    pub fn label_bound(&self) -> LabelBound {
        LabelBound::new(&[], self.inner.limit)
    }

    /// Registers a service-specific metric.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn started(&self) {
        self.inner.in_flight.inc();
    }

    pub(crate) fn finished(&self, rpc: &str, code: tonic::Code, elapsed: Duration) {
        self.inner.in_flight.dec();
        self.inner
            .requests
            .get_or_create(&RpcCodeLabels {
                rpc: rpc.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.inner
            .latency
            .get_or_create(&RpcLabels {
                rpc: rpc.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn shed(&self, rpc: &str) {
        self.inner.shed.inc();
        self.inner
            .requests
            .get_or_create(&RpcCodeLabels {
                rpc: rpc.to_owned(),
                code: format!("{:?}", tonic::Code::ResourceExhausted),
            })
            .inc();
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_past_the_limit_are_reported_as_other() {
        let bound = LabelBound::new(&[], 2);
        assert_eq!(bound.label("a"), "a");
        assert_eq!(bound.label("b"), "b");
        assert_eq!(bound.label("c"), OTHER);
        assert_eq!(bound.label("a"), "a", "a value seen before stays");
        let listed = LabelBound::new(&["gold-tenant".into()], 100);
        assert_eq!(listed.label("gold-tenant"), "gold-tenant");
        assert_eq!(listed.label("someone"), OTHER);
    }

    #[test]
    fn ten_thousand_tenants_make_at_most_the_limit_plus_one_series() {
        let metrics = Metrics::new("test");
        let family = Family::<RpcLabels, Counter>::default();
        metrics.register("per_tenant", "test", family.clone());
        for i in 0..10_000 {
            family
                .get_or_create(&RpcLabels {
                    rpc: metrics.tenant(&format!("tenant-{i}")),
                })
                .inc();
        }
        let text = metrics.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("amaos_per_tenant_total{"))
            .count();
        assert_eq!(series, 21, "20 tenants and `other`");
        assert!(text.contains(r#"rpc="other""#));
    }

    #[test]
    fn tenants_have_their_configured_class() {
        let mut telemetry = crate::config::TelemetryConfig::default();
        telemetry
            .tenant_classes
            .insert("acme".into(), "gold".into());
        let metrics = Metrics::with_telemetry("test", &telemetry);
        assert_eq!(metrics.tenant_class("acme"), "gold");
        assert_eq!(metrics.tenant_class("globex"), "standard");
    }
}
