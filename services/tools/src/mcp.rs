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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
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

    /// Room for `name` in `scope`, under the server limits.
    fn room(
        servers: &BTreeMap<(Scope, String), Arc<Server>>,
        scope: &Scope,
        name: &str,
    ) -> Result<(), ToolError> {
        if servers.contains_key(&(scope.clone(), name.to_owned())) {
            return Ok(()); // a replacement
        }
        match scope {
            Scope::Platform => {
                let n = servers
                    .keys()
                    .filter(|(s, _)| *s == Scope::Platform)
                    .count();
                if n >= MAX_SERVERS {
                    return Err(ToolError::Quota(format!(
                        "at most {MAX_SERVERS} platform-wide MCP servers"
                    )));
                }
            }
            Scope::Tenant(tenant) => {
                let own = servers.keys().filter(|(s, _)| s == scope).count();
                if own >= MAX_SERVERS_PER_TENANT {
                    return Err(ToolError::Quota(format!(
                        "tenant `{tenant}` has {MAX_SERVERS_PER_TENANT} MCP servers, its limit"
                    )));
                }
                let tenants = servers
                    .keys()
                    .filter(|(s, _)| *s != Scope::Platform)
                    .count();
                if tenants >= MAX_TENANT_SERVERS {
                    return Err(ToolError::Quota(format!(
                        "at most {MAX_TENANT_SERVERS} tenants' MCP servers in all"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a secret a tenant's server may not name.
    fn check_secret(scope: &Scope, field: &str, path: &str) -> Result<(), ToolError> {
        match scope {
            Scope::Platform => Ok(()),
            Scope::Tenant(tenant) if tenant_secret(tenant, path) => Ok(()),
            Scope::Tenant(tenant) => Err(ToolError::PermissionDenied(format!(
                "{field}: a tenant's server may name only its tenant's secrets, \
                 under `{TENANT_SECRETS}/{tenant}/`"
            ))),
        }
    }

    /// Checks a registration of `name` in `scope` without connecting: the
    /// name, the server limits, the secrets it names (a tenant's server only
    /// its tenant's), an HTTP URL against the address policy (resolved once;
    /// an `http` URL is then used with the checked address).
    pub async fn check(
        &self,
        scope: &Scope,
        name: &str,
        transport: Transport,
    ) -> Result<Checked, ToolError> {
        if !valid_name(name) {
            return Err(ToolError::InvalidArgument {
                field: "name".into(),
                message: "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
            });
        }
        Self::room(&*self.servers.read().await, scope, name)?;
        let http = match &transport {
            Transport::Stdio {
                argv,
                secret_env,
                read_only,
            } => {
                if argv.first().is_none_or(|c| !c.starts_with('/')) {
                    return Err(ToolError::InvalidArgument {
                        field: "stdio.command".into(),
                        message: "must be an absolute path".into(),
                    });
                }
                if let Some(why) = read_only.iter().find_map(|p| crate::sandbox::unshowable(p)) {
                    return Err(ToolError::InvalidArgument {
                        field: "stdio.read_only".into(),
                        message: format!("the sandbox cannot show it read-only: {why}"),
                    });
                }
                for entry in secret_env {
                    let path = entry.split_once('=').map_or(entry.as_str(), |(_, p)| p);
                    Self::check_secret(scope, "stdio.secret_env", path)?;
                }
                None
            }
            Transport::Http { url, bearer_secret } => {
                if let Some(path) = bearer_secret {
                    Self::check_secret(scope, "http.bearer_secret", path)?;
                }
                let mut parsed =
                    reqwest::Url::parse(url).map_err(|e| ToolError::InvalidArgument {
                        field: "http.url".into(),
                        message: format!("is not a URL: {e}"),
                    })?;
                let platform = *scope == Scope::Platform;
                let policy = &self.policy;
                let exempt = |ip: IpAddr| {
                    policy.exempt.contains(&ip)
                        || (platform && policy.platform_exempt.iter().any(|n| n.contains(ip)))
                };
                let address =
                    crate::web::check_url(&parsed, &exempt)
                        .await
                        .map_err(|e| match e {
                            ToolError::PermissionDenied(m) => {
                                ToolError::PermissionDenied(format!("http.url: {m}"))
                            }
                            ToolError::InvalidArgument { message, .. } => {
                                ToolError::InvalidArgument {
                                    field: "http.url".into(),
                                    message,
                                }
                            }
                            other => other,
                        })?;
                if parsed.scheme() == "http" {
                    // Pinned: connect to the checked address, naming the host
                    // in the Host header (a name that resolves elsewhere later
                    // is never asked again). https cannot be pinned this way;
                    // there the certificate must match the name, which an
                    // internal address re-bound to it cannot present.
                    let host = match parsed.port() {
                        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
                        None => parsed.host_str().unwrap_or_default().to_owned(),
                    };
                    let header = http::HeaderValue::from_str(&host).map_err(|_| {
                        ToolError::InvalidArgument {
                            field: "http.url".into(),
                            message: "has a host that cannot be sent".into(),
                        }
                    })?;
                    parsed
                        .set_ip_host(address.ip())
                        .map_err(|()| ToolError::InvalidArgument {
                            field: "http.url".into(),
                            message: "cannot be pinned to its address".into(),
                        })?;
                    Some((parsed.to_string(), Some(header)))
                } else {
                    Some((url.clone(), None))
                }
            }
        };
        Ok(Checked {
            scope: scope.clone(),
            name: name.to_owned(),
            transport,
            http,
        })
    }

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
