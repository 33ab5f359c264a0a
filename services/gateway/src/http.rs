//! The HTTP side: the listener (head size and read timeout per
//! connection), the routes that are not transcoded (OpenAPI, dashboard),
//! CORS, per-client stream slots, metrics, and the transcoding handler.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amaos_mesh::BoxError;
use amaos_mesh::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::Gateway;
use crate::error::ApiError;
use crate::routes::Route;
use crate::stream::{self, Format};
use crate::transcode;

/// Where the gateway serves: a listener bound already, or an address.
pub enum Listener {
    /// Bound by the caller (`amaos up`, tests).
    Bound(TcpListener),
    /// Bound by [`crate::serve`].
    Address(SocketAddr),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Bound(listener)
    }
}

impl From<amaos_mesh::server::Listener> for Listener {
    fn from(listener: amaos_mesh::server::Listener) -> Self {
        match listener {
            amaos_mesh::server::Listener::Bound(l) => Self::Bound(l),
            amaos_mesh::server::Listener::Address(a) => Self::Address(a),
        }
    }
}

/// The peer of a connection, put in each request's extensions.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    listener: Listener,
    drain: Duration,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let listener = match listener {
        Listener::Bound(l) => l,
        Listener::Address(address) => TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}"))?,
    };
    tracing::info!(address = %listener.local_addr()?, "serving REST");
    let app = app(gateway.clone());
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                app.clone().oneshot(request.map(Body::new))
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(gateway.config.header_timeout)
            .max_buf_size(gateway.config.max_header_bytes.max(8192))
            .keep_alive(true);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
    Ok(())
}

fn app(gateway: Arc<Gateway>) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/openapi.json", get(openapi_all))
        .route("/openapi/{file}", get(openapi_one));
    if gateway.config.dashboard {
        router = router.merge(crate::dashboard::routes());
    }
    router
        .fallback(transcoded)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), cors))
        .with_state(gateway)
}

async fn openapi_all(State(gateway): State<Arc<Gateway>>) -> Response {
    json_response(StatusCode::OK, gateway.openapi.all().to_owned())
}

