//! The tools service: a registry of tools and calls to them, each confined to
//! the calling task's workspace and journaled by idempotency key, so the
//! orchestrator's at-least-once retries cause each side effect once.
//!
//! # Layout
//!
//! - [`workspace`]: per-task directories and path confinement.
//! - [`builtin`]: `file_read`, `file_write` and `file_list`, with their schemas
//!   and argument checks.
//! - [`journal`]: reservations and recorded results by idempotency key, in
//!   this process or in Redis (shared by replicas, kept across restarts).
//! - [`sandbox`]: commands in the sandbox (the `amaos-sandbox` helper).
//! - [`shell`]: the `shell` tool's arguments.
//! - [`web`]: the `web_fetch` tool, with its SSRF checks.
//! - [`mcp`]: tools of MCP servers, platform-wide or a tenant's.
//! - [`tree`]: safe walks of a workspace (usage, ownership, roll-back, removal).
//! - this file: the errors and their mapping, the gRPC service with its
//!   per-call checks (role allowlist, quotas, audit event), [`serve`].

pub mod builtin;
pub mod journal;
pub mod mcp;
pub mod sandbox;
pub mod shell;
pub mod tree;
pub mod web;
pub mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amaos_mesh::authn::Authenticator;
use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::rate::{Limiter, Rate};
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages, status};
use amaos_proto::json::{json_to_value, map_to_struct, struct_to_map};
use amaos_proto::time::{duration, proto_duration};
use amaos_proto::tools::v1 as pb;
use amaos_proto::tools::v1::tools_service_server::{ToolsService, ToolsServiceServer};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::journal::{Begin, Journal, JournalError};

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

/// Longest a call may take.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default timeout of a call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-tenant quotas: sandboxes at once (calls per minute are `call_rate`).
#[derive(Default)]
struct Quotas {
    sandboxes: HashMap<String, usize>,
}

/// The tools service.
#[derive(Clone)]
pub struct Tools {
    /// Callers: a token (verified locally) or an API key (checked by auth, cached).
    verifier: Arc<Authenticator>,
    workspaces: Arc<PathBuf>,
    /// Each workspace's bounds.
    bounds: workspace::Bounds,
    journal: Arc<dyn Journal>,
    limits: builtin::FileLimits,
    sandbox: Option<Arc<sandbox::Sandbox>>,
    web: Arc<web::WebFetch>,
    mcp: Arc<mcp::Mcp>,
    role_tools: Arc<BTreeMap<String, Vec<String>>>,
    quotas: Arc<Mutex<Quotas>>,
    max_sandboxes_per_tenant: usize,
    calls_per_minute: u32,
    /// Calls per tenant, by GCRA: `calls_per_minute` at once, then at that rate.
    call_rate: Arc<Limiter>,
    /// The hash-chained trail: every call's decision, before it runs.
    audit: Arc<amaos_mesh::audit::AuditLog>,
    /// Refuses run tokens whose attempt no longer runs.
    live: Arc<amaos_mesh::live::LiveRuns>,
    /// The RBAC policy every call is held to (besides `role_tools`).
    policy: amaos_mesh::policy::Policy,
}

