//! Authenticating callers (an API key checked through auth and cached, or a
//! token verified locally: [`amaos_mesh::authn`]), authorizing them, and the
//! run tokens the orchestrator obtains for each attempt.

use std::time::Duration;

use amaos_mesh::authn::AuthnError;
use amaos_mesh::caller::{self, Caller, RunScope};
use amaos_mesh::client::MeshChannel;
use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::metadata::MetadataMap;

use crate::error::OrchestratorError;

/// The mesh's authenticator, answering in the orchestrator's errors.
pub struct Authenticator(amaos_mesh::authn::Authenticator);

impl Authenticator {
    /// An authenticator asking `auth`, caching for `ttl`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, ttl: Duration) -> Self {
        Self(amaos_mesh::authn::Authenticator::new(auth, ttl))
    }

    /// The verified caller of a request.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, OrchestratorError> {
        self.0.caller(metadata).await.map_err(|e| match e {
            AuthnError::Missing => OrchestratorError::MissingCredentials,
            AuthnError::Invalid(_) => OrchestratorError::InvalidKey,
            AuthnError::Unavailable(status) => OrchestratorError::Dependency {
                service: "auth",
                status,
            },
        })
    }
}

/// Checks that `caller` may do `action` on tasks.
pub fn require(caller: &Caller, action: &str) -> Result<(), OrchestratorError> {
    match amaos_mesh::policy::allows(
        &caller.principal,
        &caller.roles,
        &caller.tenant,
        "tasks",
        action,
    ) {
        Some(_) => Ok(()),
        None => Err(OrchestratorError::Forbidden(format!(
            "roles [{}] may not `{action}` tasks",
            caller.roles.join(", ")
        ))),
    }
}

/// Obtains a token for each attempt from auth with the orchestrator's
/// service key: role `agent`, scoped to the task and the attempt, living
/// until the task's deadline (plus a small margin). Workers, tools and
/// memory see only what that run may do, and a token captured from one run
/// reaches no other task. One signature per attempt.
pub struct RunTokens {
    auth: AuthServiceClient<MeshChannel>,
    key_file: std::path::PathBuf,
    key: tokio::sync::Mutex<Option<String>>,
}

/// How long a run token outlives its task's deadline (clock skew, the last
/// events of a run that ends at its deadline).
pub const RUN_TOKEN_MARGIN: Duration = Duration::from_secs(30);

impl RunTokens {
    /// Tokens from `auth`, with the service key read from `key_file` when first needed.
    pub fn new(auth: AuthServiceClient<MeshChannel>, key_file: std::path::PathBuf) -> Self {
        Self {
            auth,
            key_file,
            key: tokio::sync::Mutex::new(None),
        }
    }

    /// A token for `run` (an attempt of a task of `tenant`, the team it runs
    /// and its session), on behalf of `subject`, with the `agent` role, valid
    /// for `left` (the time left before the task's deadline) plus
    /// [`RUN_TOKEN_MARGIN`].
    pub async fn issue(
        &self,
        tenant: &str,
        subject: &str,
        run: &RunScope,
        left: Duration,
    ) -> Result<String, String> {
        let key = {
            let mut key = self.key.lock().await;
            if key.is_none() {
                let text = std::fs::read_to_string(&self.key_file).map_err(|e| {
                    format!(
                        "the service key {} cannot be read: {e}",
                        self.key_file.display()
                    )
                })?;
                *key = Some(text.trim().to_owned());
            }
            key.clone().unwrap_or_default()
        };
        let mut request = tonic::Request::new(pb::IssueTokenRequest {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            roles: vec!["agent".into()],
            audience: String::new(),
            ttl: Some(amaos_proto::time::proto_duration(
                left.saturating_add(RUN_TOKEN_MARGIN),
            )),
            task_id: run.task.clone(),
            attempt: run.attempt,
            team: run.team.clone(),
            session_id: run.session.clone(),
        });
        caller::set_bearer(request.metadata_mut(), &key).map_err(|s| s.message().to_owned())?;
        self.auth
            .clone()
            .issue_token(request)
            .await
            .map(|r| r.into_inner().token)
            .map_err(|s| format!("auth refused a run token: {}", s.message()))
    }
}
