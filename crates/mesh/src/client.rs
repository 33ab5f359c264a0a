//! Channels to other AMAOS services.
//!
//! A [`MeshChannel`] connects lazily with the configured connect timeout and,
//! on every call, injects the current trace context (`traceparent`) and sets
//! `grpc-timeout` to the smallest of: the timeout the caller set on the
//! request, what is left of the inbound request's deadline, and the default
//! request timeout. The response (headers) is awaited at most that long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::config::Limits;
use crate::{context, telemetry};

/// A channel to another service, with deadline and trace propagation. It
/// spreads calls over `limits.connections_per_service` HTTP/2 connections,
/// so thousands of long streams (one per running task) do not share one.
#[derive(Clone, Debug)]
pub struct MeshChannel {
    connections: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
    inner: Channel,
    default_timeout: Duration,
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid service URL `{url}`: {source}")]
pub struct ChannelError {
    url: String,
    #[source]
    source: tonic::transport::Error,
}

/// Builds a lazily connecting channel to `url`.
pub fn channel(url: &str, limits: &Limits) -> Result<MeshChannel, ChannelError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|source| ChannelError {
        url: url.to_owned(),
        source,
    })?;
    let endpoint = endpoint
        .connect_timeout(limits.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let connections: Arc<[Channel]> = (0..limits.connections_per_service.max(1))
        .map(|_| endpoint.connect_lazy())
        .collect();
    Ok(MeshChannel {
        inner: connections[0].clone(),
        connections,
        next: Arc::new(AtomicUsize::new(0)),
        default_timeout: limits.request_timeout,
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Round robin: each call is readied (and then made) on the next connection.
        if self.connections.len() > 1 {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
            self.inner = self.connections[i].clone();
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        telemetry::inject_current(request.headers_mut());
        let requested = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout);
        let timeout = [requested, context::remaining(), Some(self.default_timeout)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.default_timeout);
        if let Ok(value) = http::HeaderValue::from_str(&context::format_grpc_timeout(timeout)) {
            request.headers_mut().insert("grpc-timeout", value);
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(response) => response.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "no response within {}",
                    humantime::format_duration(timeout)
                ))) as BoxError),
            }
        })
    }
}
