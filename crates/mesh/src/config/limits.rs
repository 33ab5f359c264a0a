//! `[limits]`: limits shared by every server and client.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, in_range, positive};
use super::duration::duration_text;

/// Limits shared by every server and client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// Requests a server handles at once; more are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams one client connection may have open at once (every
    /// running task holds a stream between the orchestrator and its worker).
    pub max_concurrent_streams: u32,
    /// HTTP/2 connections a client opens to each service it calls.
    pub connections_per_service: usize,
    /// Default timeout of a unary call between services.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection to another service.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// How long a stopping server lets in-flight requests finish.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 512,
            max_concurrent_streams: 20_000,
            connections_per_service: 4,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

impl Limits {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "limits.max_message_bytes",
            self.max_message_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        in_range(
            "limits.max_concurrent_requests",
            self.max_concurrent_requests,
            1,
            100_000,
        )?;
        in_range(
            "limits.connections_per_service",
            self.connections_per_service,
            1,
            64,
        )?;
        in_range(
            "limits.max_concurrent_streams",
            self.max_concurrent_streams as usize,
            1,
            1_000_000,
        )?;
        positive("limits.request_timeout", self.request_timeout)?;
        positive("limits.connect_timeout", self.connect_timeout)?;
        Ok(())
    }
}
