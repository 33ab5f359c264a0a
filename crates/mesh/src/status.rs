//! Building `tonic::Status` values with rich error details (google.rpc
//! `BadRequest`, `RetryInfo`), so any gRPC client can read which
//! field was wrong or when to retry.

use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT naming the offending field, with a `BadRequest` detail.
pub fn invalid_field(field: &str, description: impl Into<String>) -> tonic::Status {
    let description = description.into();
    let message = format!("{field}: {description}");
    tonic::Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// INVALID_ARGUMENT with one `BadRequest` violation per `(field, description)`.
pub fn invalid_fields(
    message: impl Into<String>,
    violations: Vec<(String, String)>,
) -> tonic::Status {
    let violations = violations
        .into_iter()
        .map(|(field, description)| tonic_types::FieldViolation::new(field, description))
        .collect::<Vec<_>>();
    tonic::Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

/// RESOURCE_EXHAUSTED with a `RetryInfo` detail saying when to try again.
pub fn exhausted_retry_after(message: impl Into<String>, retry_after: Duration) -> tonic::Status {
    tonic::Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// RESOURCE_EXHAUSTED with a `QuotaFailure` detail naming the quota
/// (`subject`, e.g. the config key that sets it) and what is over.
pub fn exhausted_quota(
    message: impl Into<String>,
    subject: &str,
    description: &str,
) -> tonic::Status {
    tonic::Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_quota_failure_violation(subject, description),
    )
}

/// `code` with an `ErrorInfo` detail: a machine-readable `reason` within
/// `domain` (e.g. A2A's `TASK_NOT_FOUND` in `a2a-protocol.org`).
pub fn with_reason(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    domain: &str,
) -> tonic::Status {
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, domain, std::collections::HashMap::new()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_carries_a_bad_request_violation() {
        let status = invalid_field("team.spec_yaml", "line 3: unknown field `agnets`");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "team.spec_yaml");
        assert!(status.message().contains("line 3"));
    }
}
