//! Rate limiting of submissions: its own trait beside the task store, with
//! an in-process limiter ([`MemoryRateLimiter`](super::memory::MemoryRateLimiter))
//! and one in Redis shared by every replica
//! ([`RedisRateLimiter`](super::redis::RedisRateLimiter)). Both are GCRA.

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

/// One step of GCRA: given the stored theoretical arrival time (seconds),
/// returns the new one, or how long to wait when over the limit.
pub fn gcra(tat: Option<f64>, now: f64, per_second: f64, burst: u32) -> Result<f64, Duration> {
    let interval = 1.0 / per_second.max(1e-9);
    let tolerance = interval * f64::from(burst.max(1));
    let tat = tat.unwrap_or(now).max(now);
    let allow_at = tat + interval - tolerance;
    // A microsecond of slack absorbs floating-point error at the boundary.
    if now + 1e-6 < allow_at {
        Err(Duration::from_secs_f64(allow_at - now))
    } else {
        Ok(tat + interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let (rate, burst) = (10.0, 3);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0.0, rate, burst).unwrap());
        }
        let wait = gcra(tat, 0.0, rate, burst).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(gcra(tat, 0.1, rate, burst).is_ok());
    }
}
