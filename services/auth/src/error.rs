//! The auth service's errors and their one mapping to gRPC status codes.

use amaos_mesh::status;

/// What can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials were presented.
    #[error("missing credentials: send `authorization: Bearer <api key>`")]
    MissingCredentials,
    /// The presented key is unknown, revoked, expired or wrong.
    #[error("invalid API key")]
    InvalidKey,
    /// The caller may not do this.
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
    /// The named key does not exist in the caller's view.
    #[error("API key `{0}` not found")]
    KeyNotFound(String),
    /// The audit trail cannot be written, so privileged actions are refused.
    #[error("{0}")]
    AuditDown(String),
    /// The key store could not be read or written.
    #[error("key store: {0}")]
    Store(String),
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::MissingCredentials | AuthError::InvalidKey => {
                tonic::Status::unauthenticated(message)
            }
            AuthError::Forbidden(_) => tonic::Status::permission_denied(message),
            AuthError::InvalidArgument { field, message } => status::invalid_field(field, message),
            AuthError::KeyNotFound(_) => tonic::Status::not_found(message),
            AuthError::Store(_) | AuthError::AuditDown(_) => tonic::Status::unavailable(message),
        }
    }
}
