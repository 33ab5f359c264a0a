//! The orchestrator's errors and their one mapping to gRPC status codes.

use amaos_mesh::status;
use amaos_teams::SpecErrors;

/// What can go wrong in the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// No API key was presented.
    #[error("missing credentials: send `authorization: Bearer <api key>`")]
    MissingCredentials,
    /// The API key is invalid, revoked or expired.
    #[error("invalid API key")]
    InvalidKey,
    /// The caller's roles do not allow the action.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The inline team spec is invalid.
    #[error("team.spec_yaml: {0}")]
    InvalidSpec(SpecErrors),
    /// The audit trail cannot be written: privileged actions are refused.
    #[error("{0}")]
    AuditDown(String),
    /// The task does not exist in the caller's tenant.
    #[error("task `{0}` not found")]
    TaskNotFound(String),
    /// A decision on an approval that is not pending (decided, expired, of
    /// an older attempt, or the task waits for none).
    #[error("{0}")]
    StaleDecision(String),
    /// The task store failed or is full.
    #[error("{0}")]
    Backend(crate::backend::BackendError),
    /// A submission rate was exceeded.
    #[error("{scope} is over its submission rate; retry after {retry_after:?}")]
    RateLimited {
        /// Which limit.
        scope: String,
        /// When a retry is within the rate.
        retry_after: std::time::Duration,
    },
    /// A monthly budget is spent.
    #[error(
        "{scope} has spent ${spent:.2} of its monthly budget of ${limit:.2} ({key}); it renews on the first of next month (UTC)"
    )]
    OverBudget {
        /// Whose budget (`tenant `acme``, `team `research` of tenant `acme``).
        scope: String,
        /// Spent this month, in US dollars.
        spent: f64,
        /// The cap, in US dollars.
        limit: f64,
        /// The config key that sets it.
        key: String,
    },
    /// No worker has declared the team (the router's registry has none).
    #[error("router: no worker serves team `{0}`")]
    TeamNotServed(String),
    /// A service the orchestrator depends on answered with an error.
    #[error("{service}: {status}")]
    Dependency {
        /// Which service.
        service: &'static str,
        /// What it said.
        status: tonic::Status,
    },
}

impl From<OrchestratorError> for tonic::Status {
    fn from(error: OrchestratorError) -> Self {
        let message = error.to_string();
        match error {
            OrchestratorError::MissingCredentials | OrchestratorError::InvalidKey => {
                tonic::Status::unauthenticated(message)
            }
            OrchestratorError::Forbidden(_) => tonic::Status::permission_denied(message),
            OrchestratorError::InvalidArgument { field, message } => {
                status::invalid_field(field, message)
            }
            OrchestratorError::InvalidSpec(errors) => status::invalid_fields(
                message,
                errors
                    .0
                    .iter()
                    .map(|e| (e.path_within("team.spec_yaml"), e.to_string()))
                    .collect(),
            ),
            OrchestratorError::TaskNotFound(_) => tonic::Status::not_found(message),
            OrchestratorError::StaleDecision(_) => tonic::Status::failed_precondition(message),
            OrchestratorError::AuditDown(_) => tonic::Status::unavailable(message),
            OrchestratorError::Backend(crate::backend::BackendError::Full(_)) => {
                tonic::Status::resource_exhausted(message)
            }
            OrchestratorError::Backend(crate::backend::BackendError::Unavailable(_)) => {
                tonic::Status::unavailable(message)
            }
            OrchestratorError::RateLimited { retry_after, .. } => {
                status::exhausted_retry_after(message, retry_after)
            }
            OrchestratorError::TeamNotServed(_) => tonic::Status::not_found(message),
            OrchestratorError::OverBudget { ref key, .. } => {
                status::exhausted_quota(message.clone(), key, &message)
            }
            // The message says which service spoke; the code is classified.
            OrchestratorError::Dependency { service, status } => tonic::Status::new(
                dependency_code(status.code()),
                format!("{service}: {}", status.message()),
            ),
        }
    }
}

/// What a dependency's answer means to the orchestrator's caller. Answers
/// about the request itself (NOT_FOUND for an unknown team or task, the
/// dependency out of capacity or time, the call cancelled) keep their code.
/// Answers about the orchestrator's own call — its credentials refused, a
/// request the dependency found malformed, a method it lacks — are not the
/// caller's doing: INTERNAL. A failure of the dependency itself is UNAVAILABLE.
fn dependency_code(code: tonic::Code) -> tonic::Code {
    use tonic::Code;
    match code {
        Code::NotFound
        | Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Cancelled => code,
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists
        | Code::Unimplemented
        | Code::Ok => Code::Internal,
        Code::Unknown | Code::Internal | Code::Aborted | Code::DataLoss => Code::Unavailable,
    }
}

impl From<crate::backend::BackendError> for tonic::Status {
    fn from(error: crate::backend::BackendError) -> Self {
        OrchestratorError::Backend(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn violations(yaml: &str) -> Vec<String> {
        let errors = amaos_teams::parse(yaml).unwrap_err();
        let status = tonic::Status::from(OrchestratorError::InvalidSpec(errors));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn a_dependency_refusing_the_orchestrator_is_not_the_callers_fault() {
        let dependency = |status: tonic::Status| {
            tonic::Status::from(OrchestratorError::Dependency {
                service: "router",
                status,
            })
        };
        for refused in [
            tonic::Status::permission_denied("no"),
            tonic::Status::unauthenticated("no"),
            tonic::Status::invalid_argument("bad"),
        ] {
            assert_eq!(dependency(refused).code(), tonic::Code::Internal);
        }
        assert_eq!(
            dependency(tonic::Status::internal("boom")).code(),
            tonic::Code::Unavailable
        );
        let kept = dependency(tonic::Status::not_found("no worker"));
        assert_eq!(kept.code(), tonic::Code::NotFound);
        assert_eq!(kept.message(), "router: no worker");
        let unserved = tonic::Status::from(OrchestratorError::TeamNotServed("t".into()));
        assert_eq!(unserved.code(), tonic::Code::NotFound);
        assert_eq!(unserved.message(), "router: no worker serves team `t`");
    }

    #[test]
    fn spec_violations_name_the_field_and_the_path_inside_it() {
        // A problem of the whole document is the field itself, never `team.spec_yaml.`.
        assert_eq!(violations("name: x\nagents: [\n"), ["team.spec_yaml"]);
        let no_shape = "name: x\nagents:\n  - name: a\n    role: r\n    goal: g\n";
        let fields = violations(no_shape);
        assert!(fields.iter().any(|f| f == "team.spec_yaml"), "{fields:?}");
        assert!(fields.iter().all(|f| !f.ends_with('.')), "{fields:?}");
        // A problem at a path inside the spec is that path inside the field.
        let bad_model =
            "name: x\nagents:\n  - name: a\n    role: r\n    goal: g\n    model: 7\n    modle: y\n";
        assert_eq!(violations(bad_model), ["team.spec_yaml.agents[0]"]);
    }
}
