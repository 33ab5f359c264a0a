//! `[gateway]`: the REST gateway (HTTP/JSON transcoded to the services'
//! gRPC, OpenAPI documents, the dashboard).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, addr, in_range, positive, service_endpoint, url};
use super::duration::duration_text;

/// The REST gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/healthz`); unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How clients reach it (printed by `amaos up`).
    pub url: String,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head, and how long an
    /// idle keep-alive connection stays open.
    #[serde(with = "duration_text")]
    pub header_timeout: Duration,
    /// Most streams (watches) one client address may hold open at once.
    pub max_streams_per_client: usize,
    /// How often a stream with nothing to say sends a heartbeat, so proxies
    /// keep it open.
    #[serde(with = "duration_text")]
    pub stream_heartbeat: Duration,
    /// Longest a stream stays open in all; a client resumes with
    /// `Last-Event-ID` (or `after_sequence`).
    #[serde(with = "duration_text")]
    pub max_stream_duration: Duration,
    /// Origins allowed to call the API from a browser (CORS); empty for
    /// none, which sends no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Serve the dashboard at `/`.
    pub dashboard: bool,
}
service_endpoint!(GatewayConfig);

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: addr(8080),
            admin_listen: Some(addr(9607)),
            url: url(8080),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(30),
            max_streams_per_client: 32,
            stream_heartbeat: Duration::from_secs(15),
            max_stream_duration: Duration::from_secs(3600),
            cors_origins: Vec::new(),
            dashboard: true,
        }
    }
}

impl GatewayConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "gateway.max_body_bytes",
            self.max_body_bytes,
            1024,
            256 * 1024 * 1024,
        )?;
        in_range(
            "gateway.max_header_bytes",
            self.max_header_bytes,
            8192,
            1024 * 1024,
        )?;
        positive("gateway.header_timeout", self.header_timeout)?;
        in_range(
            "gateway.max_streams_per_client",
            self.max_streams_per_client,
            1,
            100_000,
        )?;
        positive("gateway.stream_heartbeat", self.stream_heartbeat)?;
        positive("gateway.max_stream_duration", self.max_stream_duration)?;
        for origin in &self.cors_origins {
            let parsed = url::Url::parse(origin).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
            if parsed.is_none() && origin != "*" {
                return Err(ConfigError::new(
                    "gateway.cors_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path), nor `*`"),
                ));
            }
        }
        Ok(())
    }
}
