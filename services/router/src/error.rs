//! The router's errors and their one mapping to gRPC status codes.

use amaos_mesh::status;
use tonic_types::StatusExt;

/// What can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The worker is not registered (any more): register again.
    #[error("worker `{0}` is not registered")]
    WorkerNotFound(String),
    /// No registered worker serves the team.
    #[error("no worker serves team `{0}`")]
    UnknownTeam(String),
    /// Workers serve the team, but none is live, undrained and eligible.
    #[error("no live worker can serve team `{0}` now")]
    NoLiveWorker(String),
    /// The team's circuit breaker is open.
    #[error("team `{0}` failed repeatedly; its circuit is open for {1:?}")]
    TeamBreakerOpen(String, std::time::Duration),
    /// The shared registry store failed.
    #[error("registry store: {0}")]
    Store(String),
    /// The registry is full.
    #[error("the registry holds its maximum of {0} workers")]
    RegistryFull(usize),
    /// The worker id belongs to another identity.
    #[error("worker `{0}` was registered by another identity")]
    NotOwner(String),
    /// The identity has as many workers registered as it may.
    #[error("this identity has its maximum of {0} workers registered")]
    IdentityFull(usize),
    /// The worker's address is outside the networks workers may use.
    #[error("address: {0}")]
    AddressNotAllowed(String),
}

impl From<RouterError> for tonic::Status {
    fn from(error: RouterError) -> Self {
        let message = error.to_string();
        match error {
            RouterError::InvalidArgument { field, message } => {
                status::invalid_field(field, message)
            }
            RouterError::WorkerNotFound(_) | RouterError::UnknownTeam(_) => {
                tonic::Status::not_found(message)
            }
            RouterError::NoLiveWorker(_) => tonic::Status::unavailable(message),
            RouterError::RegistryFull(_) | RouterError::IdentityFull(_) => {
                tonic::Status::resource_exhausted(message)
            }
            RouterError::NotOwner(_) | RouterError::AddressNotAllowed(_) => {
                tonic::Status::permission_denied(message)
            }
            RouterError::Store(_) => tonic::Status::unavailable(message),
            RouterError::TeamBreakerOpen(_, retry_after) => tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                message,
                tonic_types::ErrorDetails::with_retry_info(Some(retry_after)),
            ),
        }
    }
}