async fn openapi_one(State(gateway): State<Arc<Gateway>>, Path(file): Path<String>) -> Response {
    let service = file.strip_suffix(".json").unwrap_or(&file);
    match gateway.openapi.service(service) {
        Some(doc) => json_response(StatusCode::OK, doc.to_owned()),
        None => ApiError::from(tonic::Status::not_found(format!(
            "no OpenAPI document for `{service}`; try {}",
            gateway.openapi.names().join(", ")
        )))
        .into_response_with(&gateway.pool),
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// CORS: nothing at all unless the origin is on the allow-list.
async fn cors(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| {
            gateway
                .config
                .cors_origins
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        });
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !allowed {
            return ApiError::from(tonic::Status::permission_denied(
                "this origin may not call the API from a browser (gateway.cors_origins)",
            ))
            .into_response_with(&gateway.pool);
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id, grpc-timeout"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        allow_origin(headers, origin);
        return response;
    }
    let mut response = next.run(request).await;
    if allowed {
        allow_origin(response.headers_mut(), origin);
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// Every request no other route took: find its binding, transcode, call.
async fn transcoded(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let span =
        tracing::info_span!("rest", method = %request.method(), path = %request.uri().path());
    amaos_mesh::telemetry::set_parent_from(&span, request.headers());
    let (response, label) = handle(&gateway, request).instrument(span).await;
    gateway
        .metrics
        .observe(&label, response.status(), started.elapsed());
    response
}

async fn handle(gateway: &Arc<Gateway>, request: Request) -> (Response, String) {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut allowed = Vec::new();
    let mut found = None;
    for route in &gateway.routes {
        if let Some(variables) = route.template.matches(&path) {
            if route.method == method {
                found = Some((route, variables));
                break;
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
    }
    let Some((route, variables)) = found else {
        let error = if allowed.is_empty() {
            ApiError::no_route(&method, &path)
        } else {
            ApiError::method_not_allowed(&method, &allowed)
        };
        return (error.into_response_with(&gateway.pool), "unmatched".into());
    };
    let label = route.operation_id(0);
    let result = call(gateway, route, &variables, request).await;
    let response = result.unwrap_or_else(|e| e.into_response_with(&gateway.pool));
    (response, label)
}

async fn call(
    gateway: &Arc<Gateway>,
    route: &Route,
    variables: &[(String, String)],
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = gateway.config.max_body_bytes;
    let body = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    // The body is read as JSON whatever its Content-Type says: curl's `-d`
    // sends `application/x-www-form-urlencoded`, and credentials travel
    // only in `Authorization`, which a cross-site form cannot set, so a
    // lax reading opens nothing. A body that is not JSON is a 400 anyway.
    let mut message = transcode::request(route, variables, parts.uri.query(), &body)?;
    let metadata = metadata(&parts.headers)?;
    if route.rpc.is_server_streaming() {
        let format = Format::from_accept(&parts.headers);
        if let Some(last) = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
        {
            let sequence = last.trim().parse::<u64>().map_err(|_| {
                ApiError::field(
                    "Last-Event-ID",
                    format!("`{last}` is not a sequence number"),
                )
            })?;
            transcode::set_after_sequence(&mut message, sequence);
        }
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        let slot = gateway
            .streams
            .take(peer)
            .ok_or_else(|| ApiError::too_many_streams(gateway.config.max_streams_per_client))?;
        return stream::respond(
            gateway.clone(),
            route.clone(),
            message,
            metadata,
            format,
            slot,
        )
        .await;
    }
    let response = gateway
        .upstreams
        .unary(route.service, &route.rpc, message, metadata)
        .await?;
    let json = transcode::response_json(route, &response)?;
    Ok(json_response(StatusCode::OK, json))
}

/// The caller's credentials and call options, as gRPC metadata.
pub(crate) fn metadata(headers: &HeaderMap) -> Result<MetadataMap, ApiError> {
    let mut metadata = MetadataMap::new();
    for name in ["authorization", "grpc-timeout", "x-request-id"] {
        if let Some(value) = headers.get(name) {
            let text = value
                .to_str()
                .map_err(|_| ApiError::field(name, "is not visible ASCII"))?;
            let value = MetadataValue::try_from(text)
                .map_err(|_| ApiError::field(name, "is not a valid header value"))?;
            metadata.insert(name, value);
        }
    }
    Ok(metadata)
}

/// Streams open per client address, bounded.
pub(crate) struct StreamSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
}

/// One open stream; frees its slot when dropped.
pub(crate) struct StreamSlot {
    key: Option<IpAddr>,
    open: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
}

impl StreamSlots {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// A slot for `client`, unless it holds the limit already.
    pub(crate) fn take(&self, client: Option<IpAddr>) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            key: client,
            open: self.open.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    route: String,
    status: u16,
}

/// Requests by route and HTTP status, and their latency (until the head
/// of the response; a stream's length is not its latency).
pub(crate) struct HttpMetrics {
    requests: Family<RouteStatusLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }
        let requests = Family::<RouteStatusLabels, Counter>::default();
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        metrics.register(
            "http_requests",
            "REST requests by route and HTTP status",
            requests.clone(),
        );
        metrics.register(
            "http_request_duration_seconds",
            "REST request latency by route, until the response head",
            latency.clone(),
        );
        Self { requests, latency }
    }

    fn observe(&self, route: &str, status: StatusCode, elapsed: Duration) {
        self.requests
            .get_or_create(&RouteStatusLabels {
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_bounded_per_client_and_freed_on_drop() {
        let slots = StreamSlots::new(2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(slots.take(a).is_none());
        assert!(slots.take(b).is_some());
        drop(first);
        assert!(slots.take(a).is_some());
    }
}
