//! AMAOS REST gateway: HTTP/JSON transcoded to the services' gRPC, driven
//! by the `google.api.http` rules in the descriptor set the services
//! serve; OpenAPI 3.1 documents from the same descriptors; the dashboard.
//!
//! # Layout
//!
//! `template` (path templates), `routes` (the route table from the
//! descriptors), `transcode` (request and response messages ↔ JSON),
//! `upstream` (calls with dynamic messages over `mesh::client`), `stream`
//! (server streams as SSE or NDJSON), `error` (gRPC status → HTTP),
//! `openapi`, `dashboard` (the embedded web app), `http` (the listener:
//! limits, CORS, per-client stream bounds, metrics).

use std::sync::Arc;

use amaos_mesh::BoxError;
use amaos_mesh::config::Config;
use amaos_mesh::metrics::Metrics;
use prost_reflect::DescriptorPool;
use tokio_util::sync::CancellationToken;

pub mod dashboard;
pub mod error;
mod http;
pub mod openapi;
pub mod routes;
mod stream;
pub mod template;
pub mod transcode;
pub mod upstream;

pub use http::Listener;

/// Every descriptor the gateway reads: the AMAOS contracts (with their
/// HTTP rules) and `google.rpc`'s error details.
pub fn descriptors() -> Result<DescriptorPool, prost_reflect::DescriptorError> {
    let mut pool = DescriptorPool::decode(amaos_proto::FILE_DESCRIPTOR_SET)?;
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool)
}

/// What every request handler shares.
pub(crate) struct Gateway {
    pub(crate) config: amaos_mesh::config::GatewayConfig,
    pub(crate) pool: DescriptorPool,
    pub(crate) routes: Vec<routes::Route>,
    pub(crate) upstreams: upstream::Upstreams,
    pub(crate) openapi: openapi::Documents,
    pub(crate) streams: http::StreamSlots,
    pub(crate) metrics: http::HttpMetrics,
    pub(crate) shutdown: CancellationToken,
}

/// Serves the gateway on `listener` until `shutdown`, then drains.
pub async fn serve(
    config: Config,
    listener: impl Into<Listener>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let pool = descriptors().map_err(|e| format!("the descriptor set is unreadable: {e}"))?;
    let routes = routes::routes(&pool)?;
    let openapi = openapi::Documents::build(&pool, &routes);
    let gateway = Arc::new(Gateway {
        streams: http::StreamSlots::new(config.gateway.max_streams_per_client),
        metrics: http::HttpMetrics::register(&metrics),
        upstreams: upstream::Upstreams::new(&config)?,
        config: config.gateway.clone(),
        pool,
        routes,
        openapi,
        shutdown: shutdown.clone(),
    });
    http::serve(
        gateway,
        listener.into(),
        config.limits.drain_timeout,
        shutdown,
    )
    .await
}

/// The OpenAPI document of every service (`None`) or of one, as the
/// gateway serves it at `/openapi.json` and `/openapi/<service>.json`.
pub fn openapi_document(service: Option<&str>) -> Result<String, BoxError> {
    let pool = descriptors()?;
    let routes = routes::routes(&pool)?;
    let documents = openapi::Documents::build(&pool, &routes);
    match service {
        None => Ok(documents.all().to_owned()),
        Some(name) => documents.service(name).map(str::to_owned).ok_or_else(|| {
            format!(
                "no OpenAPI document for `{name}`; services: {}",
                documents.names().join(", ")
            )
            .into()
        }),
    }
}
