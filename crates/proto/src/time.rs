//! Conversions between `std::time` and the protobuf well-known time types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A protobuf `Timestamp` for a point in time.
pub fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The latest instant a timestamp from the network may name: the end of the
/// year 9999, as the protobuf `Timestamp` documentation allows.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The point in time a protobuf `Timestamp` names; `None` before 1970, after
/// the year 9999, or with nanoseconds out of range — never a panic.
pub fn system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    if !(0..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// A `std` duration from a protobuf `Duration`; `None` when negative or with
/// nanoseconds out of range. Callers bound it before adding it to a time.
pub fn duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// `at + by`, or `None` when it would overflow the clock.
pub fn later(at: SystemTime, by: Duration) -> Option<SystemTime> {
    at.checked_add(by)
}

/// A protobuf `Duration` from a `std` duration.
pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any timestamp or duration a caller sends converts or is refused;
        /// none panics, and what converts is within the documented range.
        #[test]
        fn any_wire_time_converts_or_is_refused(seconds in any::<i64>(), nanos in any::<i32>()) {
            if let Some(at) = system_time(&prost_types::Timestamp { seconds, nanos }) {
                prop_assert!(seconds >= 0 && seconds <= MAX_TIMESTAMP_SECONDS);
                prop_assert!(at >= UNIX_EPOCH);
            }
            if let Some(d) = duration(&prost_types::Duration { seconds, nanos }) {
                prop_assert_eq!(d.as_secs(), seconds as u64);
                let _ = later(SystemTime::now(), d);
            }
        }
    }

    #[test]
    fn the_extremes_are_refused_not_panics() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(system_time(&ts(i64::MAX, 999_999_999)), None);
        assert_eq!(system_time(&ts(0, 1_000_000_000)), None);
        assert_eq!(system_time(&ts(-1, 0)), None);
        assert!(system_time(&ts(MAX_TIMESTAMP_SECONDS, 999_999_999)).is_some());
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration(&d(1, -1)), None);
        assert_eq!(duration(&d(0, 1_000_000_000)), None);
        assert_eq!(later(SystemTime::now(), Duration::MAX), None);
    }
}
