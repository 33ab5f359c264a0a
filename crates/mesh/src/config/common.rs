//! What every section shares: the error naming a key, the checks sections
//! make with it, the endpoint of a service and the default addresses.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    /// The dotted key, e.g. `router.listen`.
    pub key: String,
    /// What is wrong, and where the value came from when known.
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Where a service listens and how others reach it.
pub trait ServiceEndpoint {
    /// The gRPC listen address.
    fn listen(&self) -> SocketAddr;
    /// The admin HTTP listen address (`/metrics`, `/healthz`), if any.
    fn admin_listen(&self) -> Option<SocketAddr>;
    /// The URL other services use to reach it.
    fn url(&self) -> &str;
}

/// Implements [`ServiceEndpoint`] for a section with `listen`,
/// `admin_listen` and `url` fields.
macro_rules! service_endpoint {
    ($ty:ty) => {
        impl $crate::config::ServiceEndpoint for $ty {
            fn listen(&self) -> ::std::net::SocketAddr {
                self.listen
            }
            fn admin_listen(&self) -> Option<::std::net::SocketAddr> {
                self.admin_listen
            }
            fn url(&self) -> &str {
                &self.url
            }
        }
    };
}
pub(super) use service_endpoint;

/// Where the orchestrator keeps tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process only.
    Memory,
    /// In Redis, shared by every replica.
    Redis,
}

/// A loopback address, the default of every listener.
pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A loopback URL, the default of every service's `url`.
pub(super) fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub(super) fn in_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

pub(super) fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(key, "must be longer than zero"))
    } else {
        Ok(())
    }
}

pub(super) fn rate(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (0.0..=10_000_000.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is outside 0..=10000000 (0 turns the limit off)"),
        ))
    }
}

pub(super) fn redis_url(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.starts_with("redis://")
        || value.starts_with("rediss://")
        || value.starts_with("unix://")
    {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("`{value}` must be a redis://, rediss:// or unix:// URL"),
        ))
    }
}

pub(super) fn http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| ConfigError::new(key, format!("`{value}` is not a URL: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("`{value}` must be an http:// or https:// URL"),
        )),
    }
}

/// A figment error as one line naming the key and where the value came from.
pub(super) fn from_figment(error: figment::Error) -> ConfigError {
    let key = if error.path.is_empty() {
        "config".to_owned()
    } else {
        error.path.join(".")
    };
    let source = error.metadata.as_ref().map(|meta| match &meta.source {
        Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
        _ if meta.name.contains("environment") => {
            let var: Vec<String> = error.path.iter().map(|p| p.to_uppercase()).collect();
            format!(" (from environment variable AMAOS_{})", var.join("__"))
        }
        _ => format!(" (from {})", meta.name),
    });
    ConfigError::new(
        &key,
        format!("{}{}", error.kind, source.unwrap_or_default()),
    )
}
