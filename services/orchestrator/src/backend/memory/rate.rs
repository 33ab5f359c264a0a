//! The in-process rate limiter: GCRA over `tokio::time`, one theoretical
//! arrival time per key, bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{BackendError, RateLimiter, gcra};

/// Keys kept before those whose arrival time has passed are dropped.
const MAX_KEYS: usize = 100_000;

/// GCRA in process: nothing is shared with other replicas.
pub struct MemoryRateLimiter {
    /// Theoretical arrival times, in seconds since `epoch`.
    rates: Mutex<HashMap<String, f64>>,
    epoch: Instant,
}

impl MemoryRateLimiter {
    /// A limiter that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            rates: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
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
        let now = self.epoch.elapsed().as_secs_f64();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let tat = rates.get(key).copied();
        match gcra(tat, now, per_second, burst) {
            Ok(next) => {
                if rates.len() >= MAX_KEYS {
                    rates.retain(|_, t| *t > now);
                }
                rates.insert(key.to_owned(), next);
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }
}
