//! Circuit breakers: after `failure_threshold` consecutive failures a breaker
//! opens and refuses traffic for `cool_down`; then it lets one probe through
//! (half-open); the probe's success closes it, its failure opens it again.
//! A probe whose outcome is never reported does not wedge the breaker: the
//! next probe passes one cool-down after it. Time is `tokio::time`, so tests
//! control it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Traffic flows.
    Closed,
    /// Traffic is refused until the cool-down ends.
    Open,
    /// One probe may pass.
    HalfOpen,
}

#[derive(Clone, Debug)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// When the last probe was let through, while half-open.
    probing: Option<Instant>,
}

/// Breakers by key, bounded.
#[derive(Debug)]
pub struct Breakers {
    breakers: HashMap<String, Breaker>,
    threshold: u32,
    cool_down: Duration,
    max: usize,
}

impl Breakers {
    /// Breakers opening after `threshold` consecutive failures for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration, max: usize) -> Self {
        Self {
            breakers: HashMap::new(),
            threshold: threshold.max(1),
            cool_down,
            max,
        }
    }

    /// The state of `key` now.
    pub fn state(&self, key: &str) -> State {
        match self.breakers.get(key) {
            None => State::Closed,
            Some(b) => match b.open_until {
                None => State::Closed,
                Some(until) if Instant::now() < until => State::Open,
                Some(_) => State::HalfOpen,
            },
        }
    }

    /// Whether a call may go to `key` now; a half-open breaker admits one probe.
    pub fn admit(&mut self, key: &str) -> bool {
        match self.state(key) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                let cool_down = self.cool_down;
                match self.breakers.get_mut(key) {
                    Some(b) if b.probing.is_none_or(|at| at.elapsed() >= cool_down) => {
                        b.probing = Some(Instant::now());
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// When an open breaker lets a probe through, if it is open.
    pub fn retry_after(&self, key: &str) -> Option<Duration> {
        let until = self.breakers.get(key)?.open_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Records an outcome and returns the state after it.
    pub fn record(&mut self, key: &str, success: bool) -> State {
        if success {
            self.breakers.remove(key);
            return State::Closed;
        }
        if !self.breakers.contains_key(key) && self.breakers.len() >= self.max {
            // Forget closed breakers first; they carry only a failure count.
            self.breakers.retain(|_, b| b.open_until.is_some());
            if self.breakers.len() >= self.max {
                return State::Closed;
            }
        }
        let threshold = self.threshold;
        let cool_down = self.cool_down;
        let b = self.breakers.entry(key.to_owned()).or_insert(Breaker {
            failures: 0,
            open_until: None,
            probing: None,
        });
        b.failures = b.failures.saturating_add(1);
        if b.open_until.is_some() || b.failures >= threshold {
            // A failed probe, or the threshold reached: (re)open.
            b.open_until = Some(Instant::now() + cool_down);
            b.probing = None;
        }
        self.state(key)
    }

    /// Opens `key`'s breaker at once (a worker found unreachable need not
    /// fail `threshold` runs first).
    pub fn trip(&mut self, key: &str) -> State {
        for _ in 0..self.threshold {
            self.record(key, false);
        }
        self.state(key)
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

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_after_the_cool_down_and_closes_on_success() {
        let mut b = Breakers::new(3, Duration::from_secs(10), 100);
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
        let mut b = Breakers::new(1, Duration::from_secs(10), 100);
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
        let mut b = Breakers::new(5, Duration::from_secs(10), 100);
        assert_eq!(b.trip("w"), State::Open);
        assert!(!b.admit("w"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_a_success_resets_the_count() {
        let mut b = Breakers::new(2, Duration::from_secs(5), 100);
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
