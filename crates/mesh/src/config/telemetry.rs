//! `[log]` and `[telemetry]`: how a process logs and where its traces go.

use std::collections::BTreeMap;

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

/// Tracing export, and the bounds on metric labels.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset for none.
    pub otlp_endpoint: Option<String>,
    /// Tenants whose id may be a metric label value. Empty: the first
    /// `metric_label_limit` tenants a process sees; the rest are `other`.
    pub metric_tenants: Vec<String>,
    /// Teams whose name may be a metric label value, as for tenants.
    pub metric_teams: Vec<String>,
    /// With no allow-list, how many distinct values of one label (tenant,
    /// team, tool) a process reports before it reports `other`.
    pub metric_label_limit: usize,
    /// A tenant's class (`gold`, `free`, …) for the SLO metrics; tenants
    /// not listed are `standard`.
    pub tenant_classes: BTreeMap<String, String>,
}

/// The most `telemetry.metric_label_limit` may be: each value is a series
/// in every family that carries the label.
pub const MAX_METRIC_LABEL_LIMIT: usize = 1_000;

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            metric_tenants: Vec::new(),
            metric_teams: Vec::new(),
            metric_label_limit: 20,
            tenant_classes: BTreeMap::new(),
        }
    }
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
        if self.metric_label_limit > MAX_METRIC_LABEL_LIMIT {
            return Err(ConfigError::new(
                "telemetry.metric_label_limit",
                format!("at most {MAX_METRIC_LABEL_LIMIT}"),
            ));
        }
        for (key, list) in [
            ("telemetry.metric_tenants", &self.metric_tenants),
            ("telemetry.metric_teams", &self.metric_teams),
        ] {
            if list.len() > MAX_METRIC_LABEL_LIMIT {
                return Err(ConfigError::new(
                    key,
                    format!("at most {MAX_METRIC_LABEL_LIMIT} entries"),
                ));
            }
        }
        let classes: std::collections::BTreeSet<&String> = self.tenant_classes.values().collect();
        if classes.len() > 20 {
            return Err(ConfigError::new(
                "telemetry.tenant_classes",
                "at most 20 distinct classes",
            ));
        }
        if let Some(class) = classes.iter().find(|c| !valid_class(c)) {
            return Err(ConfigError::new(
                "telemetry.tenant_classes",
                format!("`{class}` is not a class name (letters, digits, `_` and `-`, 1-32)"),
            ));
        }
        Ok(())
    }
}

fn valid_class(class: &str) -> bool {
    (1..=32).contains(&class.len())
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
