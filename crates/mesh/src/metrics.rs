//! Per-service Prometheus metrics and the admin HTTP endpoint that serves them.
//!
//! The server stack ([`crate::server`]) records, per RPC: requests by final
//! gRPC code, a latency histogram, requests in flight and requests shed.
//! Services may register their own metrics with [`Metrics::register`].

use std::sync::{Arc, Mutex};
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
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// A registry whose metrics carry `service="<service>"`.
    pub fn new(service: &'static str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "amaos",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Borrowed(service),
            )]
            .into_iter(),
        );
        let requests = Family::<RpcCodeLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
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
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                requests,
                latency,
                in_flight,
                shed,
            }),
        }
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
