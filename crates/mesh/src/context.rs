//! The deadline of the request being served, carried as a task-local so that
//! calls made while serving it inherit what is left of it (`grpc-timeout`).

use std::time::{Duration, Instant};

tokio::task_local! {
    /// The deadline of the inbound request, when it had one.
    pub(crate) static DEADLINE: Option<Instant>;
}

/// The time left before the inbound request's deadline, if serving one with a deadline.
pub(crate) fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| *deadline)
        .ok()
        .flatten()
        .map(|d| d.saturating_duration_since(Instant::now()))
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` header value (at most 8 digits).
pub(crate) fn format_grpc_timeout(timeout: Duration) -> String {
    let micros = timeout.as_micros();
    if micros < 100_000_000 {
        format!("{}u", micros.max(1))
    } else if timeout.as_millis() < 100_000_000 {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips() {
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(100_000),
        ] {
            let parsed = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            assert!(
                parsed.abs_diff(d) < Duration::from_millis(1),
                "{d:?} -> {parsed:?}"
            );
        }
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[tokio::test]
    async fn remaining_is_scoped_to_the_request() {
        assert_eq!(remaining(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = DEADLINE
            .scope(Some(deadline), async { remaining() })
            .await
            .unwrap();
        assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9));
    }
}
