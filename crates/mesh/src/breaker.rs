//! The circuit breaker every service uses: one state machine, here, over
//! any clock.
//!
//! After [`BreakerPolicy::failures`] consecutive failures a breaker opens and
//! refuses calls for [`BreakerPolicy::cool_down`]; then it is half-open and
//! admits exactly one probe. Admitting the probe holds the breaker open for
//! another cool-down, so concurrent callers are refused while it runs and a
//! probe whose outcome is never recorded (its caller went away) does not
//! wedge the breaker: the next probe passes a cool-down later. The probe's
//! success closes the breaker; its failure opens it again.
//!
//! The time type is the caller's: `tokio::time::Instant` in process (tests
//! pause it), milliseconds on the Redis server's clock for the router's
//! shared breakers, whose Lua scripts keep this machine's state
//! (`failures:open_until:probing`) and are checked against it.

use std::ops::Add;
use std::time::Duration;

/// When a breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a breaker (at least 1).
    pub failures: u32,
    /// How long an open breaker refuses calls before one probe.
    pub cool_down: Duration,
}

/// A breaker's state at some moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends (also while a probe runs).
    Open,
    /// The next call is a probe.
    HalfOpen,
}

/// One breaker. `T` is a point in time that a [`Duration`] can be added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker<T> {
    failures: u32,
    open_until: Option<T>,
    probing: bool,
}

impl<T> Default for Breaker<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Breaker<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    /// A closed breaker.
    pub fn new() -> Self {
        Self {
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// A breaker as stored elsewhere: consecutive failures, until when it is
    /// open (`None`: closed), and whether a probe was let through.
    pub fn from_parts(failures: u32, open_until: Option<T>, probing: bool) -> Self {
        Self {
            failures,
            open_until,
            probing,
        }
    }

    /// Consecutive failures recorded.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Until when the breaker refuses calls; `None` when closed.
    pub fn open_until(&self) -> Option<T> {
        self.open_until
    }

    /// Whether a probe was let through since the breaker last opened.
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// The state at `now`.
    pub fn state(&self, now: T) -> State {
        match self.open_until {
            None => State::Closed,
            Some(until) if now < until => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether a call may go out at `now`. A half-open breaker admits this
    /// call as its one probe and refuses others for a cool-down;
    /// `Err(until)` says when the next call may be admitted.
    pub fn admit(&mut self, policy: &BreakerPolicy, now: T) -> Result<(), T> {
        match self.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until),
            Some(_) => {
                self.open_until = Some(now + policy.cool_down);
                self.probing = true;
                Ok(())
            }
        }
    }

    /// Records a call's outcome at `now`; returns the state after it. A
    /// success closes the breaker; a failure reaching the threshold, or any
    /// failure while it is open or probing, opens it for a cool-down.
    pub fn record(&mut self, policy: &BreakerPolicy, success: bool, now: T) -> State {
        if success {
            *self = Self::new();
            return State::Closed;
        }
        self.fail(policy, now, false)
    }

    /// Opens the breaker at once, at `now` (a peer found unreachable need
    /// not fail `failures` calls first); returns the state after it.
    pub fn trip(&mut self, policy: &BreakerPolicy, now: T) -> State {
        self.fail(policy, now, true)
    }

    fn fail(&mut self, policy: &BreakerPolicy, now: T, trip: bool) -> State {
        let threshold = policy.failures.max(1);
        self.failures = self.failures.saturating_add(1);
        if trip {
            self.failures = self.failures.max(threshold);
        }
        if self.open_until.is_some() || self.failures >= threshold {
            self.open_until = Some(now + policy.cool_down);
        }
        self.probing = false;
        self.state(now)
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 3,
        cool_down: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_and_a_success_resets_the_count() {
        let mut b = Breaker::new();
        assert_eq!(b.record(&POLICY, false, Instant::now()), State::Closed);
        assert_eq!(b.record(&POLICY, false, Instant::now()), State::Closed);
        assert_eq!(b.record(&POLICY, true, Instant::now()), State::Closed);
        assert_eq!(b.failures(), 0, "the count restarted");
        for _ in 0..2 {
            b.record(&POLICY, false, Instant::now());
        }
        assert_eq!(b.record(&POLICY, false, Instant::now()), State::Open);
        let until = Instant::now() + POLICY.cool_down;
        assert_eq!(b.admit(&POLICY, Instant::now()), Err(until));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_one_probe() {
        let mut b = Breaker::new();
        assert_eq!(b.trip(&POLICY, Instant::now()), State::Open);
        tokio::time::advance(POLICY.cool_down).await;
        assert_eq!(b.state(Instant::now()), State::HalfOpen);
        let admitted = (0..10)
            .filter(|_| b.admit(&POLICY, Instant::now()).is_ok())
            .count();
        assert_eq!(admitted, 1, "one probe, however many callers");
        assert!(b.probing());
        assert_eq!(b.state(Instant::now()), State::Open, "while the probe runs");
        assert_eq!(b.record(&POLICY, true, Instant::now()), State::Closed);
        assert!(b.admit(&POLICY, Instant::now()).is_ok());
        assert!(b.admit(&POLICY, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_for_a_whole_cool_down() {
        let mut b = Breaker::new();
        b.trip(&POLICY, Instant::now());
        tokio::time::advance(POLICY.cool_down).await;
        assert!(b.admit(&POLICY, Instant::now()).is_ok());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.record(&POLICY, false, Instant::now()), State::Open);
        assert!(!b.probing());
        tokio::time::advance(POLICY.cool_down - Duration::from_millis(1)).await;
        assert!(b.admit(&POLICY, Instant::now()).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit(&POLICY, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_never_recorded_lets_the_next_through_a_cool_down_later() {
        let mut b = Breaker::new();
        b.trip(&POLICY, Instant::now());
        tokio::time::advance(POLICY.cool_down).await;
        assert!(b.admit(&POLICY, Instant::now()).is_ok());
        tokio::time::advance(POLICY.cool_down / 2).await;
        assert!(b.admit(&POLICY, Instant::now()).is_err());
        tokio::time::advance(POLICY.cool_down / 2).await;
        assert!(
            b.admit(&POLICY, Instant::now()).is_ok(),
            "a second probe, not a breaker stuck half-open"
        );
    }

    #[test]
    fn trip_counts_at_least_the_threshold_and_a_zero_threshold_means_one() {
        let policy = BreakerPolicy {
            failures: 0,
            cool_down: Duration::from_secs(1),
        };
        let mut b: Breaker<Instant> = Breaker::new();
        assert_eq!(b.record(&policy, false, Instant::now()), State::Open);
        let mut b: Breaker<Instant> = Breaker::new();
        b.trip(&POLICY, Instant::now());
        assert_eq!(b.failures(), POLICY.failures);
    }
}