impl Tools {
    /// A tools service with workspaces under the configured directory,
    /// verifying callers' tokens with keys from auth, authorizing them by
    /// `policy`, running commands in `sandbox` (no `shell` tool without one).
    pub fn new(
        config: &Config,
        policy: amaos_mesh::policy::Policy,
        sandbox: Option<Arc<sandbox::Sandbox>>,
        secrets: Option<Arc<dyn amaos_mesh::secrets::SecretStore>>,
    ) -> Result<Self, BoxError> {
        let dialer = amaos_mesh::client::Dialer::new(config, "tools")?;
        Ok(Self {
            mcp: Arc::new(
                mcp::Mcp::new(sandbox.clone(), config.data_dir.join("mcp"), secrets).with_policy(
                    mcp::AddressPolicy {
                        exempt: config.tools.web_fetch_exempt.clone(),
                        platform_exempt: config
                            .tools
                            .mcp_exempt
                            .iter()
                            .filter_map(|n| amaos_mesh::config::Cidr::parse(n))
                            .collect(),
                    },
                ),
            ),
            verifier: Arc::new(Authenticator::from_auth(
                &dialer,
                &config.auth.url,
                config.auth.key_cache_ttl,
            )?),
            live: Arc::new(amaos_mesh::live::LiveRuns::new(
                dialer.channel("orchestrator", &config.orchestrator.url)?,
            )),
            workspaces: Arc::new(config.workspace_dir()),
            bounds: workspace::Bounds {
                max_bytes: config.tools.workspace_max_bytes,
                max_files: config.tools.workspace_max_files,
                max_workspaces: config.tools.max_workspaces_per_tenant,
            },
            audit: Arc::new(amaos_mesh::audit::AuditLog::append_only_configured(config)),
            journal: Arc::new(journal::memory::MemoryJournal::new(
                journal::JournalLimits {
                    max_entries: config.tools.max_journal_entries,
                    ttl: config.tools.journal_ttl,
                    lease: config.tools.journal_lease,
                },
            )),
            limits: builtin::FileLimits {
                max_file_bytes: config.tools.max_file_bytes,
                max_list_entries: config.tools.max_list_entries,
            },
            sandbox,
            web: Arc::new(web::WebFetch::new(
                config.tools.web_fetch_max_bytes,
                config.tools.web_fetch_timeout,
                config.tools.web_fetch_exempt.clone(),
                config.tools.web_allow.clone(),
            )),
            role_tools: Arc::new(config.tools.role_tools.clone()),
            quotas: Arc::new(Mutex::new(Quotas::default())),
            max_sandboxes_per_tenant: config.tools.max_sandboxes_per_tenant,
            calls_per_minute: config.tools.calls_per_minute,
            call_rate: Arc::new(Limiter::new()),
            policy,
        })
    }

