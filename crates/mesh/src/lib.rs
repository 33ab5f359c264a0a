//! What every AMAOS service shares, written once.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration (defaults → file → `AMAOS_*`
//!   environment), validated once at start.
//! - [`telemetry`]: structured logs, OpenTelemetry tracing (OTLP when an
//!   endpoint is configured) and W3C trace-context propagation.
//! - [`metrics`]: per-service Prometheus metrics and the admin HTTP endpoint.
//! - [`server`]: the one way a service is served: health, reflection, load
//!   shedding, metrics, context propagation and a bounded drain.
//! - [`client`]: channels to other services with timeouts and deadline and
//!   trace-context propagation.
//! - [`api_client`]: the HTTP client for model providers' APIs (chat and
//!   embeddings): keys from the secret store, retries, bounded bodies.
//! - [`caller`]: who is calling, and how the identity travels on.
//! - [`token`]: EdDSA-signed tokens, verified locally with keys from auth.
//! - [`identity`]: services' own identities (service tokens) between each other.
//! - [`authn`]: the caller of a request from an API key (checked by auth,
//!   cached) or a token (verified locally).
//! - [`policy`]: which role may do what.
//! - [`live`]: whether a run token's attempt still runs (asked of the
//!   orchestrator, cached).
//! - [`secrets`]: the secret stores (a file and environment, or Vault).
//! - [`audit`]: the HMAC-chained audit trail every service appends to.
//! - [`seal`]: envelope encryption of data at rest.
//! - [`tls`]: the transport modes, mesh identities and the development PKI.
//! - [`breaker`]: the circuit breaker state machine (one probe at a time
//!   when half-open) the router and the agents' model aliases share.
//! - [`status`]: building `tonic::Status` values with rich error details.
//! - [`rate`]: rate limits by GCRA, per key.
//! - [`redis_conn`]: the one way a backend connects to Redis.
//! - [`retry`]: exponential backoff with jitter, and `Retry-After`.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`process`]: the life of a one-service binary (config, bind, serve, drain).

pub mod api_client;
pub mod approval;
pub mod audit;
pub mod authn;
pub mod breaker;
pub mod caller;
pub mod client;
pub mod config;
mod context;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod rate;
pub mod redis_conn;
pub mod retry;
pub mod seal;
pub mod secrets;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use config::Config;

/// The error type services return from `serve`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh, time-ordered id (UUIDv7) as text.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Installs ring as the process's rustls crypto provider, once. HTTP clients
/// built on rustls without a provider of their own (Vault, MCP over HTTP)
/// need one; calling this again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
