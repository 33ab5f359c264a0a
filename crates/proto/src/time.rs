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

/// The point in time a protobuf `Timestamp` names; `None` before 1970.
pub fn system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    if ts.seconds < 0 || ts.nanos < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// A `std` duration from a protobuf `Duration`; `None` when negative.
pub fn duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A protobuf `Duration` from a `std` duration.
pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
