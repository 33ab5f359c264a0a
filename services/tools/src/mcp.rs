//! Custom tools from MCP servers (through rmcp): a stdio server runs inside
//! the sandbox, a streamable-HTTP server is reached by URL. Their tools
//! appear namespaced as `server.tool` with their JSON Schemas, and every
//! call's arguments are validated against the schema before they are sent
//! (INVALID_ARGUMENT naming the failing path).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use crate::ToolError;
use crate::sandbox::{Sandbox, SandboxProcess};
use amaos_mesh::secrets::{Secret, SecretStore};

/// Most MCP servers at once.
pub const MAX_SERVERS: usize = 32;
/// Most tools one server may offer.
pub const MAX_TOOLS_PER_SERVER: usize = 256;
/// How long connecting and listing tools may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// CPU seconds a stdio server's sandbox gets in all.
const SERVER_CPU_SECONDS: u64 = 3600;

/// A tool of an MCP server.
pub struct McpTool {
    /// `server.tool`.
    pub full_name: String,
    /// The tool's own name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its arguments' JSON Schema.
    pub schema: Map<String, Value>,
    validator: jsonschema::Validator,
}

struct Server {
    client: RunningService<RoleClient, ()>,
    tools: Vec<McpTool>,
    /// The sandbox of a stdio server; dropping it kills the server.
    _process: Option<SandboxProcess>,
}

/// How to reach a server.
pub enum Transport {
    /// A command (absolute path first) run over stdio in the sandbox, with
    /// these host paths visible read-only.
    Stdio {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Host paths the server needs (its program, its data).
        read_only: Vec<PathBuf>,
        /// Secrets passed as environment variables: `NAME=path`, or `path`
        /// for the name made from the path (`github/token` → `GITHUB_TOKEN`).
        secret_env: Vec<String>,
    },
    /// A streamable-HTTP endpoint.
    Http {
        /// Its URL.
        url: String,
        /// The secret sent as a bearer token, if any.
        bearer_secret: Option<String>,
    },
}

/// The registered MCP servers.
pub struct Mcp {
    servers: RwLock<BTreeMap<String, Arc<Server>>>,
    sandbox: Option<Arc<Sandbox>>,
    dir: PathBuf,
    secrets: Option<Arc<dyn SecretStore>>,
}

/// `github/token` → `GITHUB_TOKEN`.
pub fn env_name_of(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn unavailable(server: &str, e: impl std::fmt::Display) -> ToolError {
    ToolError::Sandbox(format!("MCP server `{server}`: {e}"))
}

/// `/a/0/b` → `arguments.a[0].b`.
fn field_of(pointer: &str) -> String {
    let mut out = String::from("arguments");
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            out.push('.');
            out.push_str(&part.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

impl Mcp {
    /// No servers yet; stdio servers run in `sandbox`, their working
    /// directories under `dir`.
    pub fn new(
        sandbox: Option<Arc<Sandbox>>,
        dir: PathBuf,
        secrets: Option<Arc<dyn SecretStore>>,
    ) -> Self {
        Self {
            servers: RwLock::new(BTreeMap::new()),
            sandbox,
            dir,
            secrets,
        }
    }

    /// The secret at `path`, for the field `field` (errors name the path, never a value).
    async fn secret(&self, field: &str, path: &str) -> Result<Secret, ToolError> {
        let store = self.secrets.as_ref().ok_or_else(|| {
            ToolError::Unimplemented(format!("{field}: no secret store is configured"))
        })?;
        store
            .get(path)
            .await
            .map_err(|e| ToolError::InvalidArgument {
                field: field.to_owned(),
                message: e.to_string(),
            })
    }

    /// Connects to a server, lists its tools and registers them under
    /// `name` (replacing a server of that name); returns the tools.
    pub async fn register(
        &self,
        name: &str,
        transport: Transport,
    ) -> Result<Vec<(String, String, Map<String, Value>)>, ToolError> {
        if !valid_name(name) {
            return Err(ToolError::InvalidArgument {
                field: "name".into(),
                message: "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
            });
        }
        let full = {
            let servers = self.servers.read().await;
            servers.len() >= MAX_SERVERS && !servers.contains_key(name)
        };
        if full {
            return Err(ToolError::Quota(format!(
                "at most {MAX_SERVERS} MCP servers"
            )));
        }
        let (client, process) = match transport {
            Transport::Stdio {
                argv,
                read_only,
                secret_env,
            } => {
                if argv.first().is_none_or(|c| !c.starts_with('/')) {
                    return Err(ToolError::InvalidArgument {
                        field: "stdio.command".into(),
                        message: "must be an absolute path".into(),
                    });
                }
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
                let mut process = sandbox
                    .spawn(
                        &self.dir.join(name),
                        &argv,
                        &read_only,
                        &env,
                        SERVER_CPU_SECONDS,
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
                let client = tokio::time::timeout(CONNECT_TIMEOUT, ().serve((stdout, stdin)))
                    .await
                    .map_err(|_| unavailable(name, "did not initialize in time"))?
                    .map_err(|e| unavailable(name, e))?;
                (client, Some(process))
            }
            Transport::Http { url, bearer_secret } => {
                let parsed = reqwest::Url::parse(&url).map_err(|e| ToolError::InvalidArgument {
                    field: "http.url".into(),
                    message: format!("is not a URL: {e}"),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ToolError::InvalidArgument {
                        field: "http.url".into(),
                        message: "must be http:// or https://".into(),
                    });
                }
                amaos_mesh::install_crypto_provider();
                let mut config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
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
        self.servers.write().await.insert(name.to_owned(), server);
        Ok(summary)
    }

    /// Every tool of every server: (full name, description, schema).
    pub async fn tools(&self) -> Vec<(String, String, Map<String, Value>)> {
        self.servers
            .read()
            .await
            .values()
            .flat_map(|s| {
                s.tools
                    .iter()
                    .map(|t| (t.full_name.clone(), t.description.clone(), t.schema.clone()))
            })
            .collect()
    }

    /// Whether `full_name` names a registered tool.
    pub async fn has(&self, full_name: &str) -> bool {
        let Some((server, tool)) = full_name.split_once('.') else {
            return false;
        };
        self.servers
            .read()
            .await
            .get(server)
            .is_some_and(|s| s.tools.iter().any(|t| t.name == tool))
    }

    /// Validates `args` against the tool's schema and calls it; the
    /// server's answer (content, structured content, is_error) is the result.
    pub async fn call(
        &self,
        full_name: &str,
        args: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, ToolError> {
        let (server_name, tool_name) = full_name
            .split_once('.')
            .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{full_name}`")))?;
        let server = self
            .servers
            .read()
            .await
            .get(server_name)
            .cloned()
            .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{full_name}`")))?;
        let tool = server
            .tools
            .iter()
            .find(|t| t.name == tool_name)
            .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{full_name}`")))?;
        let instance = Value::Object(args);
        if let Some(error) = tool.validator.iter_errors(&instance).next() {
            return Err(ToolError::InvalidArgument {
                field: field_of(&error.instance_path().to_string()),
                message: error.to_string(),
            });
        }
        let args = match instance {
            Value::Object(args) => args,
            _ => Map::new(),
        };
        let params = CallToolRequestParams::new(tool_name.to_owned()).with_arguments(args);
        let result = tokio::time::timeout(timeout, server.client.call_tool(params))
            .await
            .map_err(|_| ToolError::Timeout(timeout))?
            .map_err(|e| unavailable(server_name, e))?;
        serde_json::to_value(result).map_err(|e| ToolError::Io(e.to_string()))
    }
}
