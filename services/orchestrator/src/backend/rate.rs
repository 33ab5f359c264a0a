//! Rate limiting of submissions: its own trait beside the task store, with
//! an in-process limiter ([`MemoryRateLimiter`](super::memory::MemoryRateLimiter))
//! and one in Redis shared by every replica
//! ([`RedisRateLimiter`](super::redis::RedisRateLimiter)). Both are GCRA,
//! as `amaos_mesh::rate` defines it.

use std::time::Duration;

use super::BackendError;

/// A GCRA rate limiter: one theoretical arrival time per key.
#[tonic::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// `None` when one more request under `key` is within `per_second`
    /// (with `burst`), and it is counted; else how long to wait (and
    /// nothing is counted).
    async fn check(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, BackendError>;
}
