//! The tools service: a registry of tools and calls to them, each confined to
//! the calling task's workspace and journaled by idempotency key, so the
//! orchestrator's at-least-once retries cause each side effect once.
//!
//! # Layout
//!
//! - [`workspace`]: per-task directories and path confinement.
//! - [`builtin`]: `file_read`, `file_write` and `file_list`, with their schemas
//!   and argument checks.
//! - [`journal`]: recorded results by idempotency key.
//! - this file: the errors and their mapping, the gRPC service, [`serve`].

pub mod builtin;
pub mod journal;
pub mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::token::TokenVerifier;
use amaos_mesh::{BoxError, Config, limit_messages, status};
use amaos_proto::json::{json_to_value, map_to_struct, struct_to_map};
use amaos_proto::time::{duration, proto_duration};
use amaos_proto::tools::v1 as pb;
use amaos_proto::tools::v1::tools_service_server::{ToolsService, ToolsServiceServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::journal::{Journal, Lookup};

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
            ToolError::Timeout(_) => Status::deadline_exceeded(message),
            ToolError::Unimplemented(_) => Status::unimplemented(message),
            ToolError::Io(_) => Status::internal(message),
        }
    }
}

/// Roles that may invoke tools.
const TOOL_ROLES: &[&str] = &["agent", "admin"];
/// Longest a call may take.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default timeout of a call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The tools service.
#[derive(Clone)]
pub struct Tools {
    verifier: Arc<TokenVerifier>,
    workspaces: Arc<PathBuf>,
    journal: Arc<Journal>,
    limits: builtin::FileLimits,
}

impl Tools {
    /// A tools service with workspaces under the configured directory,
    /// verifying callers' tokens with keys from auth.
    pub fn new(config: &Config) -> Result<Self, BoxError> {
        Ok(Self {
            verifier: Arc::new(TokenVerifier::from_auth(&config.auth.url, &config.limits)?),
            workspaces: Arc::new(config.workspace_dir()),
            journal: Arc::new(Journal::new(config.tools.max_journal_entries)),
            limits: builtin::FileLimits {
                max_file_bytes: config.tools.max_file_bytes,
                max_list_entries: config.tools.max_list_entries,
            },
        })
    }
}

#[tonic::async_trait]
impl ToolsService for Tools {
    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        self.verifier.caller(request.metadata()).await?;
        let tools = builtin::Builtin::ALL
            .iter()
            .map(|tool| pb::ToolDescriptor {
                name: tool.name().into(),
                description: tool.description().into(),
                input_schema: match tool.schema() {
                    serde_json::Value::Object(map) => Some(map_to_struct(&map)),
                    _ => None,
                },
                source: "builtin".into(),
                side_effects: tool.side_effects(),
            })
            .collect();
        Ok(Response::new(pb::ListToolsResponse { tools }))
    }

    async fn invoke_tool(
        &self,
        request: Request<pb::InvokeToolRequest>,
    ) -> Result<Response<pb::InvokeToolResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        if !TOOL_ROLES.iter().any(|r| caller.has_role(r)) {
            return Err(ToolError::PermissionDenied(format!(
                "roles [{}] may not invoke tools",
                caller.roles.join(", ")
            ))
            .into());
        }
        let pb::InvokeToolRequest {
            tool,
            arguments,
            task_id,
            idempotency_key,
            timeout,
        } = request.into_inner();
        let builtin = builtin::Builtin::named(&tool)
            .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{tool}`")))?;
        let args = arguments.as_ref().map(struct_to_map).unwrap_or_default();
        let call = builtin.parse(&args)?;
        let timeout = match timeout {
            Some(t) => duration(&t)
                .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                .ok_or_else(|| ToolError::InvalidArgument {
                    field: "timeout".into(),
                    message: format!("must be positive and at most {MAX_TIMEOUT:?}"),
                })?,
            None => DEFAULT_TIMEOUT,
        };
        let started = Instant::now();
        let fingerprint = journal::fingerprint(&tool, &args);
        let idem = Some(idempotency_key).filter(|k| !k.is_empty());
        if let Some(key) = &idem {
            match self.journal.lookup(&caller.tenant, key, &fingerprint) {
                Lookup::Recorded(result) => {
                    return Ok(Response::new(pb::InvokeToolResponse {
                        result: Some(json_to_value(&result)),
                        replayed: true,
                        duration: Some(proto_duration(started.elapsed())),
                    }));
                }
                Lookup::Conflict => {
                    return Err(ToolError::KeyReused(format!(
                        "`{key}` was recorded for a different call"
                    ))
                    .into());
                }
                Lookup::Absent => {}
            }
        }
        let base = self.workspaces.clone();
        let tenant = caller.tenant.clone();
        let limits = self.limits;
        let work = tokio::task::spawn_blocking(move || {
            let ws = workspace::Workspace::open(&base, &tenant, &task_id)?;
            call.run(&ws, limits)
        });
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(ToolError::Io(format!("the tool panicked: {join}")).into()),
            Err(_) => return Err(ToolError::Timeout(timeout).into()),
        };
        if let Some(key) = &idem {
            self.journal
                .record(&caller.tenant, key, fingerprint, result.clone());
        }
        tracing::info!(tool = %tool, tenant = %caller.tenant, principal = %caller.principal, "tool call");
        Ok(Response::new(pb::InvokeToolResponse {
            result: Some(json_to_value(&result)),
            replayed: false,
            duration: Some(proto_duration(started.elapsed())),
        }))
    }

    async fn register_tool_server(
        &self,
        request: Request<pb::RegisterToolServerRequest>,
    ) -> Result<Response<pb::RegisterToolServerResponse>, Status> {
        self.verifier.caller(request.metadata()).await?;
        Err(ToolError::Unimplemented(
            "MCP tool servers are not supported by this server yet".into(),
        )
        .into())
    }
}

/// The tools service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(tools: Tools, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "tools",
        limit_messages!(ToolsServiceServer::new(tools), limits),
    )
}

/// Serves the tools service on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let service = grpc_service(Tools::new(&config)?, &config.limits);
    amaos_mesh::server::serve(service, listener, &config.limits, metrics, shutdown).await?;
    Ok(())
}
