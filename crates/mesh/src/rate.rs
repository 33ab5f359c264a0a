//! Rate limits, written once: GCRA (the generic cell rate algorithm), one
//! theoretical arrival time per limited key.
//!
//! [`gcra`] is one step of the algorithm; [`Limiter`] applies it to keys in
//! this process (the orchestrator's in-process submission limiter, the
//! tools service's calls per tenant). The orchestrator's Redis limiter runs
//! the same step as a Lua script on the server's clock, with the
//! parameters of [`Rate::interval`] and [`Rate::tolerance`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests per second, on average.
    pub per_second: f64,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `count` per minute, all of them allowed at once.
    pub fn per_minute(count: u32) -> Self {
        Self {
            per_second: f64::from(count) / 60.0,
            burst: count,
        }
    }

    /// Seconds between requests at the average rate.
    pub fn interval(&self) -> f64 {
        1.0 / self.per_second.max(1e-9)
    }

    /// How far ahead of now (seconds) the arrival time may run: the burst.
    pub fn tolerance(&self) -> f64 {
        self.interval() * f64::from(self.burst.max(1))
    }
}

/// One step of GCRA: given the stored theoretical arrival time (seconds on
/// any clock) and `now` on the same clock, returns the new arrival time, or
/// how long to wait when over the limit (and nothing is counted).
pub fn gcra(tat: Option<f64>, now: f64, rate: Rate) -> Result<f64, Duration> {
    let interval = rate.interval();
    let tat = tat.unwrap_or(now).max(now);
    let allow_at = tat + interval - rate.tolerance();
    // A microsecond of slack absorbs floating-point error at the boundary.
    if now + 1e-6 < allow_at {
        Err(Duration::from_secs_f64(allow_at - now))
    } else {
        Ok(tat + interval)
    }
}

/// Keys kept before those whose arrival time has passed are dropped.
const MAX_KEYS: usize = 100_000;

/// GCRA per key in this process, on `tokio::time` (tests pause it);
/// bounded: at [`MAX_KEYS`] keys, those back at rest are forgotten.
#[derive(Debug)]
pub struct Limiter {
    /// Theoretical arrival times, in seconds since `epoch`.
    tats: Mutex<HashMap<String, f64>>,
    epoch: Instant,
}

impl Limiter {
    /// A limiter that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            tats: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Counts one request under `key` when it is within `rate`; else how
    /// long until it would be (and nothing is counted).
    pub fn check(&self, key: &str, rate: Rate) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_secs_f64();
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let next = gcra(tats.get(key).copied(), now, rate)?;
        if tats.len() >= MAX_KEYS {
            tats.retain(|_, t| *t > now);
        }
        tats.insert(key.to_owned(), next);
        Ok(())
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0.0, rate).unwrap());
        }
        let wait = gcra(tat, 0.0, rate).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(gcra(tat, 0.1, rate).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_keeps_keys_apart_and_refills_at_the_rate() {
        let limiter = Limiter::new();
        let rate = Rate::per_minute(2);
        assert!(limiter.check("a", rate).is_ok());
        assert!(limiter.check("a", rate).is_ok());
        let wait = limiter.check("a", rate).unwrap_err();
        assert!((wait.as_secs_f64() - 30.0).abs() < 1e-6, "{wait:?}");
        assert!(limiter.check("b", rate).is_ok(), "another key");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(limiter.check("a", rate).is_ok());
        assert!(limiter.check("a", rate).is_err());
    }
}