    /// The service with `journal` (see [`journal::open`]) instead of an
    /// in-process one.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = journal;
        self
    }

    fn allowed(&self, roles: &[String], tool: &str) -> bool {
        let server_wildcard = tool.split_once('.').map(|(s, _)| format!("{s}.*"));
        roles.iter().any(|r| {
            self.role_tools.get(r).is_some_and(|tools| {
                tools
                    .iter()
                    .any(|t| t == "*" || t == tool || Some(t) == server_wildcard.as_ref())
            })
        })
    }

    /// Registers the MCP servers of `config` (`tools.mcp_servers`), platform-wide.
    pub async fn register_configured(&self, config: &Config) -> Result<(), BoxError> {
        for (name, server) in &config.tools.mcp_servers {
            let transport = if server.url.is_empty() {
                mcp::Transport::Stdio {
                    argv: server.command.clone(),
                    read_only: server.read_only_paths.clone(),
                    secret_env: server.secret_env.clone(),
                }
            } else {
                mcp::Transport::Http {
                    url: server.url.clone(),
                    bearer_secret: Some(server.bearer_secret.clone()).filter(|s| !s.is_empty()),
                }
            };
            let tools = self
                .mcp
                .register(&mcp::Scope::Platform, name, transport)
                .await
                .map_err(|e| format!("config key `tools.mcp_servers.{name}`: {e}"))?;
            tracing::info!(server = %name, tools = tools.len(), "MCP server registered");
        }
        Ok(())
    }

    fn count_call(&self, tenant: &str) -> Result<(), ToolError> {
        if self.calls_per_minute == 0 {
            return Ok(());
        }
        self.call_rate
            .check(tenant, Rate::per_minute(self.calls_per_minute))
            .map_err(|wait| {
                ToolError::Quota(format!(
                    "tenant `{tenant}` made its {} tool calls this minute; the next in {} ms",
                    self.calls_per_minute,
                    wait.as_millis().max(1)
                ))
            })
    }

    /// Runs the shell tool, within the tenant's sandbox quota.
    async fn shell(
        &self,
        tenant: &str,
        task_id: &str,
        call: shell::ShellCall,
    ) -> Result<serde_json::Value, ToolError> {
        let sandbox = self
            .sandbox
            .clone()
            .ok_or_else(|| ToolError::NotFound("no tool is named `shell` (no sandbox)".into()))?;
        {
            let mut q = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.sandboxes.entry(tenant.to_owned()).or_default();
            if *n >= self.max_sandboxes_per_tenant {
                return Err(ToolError::Quota(format!(
                    "tenant `{tenant}` has {} sandboxes running, its limit",
                    self.max_sandboxes_per_tenant
                )));
            }
            *n += 1;
        }
        let quotas = self.quotas.clone();
        let release = TenantSandbox {
            quotas,
            tenant: tenant.to_owned(),
        };
        let base = self.workspaces.clone();
        let (t, task, bounds) = (tenant.to_owned(), task_id.to_owned(), self.bounds);
        // The workspace is measured before the command (it must be within
        // its bounds), while it runs (stopped when it goes past them) and
        // after; a command that went past them fails, and what it wrote or
        // changed is removed, so the workspace is back within its bounds.
        let ws = Arc::new(
            blocking(move || {
                let ws = workspace::Workspace::open_bounded(&base, &t, &task, bounds)?;
                ws.check_bounds()?;
                Ok(ws)
            })
            .await?,
        );
        let watch: sandbox::Watch = {
            let ws = ws.clone();
            Arc::new(move || {
                ws.usage()
                    .ok()
                    .and_then(|usage| ws.bounds().exceeded(&usage))
            })
        };
        let outcome = sandbox
            .run_watched(ws.root(), &call.argv(), call.timeout, Some(watch))
            .await
            .map_err(|e| match e {
                sandbox::SandboxError::Busy(_) => ToolError::Quota(e.to_string()),
                other => ToolError::Sandbox(other.to_string()),
            })?;
        drop(release);
        let after = {
            let ws = ws.clone();
            blocking(move || ws.usage()).await?
        };
        if let Some(why) = outcome.stopped.clone().or_else(|| bounds.exceeded(&after)) {
            let since = outcome.since;
            let removed = {
                let ws = ws.clone();
                blocking(move || ws.roll_back(since)).await?
            };
            tracing::warn!(%tenant, task = %task_id, %why, removed, "a command went past its workspace's bounds");
            return Err(ToolError::Quota(format!(
                "the command was stopped: the task's workspace {why} (limits: {} bytes, {} files); \
                 the {removed} files and directories it wrote or changed were removed",
                bounds.max_bytes, bounds.max_files
            )));
        }
        serde_json::to_value(outcome).map_err(|e| ToolError::Io(e.to_string()))
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ToolError::Io(format!("the tool panicked: {e}")))?
}

/// A tenant's running sandbox, counted until dropped.
struct TenantSandbox {
    quotas: Arc<Mutex<Quotas>>,
    tenant: String,
}

impl Drop for TenantSandbox {
    fn drop(&mut self) {
        let mut q = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.sandboxes.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A checked call of any tool.
enum Checked {
    Builtin(builtin::Call),
    Shell(shell::ShellCall),
    Web(String),
    Mcp(String, serde_json::Map<String, serde_json::Value>),
}

#[tonic::async_trait]
impl ToolsService for Tools {
    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        Ok(Response::new(self.list(&caller).await))
    }

    async fn invoke_tool(
        &self,
        request: Request<pb::InvokeToolRequest>,
    ) -> Result<Response<pb::InvokeToolResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        // The call runs to its end and records its result even when its
        // caller goes away mid-call (its agents worker died). Dropped with
        // the request instead, a call could make its side effect and never
        // record it: the key's reservation would stay pending until its
        // lease ran out, and the retry would then run the call again.
        let tools = self.clone();
        let request = request.into_inner();
        let call = tokio::spawn(async move { tools.invoke(&caller, request).await });
        match call.await {
            Ok(response) => Ok(Response::new(response?)),
            Err(join) => Err(Status::internal(format!("the tool call panicked: {join}"))),
        }
    }

