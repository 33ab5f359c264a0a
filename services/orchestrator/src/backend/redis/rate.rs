//! The rate limiter in Redis, shared by every replica: `amaos_mesh::rate`'s
//! GCRA step as a script on the server's clock, one key per limited thing
//! (`P:rate:<key>`).

use std::time::Duration;

use amaos_mesh::rate::Rate;
use amaos_mesh::redis_conn::Conn;
use redis::Script;

use super::RedisBackend;
use crate::backend::{BackendError, RateLimiter};

/// GCRA in Redis: the theoretical arrival time of each key is a string
/// under `P:rate:<key>`, stepped by one script with the server's clock.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: Conn,
    prefix: String,
    /// One GCRA step with the server's clock.
    script: Script,
}

impl RedisBackend {
    /// A rate limiter over this backend's connection and prefix.
    pub fn rate_limiter(&self) -> RedisRateLimiter {
        RedisRateLimiter {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            script: Script::new(include_str!("lua/rate.lua")),
        }
    }
}

#[tonic::async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, BackendError> {
        let rate = Rate { per_second, burst };
        let (interval, tolerance) = (rate.interval(), rate.tolerance());
        let wait: String = self
            .script
            .key(format!("{}:rate:{key}", self.prefix))
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if wait.is_empty() {
            return Ok(None);
        }
        let seconds: f64 = wait.parse().unwrap_or(interval);
        Ok(Some(Duration::from_secs_f64(seconds.max(0.0))))
    }
}
