//! The service's one error type and its one mapping to gRPC status codes.

use std::time::Duration;

use amaos_mesh::status;
use tonic::Status;

/// What can go wrong in the tools service.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// An argument is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The path of the field, e.g. `arguments.path`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The caller may not do this, or the path leaves the workspace.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The tool or file does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A file or content is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The tool needs a person's approval and the caller holds no grant for
    /// this call: the tool, and why it is gated.
    #[error("`{0}` needs a person's approval: {1}")]
    ApprovalRequired(String, &'static str),
    /// The idempotency key was used for a different call.
    #[error("idempotency key reused: {0}")]
    KeyReused(String),
    /// The call took longer than its timeout.
    #[error("the call took longer than {0:?}")]
    Timeout(Duration),
    /// The operation is not offered by this server.
    #[error("{0}")]
    Unimplemented(String),
    /// A filesystem error.
    #[error("I/O: {0}")]
    Io(String),
    /// A quota is used up.
    #[error("{0}")]
    Quota(String),
    /// The sandbox failed.
    #[error("{0}")]
    Sandbox(String),
    /// The audit trail cannot be written: no call runs.
    #[error("{0}")]
    AuditDown(String),
    /// The idempotency journal cannot be reached: no call runs.
    #[error("{0}")]
    JournalDown(String),
    /// Whether a run token's attempt still runs cannot be checked.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ToolError> for Status {
    fn from(error: ToolError) -> Self {
        let message = error.to_string();
        match error {
            ToolError::InvalidArgument { field, message } => status::invalid_field(&field, message),
            ToolError::PermissionDenied(_) => Status::permission_denied(message),
            ToolError::NotFound(_) => Status::not_found(message),
            ToolError::TooLarge(_) => Status::resource_exhausted(message),
            ToolError::KeyReused(_) => Status::failed_precondition(message),
            ToolError::ApprovalRequired(tool, why) => amaos_mesh::approval::required(&tool, why),
            ToolError::Timeout(_) => Status::deadline_exceeded(message),
            ToolError::Unimplemented(_) => Status::unimplemented(message),
            ToolError::Io(_) => Status::internal(message),
            ToolError::Quota(_) => Status::resource_exhausted(message),
            ToolError::Sandbox(_)
            | ToolError::AuditDown(_)
            | ToolError::JournalDown(_)
            | ToolError::Unavailable(_) => Status::unavailable(message),
        }
    }
}