    async fn register_tool_server(
        &self,
        request: Request<pb::RegisterToolServerRequest>,
    ) -> Result<Response<pb::RegisterToolServerResponse>, Status> {
        let caller = self.verifier.caller(request.metadata()).await?;
        Ok(Response::new(
            self.register_server(&caller, request.into_inner()).await?,
        ))
    }
}

impl Tools {
    /// The tools `caller` sees: the built-in ones, its tenant's MCP servers'
    /// and the platform-wide servers'.
    pub async fn list(&self, caller: &amaos_mesh::caller::Caller) -> pb::ListToolsResponse {
        let descriptor =
            |name: &str, description: &str, schema: serde_json::Value, side_effects| {
                pb::ToolDescriptor {
                    name: name.into(),
                    description: description.into(),
                    input_schema: match schema {
                        serde_json::Value::Object(map) => Some(map_to_struct(&map)),
                        _ => None,
                    },
                    source: "builtin".into(),
                    side_effects,
                }
            };
        let mut tools: Vec<pb::ToolDescriptor> = builtin::Builtin::ALL
            .iter()
            .map(|tool| {
                descriptor(
                    tool.name(),
                    tool.description(),
                    tool.schema(),
                    tool.side_effects(),
                )
            })
            .collect();
        tools.push(descriptor(
            web::NAME,
            web::DESCRIPTION,
            web::schema(),
            false,
        ));
        for (name, description, schema) in self.mcp.tools(&caller.tenant).await {
            let mut d = descriptor(&name, &description, serde_json::Value::Object(schema), true);
            d.source = format!("mcp:{}", name.split('.').next().unwrap_or_default());
            tools.push(d);
        }
        if self.sandbox.is_some() {
            tools.push(descriptor(
                shell::NAME,
                shell::DESCRIPTION,
                shell::schema(),
                true,
            ));
        }
        pb::ListToolsResponse { tools }
    }

