//! The in-process rate limiter: `amaos_mesh::rate`'s GCRA per key, over
//! `tokio::time`, bounded.

use std::time::Duration;

use amaos_mesh::rate::{Limiter, Rate};

use crate::backend::{BackendError, RateLimiter};

/// GCRA in process: nothing is shared with other replicas.
#[derive(Default)]
pub struct MemoryRateLimiter {
    limiter: Limiter,
}

impl MemoryRateLimiter {
    /// A limiter that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[tonic::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, BackendError> {
        Ok(self.limiter.check(key, Rate { per_second, burst }).err())
    }
}
