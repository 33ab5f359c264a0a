//! The one way an AMAOS service is served.
//!
//! [`serve`] takes the service's routes, an already-bound listener and a
//! shutdown token, and adds what every server needs: gRPC health, reflection
//! (public services), a concurrency limit that sheds load with
//! RESOURCE_EXHAUSTED, per-RPC metrics, trace-context extraction, the inbound
//! deadline as a task-local for outgoing calls, and a drain bounded by
//! `limits.drain_timeout`. Message size limits are set on each generated
//! server with [`limit_messages!`](crate::limit_messages).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_health::ServingStatus;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::config::Config;
use crate::context;
use crate::metrics::Metrics;
use crate::telemetry;

/// Sets the configured decode and encode size limits on a generated server.
#[macro_export]
macro_rules! limit_messages {
    ($server:expr, $limits:expr) => {
        $server
            .max_decoding_message_size($limits.max_message_bytes)
            .max_encoding_message_size($limits.max_message_bytes)
    };
}

/// A service ready to be served.
pub struct GrpcService {
    /// A short name for logs and metrics, e.g. `orchestrator`.
    pub name: &'static str,
    /// The fully qualified gRPC service names it hosts, reported by health
    /// and listed by reflection.
    pub grpc_names: Vec<&'static str>,
    /// Its routes.
    pub routes: Routes,
    /// Whether to serve reflection (public services).
    pub reflection: bool,
}

impl GrpcService {
    /// A public service (with reflection) made of one generated server.
    pub fn public<S>(name: &'static str, server: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        Self {
            name,
            grpc_names: vec![S::NAME],
            routes: Routes::new(server),
            reflection: true,
        }
    }

    /// This service, also hosting `server` on the same port (e.g. the
    /// orchestrator's A2A service beside its own).
    pub fn with<S>(mut self, server: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc_names.push(S::NAME);
        self.routes = self.routes.add_service(server);
        self
    }
}

/// Where a service serves: a listener bound already (`amaos up` and tests
/// bind every port first, so port 0 is known before anything starts), or an
/// address bound only once the service's start-up checks have passed (the
/// `amaos-<svc>` processes: nothing answers on the port of a service that
/// will not start).
pub enum Listener {
    /// Bound by the caller.
    Bound(TcpListener),
    /// Bound by [`serve`], after start-up.
    Address(std::net::SocketAddr),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Bound(listener)
    }
}

impl Listener {
    /// The bound listener (binding the address now, if it is one).
    pub async fn bind(self) -> Result<TcpListener, ServeError> {
        match self {
            Self::Bound(listener) => Ok(listener),
            Self::Address(address) => TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::Bind { address, source }),
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC listener could not be bound.
    #[error("cannot bind the gRPC listener on {address}: {source}")]
    Bind {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The certificates could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

fn reflection_builder(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amaos_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.Status and the error details every service sends
        // (BadRequest, …), so clients such as grpcurl can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in names {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// Serves `service` on `listener` until `shutdown` is cancelled, then drains
/// in-flight requests for at most `limits.drain_timeout`. With
/// `tls.mode = rustls` it accepts only mTLS connections from certificates of
/// the mesh CA, and only requests whose certificate carries an identity
/// allowed to call this service (others get PERMISSION_DENIED).
pub async fn serve(
    service: GrpcService,
    listener: impl Into<Listener>,
    config: &Config,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let listener = listener.into().bind().await?;
    let limits = &config.limits;
    let GrpcService {
        name,
        grpc_names,
        mut routes,
        reflection,
    } = service;
    let (health, health_server) = tonic_health::server::health_reporter();
    for grpc_name in &grpc_names {
        health
            .set_service_status(*grpc_name, ServingStatus::Serving)
            .await;
    }
    routes = routes.add_service(health_server);
    if reflection {
        routes = routes
            .add_service(reflection_builder(&grpc_names).build_v1()?)
            .add_service(reflection_builder(&grpc_names).build_v1alpha()?);
    }

    let local = listener.local_addr()?;
    tracing::info!(service = name, address = %local, "serving gRPC");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        let grpc_names = grpc_names.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for grpc_name in grpc_names {
                health
                    .set_service_status(grpc_name, ServingStatus::NotServing)
                    .await;
            }
        }
    };
    let tls = crate::tls::server(&config.tls, &config.data_dir, name)?;
    let mut builder = tonic::transport::Server::builder();
    let mut allowed = None;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config)?;
        allowed = Some(tls.allowed);
    }
    let server = builder
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .layer(MeshLayer::new(
            metrics,
            limits.max_concurrent_requests,
            allowed,
            name,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(limits.drain_timeout, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(service = name, "drain deadline passed; cutting off in-flight requests"),
            }
        }
    }
    tracing::info!(service = name, "stopped");
    Ok(())
}

/// Every RPC path AMAOS serves: the contracts' methods, health and reflection.
fn known_rpcs() -> &'static std::collections::HashSet<String> {
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let mut known: std::collections::HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // The descriptor set is built into the binary by crates/proto.
        if let Ok(set) = prost_types::FileDescriptorSet::decode(amaos_proto::FILE_DESCRIPTOR_SET) {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        known
    })
}

/// The metrics label of a request path: the path itself when it names an
/// RPC AMAOS serves, else `unknown`.
pub fn rpc_label(path: &str) -> &str {
    if known_rpcs().contains(path) {
        path
    } else {
        "unknown"
    }
}

