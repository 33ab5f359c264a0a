//! The router's circuit breakers, per worker and per team: a bounded map
//! of [`amaos_mesh::breaker::Breaker`]s on `tokio::time`, so tests control
//! time. The state machine (threshold, cool-down, one probe per cool-down
//! when half-open) is the mesh's; this module only keys and bounds it.

use std::collections::HashMap;
use std::time::Duration;

pub use amaos_mesh::breaker::State;
use amaos_mesh::breaker::{Breaker, BreakerPolicy};
use tokio::time::Instant;

/// Breakers by key, bounded.
#[derive(Debug)]
pub struct Breakers {
    breakers: HashMap<String, Breaker<Instant>>,
    policy: BreakerPolicy,
    max: usize,
}

impl Breakers {
    /// Breakers following `policy`, at most `max` of them remembered.
    pub fn new(policy: BreakerPolicy, max: usize) -> Self {
        Self {
            breakers: HashMap::new(),
            policy,
            max,
        }
    }

    /// The state of `key` now.
    pub fn state(&self, key: &str) -> State {
        self.breakers
            .get(key)
            .map_or(State::Closed, |b| b.state(Instant::now()))
    }

    /// Whether a call may go to `key` now; a half-open breaker admits one probe.
    pub fn admit(&mut self, key: &str) -> bool {
        let policy = self.policy;
        self.breakers
            .get_mut(key)
            .is_none_or(|b| b.admit(&policy, Instant::now()).is_ok())
    }

    /// How long until `key` admits a call, if it refuses calls now.
    pub fn retry_after(&self, key: &str) -> Option<Duration> {
        let until = self.breakers.get(key)?.open_until()?;
        until.checked_duration_since(Instant::now())
    }

    /// Records an outcome and returns the state after it.
    pub fn record(&mut self, key: &str, success: bool) -> State {
        if success {
            self.breakers.remove(key);
            return State::Closed;
        }
        let policy = self.policy;
        match self.entry(key) {
            Some(b) => b.record(&policy, false, Instant::now()),
            None => State::Closed,
        }
    }

    /// Opens `key`'s breaker at once (a worker found unreachable need not
    /// fail `threshold` runs first).
    pub fn trip(&mut self, key: &str) -> State {
        let policy = self.policy;
        match self.entry(key) {
            Some(b) => b.trip(&policy, Instant::now()),
            None => State::Closed,
        }
    }

    /// `key`'s breaker, made when there is room for it.
    fn entry(&mut self, key: &str) -> Option<&mut Breaker<Instant>> {
        if !self.breakers.contains_key(key) && self.breakers.len() >= self.max {
            // Forget closed breakers first; they carry only a failure count.
            self.breakers.retain(|_, b| b.open_until().is_some());
            if self.breakers.len() >= self.max {
                return None;
            }
        }
        Some(self.breakers.entry(key.to_owned()).or_default())
    }

    /// Keys whose breaker is open or half-open.
    pub fn tripped(&self) -> impl Iterator<Item = (&str, State)> {
        self.breakers
            .keys()
            .map(|k| (k.as_str(), self.state(k)))
            .filter(|(_, s)| *s != State::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures: u32, cool_down_secs: u64) -> BreakerPolicy {
        BreakerPolicy {
            failures,
            cool_down: Duration::from_secs(cool_down_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_after_the_cool_down_and_closes_on_success() {
        let mut b = Breakers::new(policy(3, 10), 100);
        assert_eq!(b.record("w", false), State::Closed);
        assert_eq!(b.record("w", false), State::Closed);
        assert_eq!(b.record("w", false), State::Open);
        assert!(!b.admit("w"));
        assert_eq!(b.retry_after("w"), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state("w"), State::HalfOpen);
        assert!(b.admit("w"), "one probe passes");
        assert!(!b.admit("w"), "only one");
        assert_eq!(b.record("w", true), State::Closed);
        assert!(b.admit("w"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_never_reported_lets_another_through_a_cool_down_later() {
        let mut b = Breakers::new(policy(1, 10), 100);
        assert_eq!(b.record("w", false), State::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.admit("w"), "the probe passes");
        assert!(!b.admit("w"));
        // Its outcome is lost (the orchestrator that routed it died).
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.admit("w"));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            b.admit("w"),
            "a second probe, not a breaker stuck half-open"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn trip_opens_at_once() {
        let mut b = Breakers::new(policy(5, 10), 100);
        assert_eq!(b.trip("w"), State::Open);
        assert!(!b.admit("w"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_a_success_resets_the_count() {
        let mut b = Breakers::new(policy(2, 5), 100);
        b.record("w", false);
        assert_eq!(b.record("w", true), State::Closed);
        assert_eq!(b.record("w", false), State::Closed, "the count restarted");
        assert_eq!(b.record("w", false), State::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.admit("w"));
        assert_eq!(b.record("w", false), State::Open);
        assert!(!b.admit("w"));
    }
}
