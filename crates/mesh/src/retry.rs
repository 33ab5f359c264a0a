//! Waiting before trying again, written once: exponential backoff with a
//! cap and a choice of jitter, and the `Retry-After` a server may send
//! instead.
//!
//! Every retry loop of the mesh — task stages, waiting for a worker, model
//! calls, claiming work, worker registration, polls of a pending tool call —
//! takes its waits from a [`Backoff`]; they differ only in their numbers and
//! jitter.

use std::time::{Duration, SystemTime};

/// How the wait is spread below its ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// The ceiling itself: waits are predictable (callers that are few, or
    /// whose peers already spread their calls).
    None,
    /// Uniform over the upper half of the ceiling: spread, but never much
    /// shorter than the schedule.
    Equal,
    /// Uniform from zero to the ceiling: the widest spread.
    Full,
}

/// An exponential backoff: the `n`th wait (from 1) has the ceiling
/// `first × multiplier^(n−1)`, at most `max`, spread by `jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub first: Duration,
    /// The ceiling of any wait.
    pub max: Duration,
    /// Growth of the ceiling per wait (at least 1).
    pub multiplier: f64,
    /// How a wait is drawn below its ceiling.
    pub jitter: Jitter,
}

impl Backoff {
    /// Doubling from `first` up to `max`, without jitter.
    pub const fn doubling(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            multiplier: 2.0,
            jitter: Jitter::None,
        }
    }

    /// The same backoff with `jitter`.
    pub const fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// The ceiling of the `n`th wait (from 1).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exponent = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling = self.first.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        // `min` before converting: a large exponent is infinite, not a panic.
        Duration::from_secs_f64(ceiling.min(self.max.as_secs_f64()).max(0.0))
    }

    /// The `n`th wait (from 1), its jitter drawn from `unit` (in 0..=1).
    pub fn wait_with(&self, n: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(n);
        let unit = if unit.is_nan() {
            1.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Equal => ceiling.mul_f64(0.5 + 0.5 * unit),
            Jitter::Full => ceiling.mul_f64(unit),
        }
    }

    /// The `n`th wait (from 1), with random jitter.
    pub fn wait(&self, n: u32) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(n),
            _ => self.wait_with(n, rand::random::<f64>()),
        }
    }
}

/// The wait a `Retry-After` header asks for, read at `now`: delay seconds
/// (`120`, or a decimal a few servers send) or an HTTP date (`Wed, 21 Oct
/// 2015 07:28:00 GMT`; a date already past is no wait); `None` when it is
/// neither. Callers bound the result.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        // Too many seconds for a Duration is as good as forever.
        return seconds
            .is_finite()
            .then(|| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceilings_grow_by_the_multiplier_up_to_the_cap() {
        let b = Backoff::doubling(MS(100), MS(1000));
        let waits: Vec<Duration> = (1..=6).map(|n| b.wait(n)).collect();
        assert_eq!(
            waits,
            [MS(100), MS(200), MS(400), MS(800), MS(1000), MS(1000)]
        );
        assert_eq!(b.wait(u32::MAX), MS(1000), "no overflow far out");
        assert_eq!(b.wait(0), MS(100), "0 is read as the first");
        let triple = Backoff {
            multiplier: 3.0,
            ..b
        };
        assert_eq!(triple.ceiling(3), MS(900));
    }

    #[test]
    fn equal_jitter_spreads_over_the_upper_half() {
        let b = Backoff::doubling(MS(100), MS(1000)).with_jitter(Jitter::Equal);
        assert_eq!(b.wait_with(1, 0.0), MS(50));
        assert_eq!(b.wait_with(1, 1.0), MS(100));
        assert_eq!(b.wait_with(2, 0.5), MS(150));
        for _ in 0..100 {
            let w = b.wait(2);
            assert!(w >= MS(100) && w <= MS(200), "{w:?}");
        }
    }

    #[test]
    fn full_jitter_spreads_from_zero() {
        let b = Backoff::doubling(MS(100), MS(1000)).with_jitter(Jitter::Full);
        assert_eq!(b.wait_with(1, 0.0), Duration::ZERO);
        assert_eq!(b.wait_with(2, 0.25), MS(50));
        assert_eq!(b.wait_with(2, 7.0), MS(200), "unit is clamped");
        assert_eq!(b.wait_with(2, f64::NAN), MS(200));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("1.5", now), Some(MS(1500)));
        assert_eq!(retry_after("-3", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // The obsolete forms HTTP still requires readers to accept.
        assert_eq!(
            retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past"
        );
        assert_eq!(retry_after("1e300", now), Some(Duration::MAX));
        for bad in ["", "soon", "inf", "NaN", "1e400"] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
    }
}