/// The middleware every server shares: load shedding, metrics, tracing context
/// and the inbound deadline.
#[derive(Clone)]
struct MeshLayer {
    metrics: Metrics,
    permits: Arc<Semaphore>,
    limit: usize,
    /// With mTLS: the identities allowed to call.
    allowed: Option<Arc<[String]>>,
    service: &'static str,
}

impl MeshLayer {
    fn new(
        metrics: Metrics,
        limit: usize,
        allowed: Option<Arc<[String]>>,
        service: &'static str,
    ) -> Self {
        Self {
            metrics,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            allowed,
            service,
        }
    }

    /// Whether the request's client certificate may call this service.
    fn admits(&self, request: &http::Request<Body>) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| {
                certs
                    .first()
                    .is_some_and(|leaf| crate::tls::certificate_allowed(leaf, allowed))
            })
    }
}

impl<S> Layer<S> for MeshLayer {
    type Service = MeshService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeshService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct MeshService<S> {
    inner: S,
    layer: MeshLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for MeshService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Junk paths share one label, so callers cannot mint metric series.
        let rpc = rpc_label(request.uri().path()).to_owned();
        let metrics = self.layer.metrics.clone();
        if !self.layer.admits(&request) {
            let service = self.layer.service;
            tracing::warn!(
                service,
                rpc,
                "refused a caller whose certificate identity is not allowed"
            );
            return Box::pin(async move {
                Ok(tonic::Status::permission_denied(format!(
                    "the client certificate's identity is not allowed to call {service} (tls.allow.{service})"
                ))
                .into_http())
            });
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            metrics.shed(&rpc);
            let limit = self.layer.limit;
            return Box::pin(async move {
                Ok(tonic::Status::resource_exhausted(format!(
                    "server is at its limit of {limit} concurrent requests; retry with backoff"
                ))
                .into_http())
            });
        };
        let span = tracing::info_span!("grpc.server", otel.name = %rpc, otel.kind = "server", rpc.system = "grpc");
        telemetry::set_parent_from(&span, request.headers());
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        // Take the service that was driven to readiness; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let recorder = Recorder::start(metrics, rpc);
        Box::pin(async move {
            let response = context::DEADLINE
                .scope(deadline, inner.call(request))
                .instrument(span)
                .await;
            drop(permit);
            let Ok(mut response) = response;
            oversized_is_exhausted(response.headers_mut());
            if let Some(code) = grpc_status(response.headers()) {
                recorder.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(MeteredBody {
                    inner: body,
                    recorder,
                })
            }))
        })
    }
}

/// tonic reports a request over the decode limit as OUT_OF_RANGE; the gRPC
/// status-code guide (and our contract) says RESOURCE_EXHAUSTED.
fn oversized_is_exhausted(headers: &mut http::HeaderMap) {
    let out_of_range = grpc_status(headers) == Some(tonic::Code::OutOfRange);
    let oversized = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.contains("message length too large") || m.contains("message%20length%20too%20large")
        });
    if out_of_range && oversized {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}

/// Records one request's outcome exactly once; a request dropped before its
/// status was seen counts as CANCELLED.
struct Recorder {
    metrics: Metrics,
    rpc: String,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn start(metrics: Metrics, rpc: String) -> Self {
        metrics.started();
        Self {
            metrics,
            rpc,
            started: Instant::now(),
            done: false,
        }
    }

    fn record(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            let elapsed: Duration = self.started.elapsed();
            self.metrics.finished(&self.rpc, code, elapsed);
        }
    }

    fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the gRPC status found in its trailers.
    struct MeteredBody {
        #[pin]
        inner: Body,
        recorder: Recorder,
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.recorder.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.recorder.record(status.code()),
            Poll::Ready(None) => this.recorder.record(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod rpc_label_tests {
    #[test]
    fn known_paths_keep_their_label_and_junk_shares_one() {
        assert_eq!(
            super::rpc_label("/amaos.router.v1.RouterService/Route"),
            "/amaos.router.v1.RouterService/Route"
        );
        assert_eq!(
            super::rpc_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        for junk in ["/x/y", "/amaos.router.v1.RouterService/Nope", "/", ""] {
            assert_eq!(super::rpc_label(junk), "unknown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_over_the_limit_are_shed_with_resource_exhausted() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let waiting = gate.clone();
        let inner = tower::service_fn(move |_req: http::Request<Body>| {
            let waiting = waiting.clone();
            async move {
                waiting.notified().await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
        });
        let metrics = Metrics::new("test");
        let mut service = MeshLayer::new(metrics.clone(), 1, None, "test").layer(inner);
        let request = || {
            http::Request::builder()
                .uri("/pkg.Svc/Call")
                .body(Body::empty())
                .unwrap()
        };
        let first = tokio::spawn(service.call(request()));
        tokio::task::yield_now().await;
        let shed = service.call(request()).await.unwrap();
        assert_eq!(
            grpc_status(shed.headers()),
            Some(tonic::Code::ResourceExhausted)
        );
        gate.notify_one();
        first.await.unwrap().unwrap();
        assert!(
            metrics
                .encode()
                .contains("amaos_grpc_shed_requests_total{service=\"test\"} 1"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn an_oversized_request_is_resource_exhausted() {
        let mut headers = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 1 bytes",
        )
        .into_http::<Body>()
        .headers()
        .clone();
        oversized_is_exhausted(&mut headers);
        assert_eq!(grpc_status(&headers), Some(tonic::Code::ResourceExhausted));
    }
}
