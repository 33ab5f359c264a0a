//! Custom tools from MCP servers (through rmcp): a stdio server runs inside
//! the sandbox, a streamable-HTTP server is reached by URL. Their tools
//! appear namespaced as `server.tool` with their JSON Schemas, and every
//! call's arguments are validated against the schema before they are sent
//! (INVALID_ARGUMENT naming the failing path).
//!
//! Servers belong to a [`Scope`]: platform-wide (from config, or registered
//! by a platform admin) or one tenant's. A tenant's caller sees and calls
//! its tenant's servers first, then platform-wide ones (a tenant's server
//! shadows a platform one of the same name for that tenant only). A
//! tenant's server may name only that tenant's secrets (`tenants/<tenant>/…`),
//! its URL must pass `web_fetch`'s address policy and is connected to at
//! the address that was checked (http) or verified by TLS (https), and a
//! stdio server of a tenant gets a read-only working directory.
//!
//! # Layout
//!
//! - this file: the types, the registry and calls to its tools;
//! - `check`: a registration's checks, before anything connects;
//! - `connect`: starting or reaching a checked server and listing its tools.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use crate::ToolError;
use crate::sandbox::{Sandbox, SandboxProcess};
use amaos_mesh::secrets::{Secret, SecretStore};

mod check;
mod connect;

/// Most platform-wide MCP servers at once.
pub const MAX_SERVERS: usize = 32;
/// Most MCP servers one tenant has at once.
pub const MAX_SERVERS_PER_TENANT: usize = 4;
/// Most tenants' MCP servers at once, all tenants together.
pub const MAX_TENANT_SERVERS: usize = 256;
/// Where a tenant's secrets live: `tenants/<tenant>/…`.
pub const TENANT_SECRETS: &str = "tenants";
/// Most tools one server may offer.
pub const MAX_TOOLS_PER_SERVER: usize = 256;
/// How long connecting and listing tools may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// CPU seconds a stdio server's sandbox gets in all.
const SERVER_CPU_SECONDS: u64 = 3600;
/// How long a stdio server that did not initialize is given to exit, so
/// the sandbox's reason can be read.
const HELPER_EXIT_WAIT: Duration = Duration::from_secs(2);

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

/// Whose a server is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every tenant's: registered by config or by a platform admin.
    Platform,
    /// One tenant's.
    Tenant(String),
}

impl Scope {
    /// For the audit trail: `mcp/*/<name>` (platform) or `mcp/<tenant>/<name>`.
    pub fn object(&self, name: &str) -> String {
        match self {
            Scope::Platform => format!("mcp/*/{name}"),
            Scope::Tenant(t) => format!("mcp/{t}/{name}"),
        }
    }
}

/// Which addresses servers' URLs may reach beyond `web_fetch`'s policy.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Addresses every server may reach (`tools.web_fetch_exempt`).
    pub exempt: Vec<IpAddr>,
    /// Networks platform-wide servers may also reach (`tools.mcp_exempt`).
    pub platform_exempt: Vec<amaos_mesh::config::Cidr>,
}

/// A registration that passed every check, ready to connect.
pub struct Checked {
    scope: Scope,
    name: String,
    transport: Transport,
    /// For HTTP: the URL to connect to and the Host header to send (an
    /// `http` URL is rewritten to the checked address).
    http: Option<(String, Option<http::HeaderValue>)>,
}

/// The registered MCP servers.
pub struct Mcp {
    servers: RwLock<BTreeMap<(Scope, String), Arc<Server>>>,
    sandbox: Option<Arc<Sandbox>>,
    dir: PathBuf,
    secrets: Option<Arc<dyn SecretStore>>,
    policy: AddressPolicy,
}

/// Whether `path` names a secret of `tenant`: `tenants/<tenant>/<name…>`,
/// no empty, `.` or `..` segment (a `@version` suffix is allowed).
pub fn tenant_secret(tenant: &str, path: &str) -> bool {
    let Some(rest) = path
        .strip_prefix(TENANT_SECRETS)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.strip_prefix(tenant))
        .and_then(|p| p.strip_prefix('/'))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'))
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
            policy: AddressPolicy::default(),
        }
    }

    /// The same, with `policy` for servers' URLs.
    pub fn with_policy(mut self, policy: AddressPolicy) -> Self {
        self.policy = policy;
        self
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

    /// Checks then connects: see [`Mcp::check`] and [`Mcp::connect`].
    pub async fn register(
        &self,
        scope: &Scope,
        name: &str,
        transport: Transport,
    ) -> Result<Vec<(String, String, Map<String, Value>)>, ToolError> {
        let checked = self.check(scope, name, transport).await?;
        self.connect(checked).await
    }

    /// The server `name` as `tenant` sees it: its tenant's, else the platform's.
    fn resolve(
        servers: &BTreeMap<(Scope, String), Arc<Server>>,
        tenant: &str,
        name: &str,
    ) -> Option<Arc<Server>> {
        servers
            .get(&(Scope::Tenant(tenant.to_owned()), name.to_owned()))
            .or_else(|| servers.get(&(Scope::Platform, name.to_owned())))
            .cloned()
    }

    /// The tools `tenant` sees: its servers' and the platform-wide servers'
    /// (those its own do not shadow): (full name, description, schema).
    pub async fn tools(&self, tenant: &str) -> Vec<(String, String, Map<String, Value>)> {
        let servers = self.servers.read().await;
        let own = Scope::Tenant(tenant.to_owned());
        let mut names: Vec<&String> = servers
            .keys()
            .filter(|(scope, _)| *scope == own || *scope == Scope::Platform)
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| Self::resolve(&servers, tenant, name))
            .flat_map(|s| {
                s.tools
                    .iter()
                    .map(|t| (t.full_name.clone(), t.description.clone(), t.schema.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Whether `full_name` names a tool `tenant` sees.
    pub async fn has(&self, tenant: &str, full_name: &str) -> bool {
        let Some((server, tool)) = full_name.split_once('.') else {
            return false;
        };
        Self::resolve(&*self.servers.read().await, tenant, server)
            .is_some_and(|s| s.tools.iter().any(|t| t.name == tool))
    }

    /// Validates `args` against the tool's schema and calls it (the server
    /// resolved as for [`Mcp::has`]); the
    /// server's answer (content, structured content, is_error) is the result.
    pub async fn call(
        &self,
        tenant: &str,
        full_name: &str,
        args: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, ToolError> {
        let (server_name, tool_name) = full_name
            .split_once('.')
            .ok_or_else(|| ToolError::NotFound(format!("no tool is named `{full_name}`")))?;
        let server = Self::resolve(&*self.servers.read().await, tenant, server_name)
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
