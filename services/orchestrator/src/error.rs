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
            // Routing answers (NOT_FOUND for an unknown team, UNAVAILABLE for no
            // live worker) keep their code; the message says which service spoke.
            OrchestratorError::Dependency { service, status } => tonic::Status::new(
                match status.code() {
                    tonic::Code::Unknown | tonic::Code::Internal => tonic::Code::Unavailable,
                    code => code,
                },
                format!("{service}: {}", status.message()),
            ),
        }
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
