//! Tool calls: what a caller sees (ListTools), and each call checked
//! (role allowlist, quotas, the run token's task), journaled by idempotency
//! key, run, and logged as one audit event.

use std::time::{Duration, Instant};

use amaos_proto::json::{json_to_value, map_to_struct, struct_to_map};
use amaos_proto::time::{duration, proto_duration};
use amaos_proto::tools::v1 as pb;

use crate::journal::{Begin, JournalError};
use crate::{
    Checked, DEFAULT_TIMEOUT, MAX_TIMEOUT, ToolError, Tools, builtin, journal, shell, web,
    workspace,
};

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
            Err(ToolError::ApprovalRequired(..)) => ("deny", "approval_required"),
            Err(ToolError::TooLarge(_)) => ("allow", "too_large"),
            Err(ToolError::Timeout(_)) => ("allow", "timeout"),
            Err(ToolError::Unimplemented(_)) => ("deny", "unimplemented"),
            Err(ToolError::Io(_)) => ("allow", "io_error"),
            Err(ToolError::Sandbox(_)) => ("allow", "sandbox_error"),
            Err(ToolError::AuditDown(_)) => ("deny", "audit_down"),
            Err(ToolError::JournalDown(_)) => ("deny", "journal_down"),
            Err(ToolError::Unavailable(_)) => ("deny", "unavailable"),
        };
        self.metrics.call(&tool, outcome, started.elapsed());
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
    pub(crate) async fn audit_action(
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
            // A gated tool runs only for a run token carrying a person's
            // grant for exactly this call: its idempotency key and its
            // arguments. Checked before the quota, which a refusal spends not.
            if let Some(why) = self.gated(&caller.tenant, &tool) {
                let sha256 = hex(fingerprint);
                let granted = !idempotency_key.is_empty()
                    && caller
                        .task
                        .as_ref()
                        .is_some_and(|run| run.approves(&idempotency_key, &sha256));
                if !granted {
                    return Err(ToolError::ApprovalRequired(tool.clone(), why));
                }
            }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
