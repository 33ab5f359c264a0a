//! `[log]` and `[telemetry]`: how a process logs and where its traces go.

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, http_url};

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `amaos_agents=debug,info`.
    pub level: String,
}

/// Tracing export.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset for none.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.level
            .parse::<tracing_subscriber::EnvFilter>()
            .map_err(|e| ConfigError::new("log.level", format!("not a valid filter: {e}")))?;
        Ok(())
    }
}

impl TelemetryConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            http_url("telemetry.otlp_endpoint", endpoint)?;
        }
        Ok(())
    }
}
