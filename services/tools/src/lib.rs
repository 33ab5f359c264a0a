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
//! - `error`: [`ToolError`] and its one mapping to gRPC status codes.
//! - `calls`: ListTools and each call's checks (role allowlist, quotas, the
//!   run token's task), journal, run and audit event.
//! - `registration`: RegisterToolServer (who may, which scope, audit).
//! - `start`: the sandbox helper found and probed, [`serve`], the
//!   workspace sweeper.
//! - this file: [`Tools`] (its state, quotas, the shell tool within them)
//!   and the gRPC service's handlers.

pub mod builtin;
mod calls;
mod error;
pub mod journal;
pub mod mcp;
pub mod metrics;
mod registration;
pub mod sandbox;
pub mod shell;
mod start;
pub mod tree;
pub mod web;
pub mod workspace;

pub use error::ToolError;
pub use start::{grpc_service, sandbox_helper, serve, start_sandbox, sweep_workspaces};

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::authn::Authenticator;
use amaos_mesh::rate::{Limiter, Rate};
use amaos_mesh::{BoxError, Config};
use amaos_proto::tools::v1 as pb;
use amaos_proto::tools::v1::tools_service_server::ToolsService;
use tonic::{Request, Response, Status};

use crate::journal::Journal;

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
    /// Tools whose calls need a person's approval (`tools.approval_required`).
    approval_required: Arc<Vec<String>>,
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
    metrics: metrics::ToolMetrics,
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
            approval_required: Arc::new(config.tools.approval_required.clone()),
            quotas: Arc::new(Mutex::new(Quotas::default())),
            max_sandboxes_per_tenant: config.tools.max_sandboxes_per_tenant,
            calls_per_minute: config.tools.calls_per_minute,
            call_rate: Arc::new(Limiter::new()),
            policy,
            metrics: metrics::ToolMetrics::default(),
        })
    }

    /// The service with `journal` (see [`journal::open`]) instead of an
    /// in-process one.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = journal;
        self
    }

    /// The service, reporting its calls, sandbox and refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: &amaos_mesh::metrics::Metrics) -> Self {
        self.metrics = metrics::ToolMetrics::register(metrics, self.web.refusals.clone());
        self.metrics.sandbox(self.sandbox.is_some());
        self
    }

    fn allowed(&self, roles: &[String], tool: &str) -> bool {
        roles.iter().any(|r| {
            self.role_tools
                .get(r)
                .is_some_and(|tools| names_tool(tools, tool))
        })
    }

    /// Why a call of `tool` in `tenant` needs a person's approval, if it
    /// does: the platform's `tools.approval_required`, or the tenant's
    /// policy (`p, approval, <tenant>, tools/<tool>, required`).
    fn gated(&self, tenant: &str, tool: &str) -> Option<&'static str> {
        if names_tool(&self.approval_required, tool) {
            return Some("tools.approval_required names it");
        }
        self.policy
            .allows(
                "",
                &["approval".to_owned()],
                tenant,
                &format!("tools/{tool}"),
                "required",
            )
            .map(|_| "the tenant's policy requires approval")
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
        let call = tokio::spawn(tracing::Instrument::instrument(
            async move { tools.invoke(&caller, request).await },
            tracing::Span::current(),
        ));
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

/// Whether `patterns` (names, `server.*`, `*`) name `tool`.
fn names_tool(patterns: &[String], tool: &str) -> bool {
    let server_wildcard = tool.split_once('.').map(|(s, _)| format!("{s}.*"));
    patterns
        .iter()
        .any(|t| t == "*" || t == tool || Some(t) == server_wildcard.as_ref())
}