    /// Runs a call of `caller`, with every check, its audit record and its
    /// audit log line.
    pub async fn invoke(
        &self,
        caller: &amaos_mesh::caller::Caller,
        request: pb::InvokeToolRequest,
    ) -> Result<pb::InvokeToolResponse, ToolError> {
        let pb::InvokeToolRequest {
            tool,
            arguments,
            task_id,
            idempotency_key,
            timeout,
        } = request;
        // A run token reaches only its own task's workspace and journal ...
        let scoped = match caller.check_task(&task_id) {
            Ok(()) => None,
            Err(s) => Some(ToolError::PermissionDenied(s.message().to_owned())),
        };
        // ... and only while its attempt runs: a token captured from a
        // finished or superseded attempt is refused.
        let scoped = match scoped {
            Some(refused) => Some(refused),
            None => match self.live.check(caller).await {
                Ok(()) => None,
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    Some(ToolError::PermissionDenied(s.message().to_owned()))
                }
                Err(s) => Some(ToolError::Unavailable(s.message().to_owned())),
            },
        };
        if let Some(refused) = scoped {
            // Best effort: the call is refused whether or not this is written.
            let _ = self.audit_call(caller, &tool, false).await;
            return Err(refused);
        }
        let args = arguments.as_ref().map(struct_to_map).unwrap_or_default();
        let started = Instant::now();
        let fingerprint = journal::fingerprint(&tool, &args);
        let result = self
            .invoke_checked(
                caller,
                tool.clone(),
                args,
                task_id,
                idempotency_key,
                timeout,
                &fingerprint,
                started,
            )
            .await;
        // One audit event per call, whatever happened: who, tenant, tool, a
        // hash of the arguments (never the arguments), decision, duration, outcome.
        let (decision, outcome) = match &result {
            Ok(r) if r.replayed => ("allow", "replayed"),
            Ok(_) => ("allow", "ok"),
            Err(ToolError::PermissionDenied(_)) => ("deny", "permission_denied"),
            Err(ToolError::Quota(_)) => ("deny", "quota"),
            Err(ToolError::InvalidArgument { .. }) => ("deny", "invalid_argument"),
            Err(ToolError::NotFound(_)) => ("deny", "not_found"),
            Err(ToolError::KeyReused(_)) => ("deny", "key_reused"),
            Err(ToolError::TooLarge(_)) => ("allow", "too_large"),
            Err(ToolError::Timeout(_)) => ("allow", "timeout"),
            Err(ToolError::Unimplemented(_)) => ("deny", "unimplemented"),
            Err(ToolError::Io(_)) => ("allow", "io_error"),
            Err(ToolError::Sandbox(_)) => ("allow", "sandbox_error"),
            Err(ToolError::AuditDown(_)) => ("deny", "audit_down"),
            Err(ToolError::JournalDown(_)) => ("deny", "journal_down"),
            Err(ToolError::Unavailable(_)) => ("deny", "unavailable"),
        };
        tracing::info!(
            target: "audit",
            principal = %caller.principal,
            tenant = %caller.tenant,
            tool = %tool,
            arguments_sha256 = %hex(&fingerprint),
            decision,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome,
            "tool call"
        );
        result
    }

    /// Registers an MCP server for `caller`: platform-wide when the caller
    /// is a platform admin (tenant `default`, role `admin`), else its
    /// tenant's (operators and admins of a tenant). Every decision is
    /// appended to the audit trail (`tool_server.register`, object
    /// `mcp/<tenant or *>/<name>`); an allowed registration only once that
    /// record is written.
    pub async fn register_server(
        &self,
        caller: &amaos_mesh::caller::Caller,
        request: pb::RegisterToolServerRequest,
    ) -> Result<pb::RegisterToolServerResponse, ToolError> {
        let pb::RegisterToolServerRequest {
            name,
            transport,
            idempotency_key: _,
        } = request;
        let scope =
            if caller.tenant == amaos_mesh::identity::PLATFORM_TENANT && caller.has_role("admin") {
                mcp::Scope::Platform
            } else {
                mcp::Scope::Tenant(caller.tenant.clone())
            };
        let object = scope.object(&name);
        match self
            .check_registration(caller, &scope, &name, transport)
            .await
        {
            Ok(checked) => {
                self.audit_action(caller, "tool_server.register", &object, true)
                    .await?;
                self.connect_server(caller, &object, &name, checked).await
            }
            Err(error) => {
                // Best effort: the registration is refused whether or not this is written.
                let _ = self
                    .audit_action(caller, "tool_server.register", &object, false)
                    .await;
                tracing::info!(
                    target: "audit",
                    principal = %caller.principal,
                    tenant = %caller.tenant,
                    action = "register_tool_server",
                    server = %object,
                    decision = "deny",
                    outcome = %error,
                    "tool server registration"
                );
                Err(error)
            }
        }
    }

    /// The checks of a registration, before anything connects.
    async fn check_registration(
        &self,
        caller: &amaos_mesh::caller::Caller,
        scope: &mcp::Scope,
        name: &str,
        transport: Option<pb::register_tool_server_request::Transport>,
    ) -> Result<mcp::Checked, ToolError> {
        if !caller.has_role("admin") && !caller.has_role("operator") {
            return Err(ToolError::PermissionDenied(format!(
                "roles [{}] may not register tool servers (admin or operator may)",
                caller.roles.join(", ")
            )));
        }
        let transport = match transport {
            Some(pb::register_tool_server_request::Transport::Stdio(stdio)) => {
                let mut argv = vec![stdio.command];
                argv.extend(stdio.args);
                // Registered at run time, a server sees only the sandbox's own view.
                mcp::Transport::Stdio {
                    argv,
                    read_only: Vec::new(),
                    secret_env: stdio.secret_env,
                }
            }
            Some(pb::register_tool_server_request::Transport::Http(http)) => mcp::Transport::Http {
                url: http.url,
                bearer_secret: Some(http.bearer_secret).filter(|s| !s.is_empty()),
            },
            None => {
                return Err(ToolError::InvalidArgument {
                    field: "transport".into(),
                    message: "name a stdio command or an http url".into(),
                });
            }
        };
        self.mcp.check(scope, name, transport).await
    }

    /// Connects a checked registration; the secrets it reads are recorded
    /// as read for `caller`.
    async fn connect_server(
        &self,
        caller: &amaos_mesh::caller::Caller,
        object: &str,
        name: &str,
        checked: mcp::Checked,
    ) -> Result<pb::RegisterToolServerResponse, ToolError> {
        let result = amaos_mesh::secrets::on_behalf_of(
            &caller.principal,
            &caller.tenant,
            self.mcp.connect(checked),
        )
        .await;
        tracing::info!(
            target: "audit",
            principal = %caller.principal,
            tenant = %caller.tenant,
            action = "register_tool_server",
            server = %object,
            decision = "allow",
            outcome = if result.is_ok() { "ok" } else { "error" },
            "tool server registration"
        );
        let tools = result?
            .into_iter()
            .map(|(full, description, schema)| pb::ToolDescriptor {
                source: format!("mcp:{name}"),
                name: full,
                description,
                input_schema: Some(map_to_struct(&schema)),
                side_effects: true,
            })
            .collect();
        Ok(pb::RegisterToolServerResponse { tools })
    }

    /// Appends a call's decision to the audit trail.
    async fn audit_call(
        &self,
        caller: &amaos_mesh::caller::Caller,
        tool: &str,
        allowed: bool,
    ) -> Result<(), ToolError> {
        self.audit_action(caller, "tool.invoke", tool, allowed)
            .await
    }

    /// Appends a decision of `caller` to the audit trail.
    async fn audit_action(
        &self,
        caller: &amaos_mesh::caller::Caller,
        action: &str,
        object: &str,
        allowed: bool,
    ) -> Result<(), ToolError> {
        self.audit
            .append_async(amaos_mesh::audit::Entry {
                principal: &caller.principal,
                tenant: &caller.tenant,
                action,
                object,
                allowed,
            })
            .await
            .map(|_| ())
            .map_err(|e| ToolError::AuditDown(e.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn invoke_checked(
        &self,
        caller: &amaos_mesh::caller::Caller,
        tool: String,
        args: serde_json::Map<String, serde_json::Value>,
        task_id: String,
        idempotency_key: String,
        timeout: Option<prost_types::Duration>,
        fingerprint: &[u8; 32],
        started: Instant,
    ) -> Result<pb::InvokeToolResponse, ToolError> {
        if !self.allowed(&caller.roles, &tool)
            || self
                .policy
                .allows(
                    &caller.principal,
                    &caller.roles,
                    &caller.tenant,
                    &format!("tools/{tool}"),
                    "invoke",
                )
                .is_none()
        {
            // Best effort: the call is refused whether or not this is written.
            let _ = self.audit_call(caller, &tool, false).await;
            return Err(ToolError::PermissionDenied(format!(
                "roles [{}] may not call `{tool}`",
                caller.roles.join(", ")
            )));
        }
        // Bad arguments and an exhausted quota are refusals too: recorded as
        // denied, never as allowed.
        let checked = async {
            let call = if tool == shell::NAME && self.sandbox.is_some() {
                Checked::Shell(shell::ShellCall::parse(&args)?)
            } else if tool == web::NAME {
                Checked::Web(web::parse_args(&args)?)
            } else if self.mcp.has(&caller.tenant, &tool).await {
                Checked::Mcp(tool.clone(), args)
            } else {
                let builtin = builtin::Builtin::named(&tool)
                    .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{tool}`")))?;
                Checked::Builtin(builtin.parse(&args)?)
            };
            let timeout = match timeout {
                Some(t) => duration(&t)
                    .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                    .ok_or_else(|| ToolError::InvalidArgument {
                        field: "timeout".into(),
                        message: format!("must be positive and at most {MAX_TIMEOUT:?}"),
                    })?,
                None => DEFAULT_TIMEOUT,
            };
            self.count_call(&caller.tenant)?;
            Ok::<_, ToolError>((call, timeout))
        }
        .await;
        let (call, timeout) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                let _ = self.audit_call(caller, &tool, false).await;
                return Err(error);
            }
        };
        self.audit_call(caller, &tool, true).await?;
        // A keyed call reserves its key (or replays the recorded result,
        // waiting while another attempt runs it), runs, then records its
        // result — or releases the key when it failed, so a retry runs again.
        let reservation = match Some(idempotency_key).filter(|k| !k.is_empty()) {
            None => None,
            Some(key) => {
                let deadline = tokio::time::Instant::from_std(started) + timeout;
                match journal::begin(
                    self.journal.clone(),
                    &caller.tenant,
                    &key,
                    *fingerprint,
                    deadline,
                )
                .await
                {
                    Ok(Begin::Run(reservation)) => Some(reservation),
                    Ok(Begin::Replay(result)) => {
                        return Ok(pb::InvokeToolResponse {
                            result: Some(json_to_value(&result)),
                            replayed: true,
                            duration: Some(proto_duration(started.elapsed())),
                        });
                    }
                    Err(JournalError::Conflict) => {
                        return Err(ToolError::KeyReused(format!(
                            "`{key}` was recorded for a different call"
                        )));
                    }
                    Err(JournalError::Busy) => return Err(ToolError::Timeout(timeout)),
                    Err(e @ JournalError::Store(_)) => {
                        return Err(ToolError::JournalDown(e.to_string()));
                    }
                }
            }
        };
        let result = self.run_checked(caller, call, task_id, timeout).await;
        let result = match (result, reservation) {
            (Ok(result), Some(reservation)) => {
                reservation.record(&result).await;
                result
            }
            (Err(e), Some(reservation)) => {
                reservation.release().await;
                return Err(e);
            }
            (result, None) => result?,
        };
        Ok(pb::InvokeToolResponse {
            result: Some(json_to_value(&result)),
            replayed: false,
            duration: Some(proto_duration(started.elapsed())),
        })
    }

    /// Runs a checked call.
    async fn run_checked(
        &self,
        caller: &amaos_mesh::caller::Caller,
        call: Checked,
        task_id: String,
        timeout: Duration,
    ) -> Result<serde_json::Value, ToolError> {
        Ok(match call {
            Checked::Shell(call) => self.shell(&caller.tenant, &task_id, call).await?,
            Checked::Web(url) => self.web.fetch(&caller.tenant, &url).await?,
            Checked::Mcp(name, args) => self.mcp.call(&caller.tenant, &name, args, timeout).await?,
            Checked::Builtin(call) => {
                let base = self.workspaces.clone();
                let tenant = caller.tenant.clone();
                let (limits, bounds) = (self.limits, self.bounds);
                let work = tokio::task::spawn_blocking(move || {
                    let ws = workspace::Workspace::open_bounded(&base, &tenant, &task_id, bounds)?;
                    call.run(&ws, limits)
                });
                match tokio::time::timeout(timeout, work).await {
                    Ok(Ok(result)) => result?,
                    Ok(Err(join)) => {
                        return Err(ToolError::Io(format!("the tool panicked: {join}")));
                    }
                    Err(_) => return Err(ToolError::Timeout(timeout)),
                }
            }
        })
    }
}

/// The tools service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(tools: Tools, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "tools",
        limit_messages!(ToolsServiceServer::new(tools), limits),
    )
}

/// Serves the tools service on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: amaos_mesh::policy::Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let sandbox = start_sandbox(&config).await?;
    let secrets = amaos_mesh::secrets::open_audited(&config, "tools").await?;
    let tools = Tools::new(&config, policy, sandbox, Some(secrets))?
        .with_journal(journal::open(&config).await?);
    tools.register_configured(&config).await?;
    let sweeper = tokio::spawn(sweep_workspaces(
        config.workspace_dir(),
        config.tools.workspace_retention,
        shutdown.clone(),
    ));
    let service = grpc_service(tools, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await;
    sweeper.abort();
    served?;
    Ok(())
}

/// Removes workspaces untouched for longer than `retention` (see
/// [`workspace::sweep`]), every quarter of it (at least every 5 minutes,
/// at most every second), until `shutdown`.
pub async fn sweep_workspaces(base: PathBuf, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        let (base_, retention_) = (base.clone(), retention);
        match tokio::task::spawn_blocking(move || workspace::sweep(&base_, retention_)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "workspaces past their retention removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the workspace sweep failed"),
            Err(e) => tracing::warn!(error = %e, "the workspace sweep panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The sandbox helper `tools` names (`tools.sandbox_helper`), else the one
/// next to this program; when there is none, why, and the command that
/// builds it.
pub fn sandbox_helper(tools: &amaos_mesh::config::ToolsConfig) -> Result<PathBuf, String> {
    const BUILD: &str = "build it with `cargo build --bin amaos-sandbox`";
    match &tools.sandbox_helper {
        Some(helper) if helper.is_file() => Ok(helper.clone()),
        Some(helper) => Err(format!(
            "the sandbox helper {} (config key `tools.sandbox_helper`) does not exist; {BUILD}",
            helper.display()
        )),
        None => sandbox::Sandbox::find_helper().ok_or_else(|| {
            let here = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| "this program".into());
            format!(
                "the sandbox helper amaos-sandbox is not next to this program (in {here}); \
                 {BUILD}, or name it in config key `tools.sandbox_helper`"
            )
        }),
    }
}

/// The sandbox of `config`, checked by running `true` in it. Without a
/// working sandbox the service refuses to start, naming why — unless
/// `tools.allow_no_sandbox` (a development flag) says to go on without the
/// `shell` tool.
pub async fn start_sandbox(config: &Config) -> Result<Option<Arc<sandbox::Sandbox>>, BoxError> {
    let t = &config.tools;
    let refuse = |why: String| -> Result<Option<Arc<sandbox::Sandbox>>, BoxError> {
        if t.allow_no_sandbox {
            tracing::warn!(%why, "no sandbox: the shell tool is not offered (tools.allow_no_sandbox)");
            Ok(None)
        } else {
            Err(format!(
                "{why}; the tools service will not run commands unsandboxed \
                 (set tools.allow_no_sandbox = true to start without the shell tool)"
            )
            .into())
        }
    };
    let helper = match sandbox_helper(t) {
        Ok(helper) => helper,
        Err(why) => return refuse(why),
    };
    let sandbox = sandbox::Sandbox::new(
        helper,
        t.sandbox_uid_base,
        t.max_sandboxes,
        sandbox::Limits {
            cpu_seconds: t.sandbox_cpu_seconds,
            memory_bytes: t.sandbox_memory_bytes,
            processes: t.sandbox_processes,
            output_bytes: t.sandbox_output_bytes,
            // No single file larger than the workspace may hold.
            file_bytes: sandbox::Limits::default()
                .file_bytes
                .min(t.workspace_max_bytes),
            ..sandbox::Limits::default()
        },
    );
    match sandbox
        .probe(&config.data_dir.join("sandbox").join("probe"))
        .await
    {
        Ok(()) => Ok(Some(Arc::new(sandbox))),
        Err(e) => refuse(format!(
            "{e} (the sandbox needs user, mount and pid namespaces and permission to map ids)"
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
