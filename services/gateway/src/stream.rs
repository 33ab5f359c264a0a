//! Server-streaming RPCs over HTTP: Server-Sent Events (`id:` is the
//! event's sequence number, so `Last-Event-ID` resumes) or NDJSON, chosen
//! by `Accept`. Heartbeats keep proxies from closing a quiet stream. When
//! the service ends a stream early (its deadline, a replica going away),
//! the gateway resumes it from the last sequence it sent; the client sees
//! one stream that ends with the task's terminal state — SSE then sends
//! `event: end` so an `EventSource` knows not to reconnect.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prost_reflect::DynamicMessage;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::metadata::MetadataMap;

use crate::Gateway;
use crate::error::{ApiError, status_json};
use crate::http::StreamSlot;
use crate::routes::Route;
use crate::transcode;

/// How a stream is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson` (the default).
    Ndjson,
}

impl Format {
    pub(crate) fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        if accept.contains("text/event-stream") {
            Self::Sse
        } else {
            Self::Ndjson
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    fn item(self, sequence: Option<u64>, json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 32);
        match self {
            Self::Sse => {
                if let Some(sequence) = sequence {
                    out.extend_from_slice(format!("id: {sequence}\n").as_bytes());
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
        }
        out.into()
    }

    fn heartbeat(self) -> Bytes {
        match self {
            Self::Sse => Bytes::from_static(b": heartbeat\n\n"),
            Self::Ndjson => Bytes::from_static(b"\n"),
        }
    }

    fn error(self, status: &serde_json::Value) -> Bytes {
        match self {
            Self::Sse => format!("event: error\ndata: {status}\n\n").into(),
            Self::Ndjson => format!("{}\n", serde_json::json!({ "error": status })).into(),
        }
    }

    fn end(self) -> Option<Bytes> {
        match self {
            Self::Sse => Some(Bytes::from_static(b"event: end\ndata: {}\n\n")),
            Self::Ndjson => None,
        }
    }
}

/// Codes after which a stream is resumed rather than ended.
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled
    )
}

/// Most resumptions of one stream without progress in between.
const MAX_IDLE_RESUMES: u32 = 5;

/// Opens the stream (its first failure is an ordinary HTTP error), then
/// pumps it into the response body.
pub(crate) async fn respond(
    gateway: Arc<Gateway>,
    route: Route,
    request: DynamicMessage,
    metadata: MetadataMap,
    format: Format,
    slot: StreamSlot,
) -> Result<Response, ApiError> {
    let upstream = gateway
        .upstreams
        .server_streaming(route.service, &route.rpc, request.clone(), metadata.clone())
        .await?;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(pump(
        gateway, route, request, metadata, format, upstream, tx, slot,
    ));
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(
        chunks,
        Ok::<_, std::convert::Infallible>,
    ));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    gateway: Arc<Gateway>,
    route: Route,
    mut request: DynamicMessage,
    metadata: MetadataMap,
    format: Format,
    mut upstream: tonic::Streaming<DynamicMessage>,
    tx: mpsc::Sender<Bytes>,
    _slot: StreamSlot,
) {
    let config = &gateway.config;
    let deadline = tokio::time::Instant::now() + config.max_stream_duration;
    let mut heartbeat = tokio::time::interval(config.stream_heartbeat);
    heartbeat.tick().await;
    let mut last: Option<u64> = None;
    let mut idle_resumes = 0;
    loop {
        let next = tokio::select! {
            () = tx.closed() => return,
            () = gateway.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return,
            _ = heartbeat.tick() => {
                if tx.send(format.heartbeat()).await.is_err() {
                    return;
                }
                continue;
            }
            next = upstream.message() => next,
        };
        match next {
            Ok(Some(message)) => {
                idle_resumes = 0;
                let sequence = transcode::sequence_of(&message);
                if sequence.is_some() {
                    last = sequence;
                }
                let chunk = match transcode::response_json(&route, &message) {
                    Ok(json) => format.item(sequence, &json),
                    Err(error) => format.error(&error.body(&gateway.pool)),
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
                heartbeat.reset();
            }
            Ok(None) => {
                if let Some(end) = format.end() {
                    let _ = tx.send(end).await;
                }
                return;
            }
            Err(status) => {
                let can_resume = resumable(status.code())
                    && idle_resumes < MAX_IDLE_RESUMES
                    && last.is_some_and(|seq| transcode::set_after_sequence(&mut request, seq));
                if can_resume {
                    idle_resumes += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(idle_resumes))).await;
                    match gateway
                        .upstreams
                        .server_streaming(
                            route.service,
                            &route.rpc,
                            request.clone(),
                            metadata.clone(),
                        )
                        .await
                    {
                        Ok(resumed) => {
                            tracing::debug!(code = ?status.code(), "stream resumed");
                            upstream = resumed;
                            continue;
                        }
                        Err(again) => {
                            let _ = tx
                                .send(format.error(&status_json(&again, &gateway.pool)))
                                .await;
                            return;
                        }
                    }
                }
                let _ = tx
                    .send(format.error(&status_json(&status, &gateway.pool)))
                    .await;
                return;
            }
        }
    }
}
