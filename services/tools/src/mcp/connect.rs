//! Connecting a checked server: a stdio server started in the sandbox (its
//! secrets as environment variables), or an HTTP one reached by URL; its
//! tools listed, their schemas compiled, and the server registered.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use rmcp::ServiceExt;
use serde_json::{Map, Value};

use super::{
    CONNECT_TIMEOUT, Checked, HELPER_EXIT_WAIT, MAX_TOOLS_PER_SERVER, Mcp, McpTool,
    SERVER_CPU_SECONDS, Scope, Server, Transport, env_name_of, unavailable,
};
use crate::ToolError;

impl Mcp {
    /// The working directory of a stdio server.
    fn workdir(&self, scope: &Scope, name: &str) -> PathBuf {
        match scope {
            Scope::Platform => self.dir.join("platform").join(name),
            Scope::Tenant(t) => self.dir.join("tenants").join(t).join(name),
        }
    }

    /// Connects to a checked server, lists its tools and registers them
    /// under its name in its scope (replacing a server of that name and
    /// scope); returns the tools.
    pub async fn connect(
        &self,
        checked: Checked,
    ) -> Result<Vec<(String, String, Map<String, Value>)>, ToolError> {
        let Checked {
            scope,
            name,
            transport,
            http,
        } = checked;
        let name = name.as_str();
        let (client, process) = match transport {
            Transport::Stdio {
                argv,
                read_only,
                secret_env,
            } => {
                let sandbox = self.sandbox.clone().ok_or_else(|| {
                    ToolError::Unimplemented(
                        "stdio MCP servers need the sandbox, which is not available".into(),
                    )
                })?;
                let mut env = BTreeMap::new();
                for entry in &secret_env {
                    let (var, path) = match entry.split_once('=') {
                        Some((var, path)) => (var.to_owned(), path),
                        None => (env_name_of(entry), entry.as_str()),
                    };
                    let secret = self.secret("stdio.secret_env", path).await?;
                    env.insert(var, secret.expose().to_owned());
                }
                // A tenant's server cannot write to disk: its working
                // directory is read-only to it (its /tmp is a small tmpfs).
                let writable = scope == Scope::Platform;
                let mut process = sandbox
                    .spawn(
                        &self.workdir(&scope, name),
                        &argv,
                        &read_only,
                        &env,
                        SERVER_CPU_SECONDS,
                        writable,
                    )
                    .map_err(|e| unavailable(name, e))?;
                let stdin = process
                    .child
                    .stdin
                    .take()
                    .ok_or_else(|| unavailable(name, "no stdin"))?;
                let stdout = process
                    .child
                    .stdout
                    .take()
                    .ok_or_else(|| unavailable(name, "no stdout"))?;
                let served = tokio::time::timeout(CONNECT_TIMEOUT, ().serve((stdout, stdin)))
                    .await
                    .map_err(|_| "did not initialize in time".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match served {
                    Ok(client) => (client, Some(process)),
                    // The sandbox's own reason (a path it could not bind, a
                    // command it could not exec) rather than a closed pipe.
                    Err(e) => {
                        let why = process.failure(HELPER_EXIT_WAIT).await.unwrap_or(e);
                        return Err(unavailable(name, why));
                    }
                }
            }
            Transport::Http { url, bearer_secret } => {
                let (url, host) = http.unwrap_or((url, None));
                amaos_mesh::install_crypto_provider();
                let mut config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(host) = host {
                    config = config.custom_headers(HashMap::from([(http::header::HOST, host)]));
                }
                if let Some(path) = &bearer_secret {
                    let secret = self.secret("http.bearer_secret", path).await?;
                    config = config.auth_header(secret.expose());
                }
                let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
                let client = tokio::time::timeout(CONNECT_TIMEOUT, ().serve(transport))
                    .await
                    .map_err(|_| unavailable(name, "did not initialize in time"))?
                    .map_err(|e| unavailable(name, e))?;
                (client, None)
            }
        };
        let listed = tokio::time::timeout(CONNECT_TIMEOUT, client.list_all_tools())
            .await
            .map_err(|_| unavailable(name, "did not list its tools in time"))?
            .map_err(|e| unavailable(name, e))?;
        if listed.len() > MAX_TOOLS_PER_SERVER {
            return Err(unavailable(
                name,
                format!(
                    "offers {} tools; at most {MAX_TOOLS_PER_SERVER}",
                    listed.len()
                ),
            ));
        }
        let mut tools = Vec::with_capacity(listed.len());
        for tool in listed {
            let schema: Map<String, Value> = (*tool.input_schema).clone();
            let validator =
                jsonschema::validator_for(&Value::Object(schema.clone())).map_err(|e| {
                    unavailable(
                        name,
                        format!("tool `{}` has an invalid schema: {e}", tool.name),
                    )
                })?;
            tools.push(McpTool {
                full_name: format!("{name}.{}", tool.name),
                name: tool.name.to_string(),
                description: tool.description.map(|d| d.to_string()).unwrap_or_default(),
                schema,
                validator,
            });
        }
        let summary = tools
            .iter()
            .map(|t| (t.full_name.clone(), t.description.clone(), t.schema.clone()))
            .collect();
        let server = Arc::new(Server {
            client,
            tools,
            _process: process,
        });
        let mut servers = self.servers.write().await;
        // Checked again under the lock: registrations may have raced.
        Self::room(&servers, &scope, name)?;
        servers.insert((scope, name.to_owned()), server);
        Ok(summary)
    }
}
