//! Registering MCP servers at run time (RegisterToolServer): who may, in
//! which scope, the checks before connecting, and the audit record.

use amaos_proto::json::map_to_struct;
use amaos_proto::tools::v1 as pb;

use crate::{ToolError, Tools, mcp};

impl Tools {
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
}
