//! `[tools]`: the tools service: files, the idempotency journal, sandboxes,
//! `web_fetch`, MCP servers and workspaces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{
    ConfigError, StoreBackend, addr, http_url, in_range, positive, service_endpoint, url,
};
use super::duration::duration_text;
use super::router::Cidr;

/// The tools service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// Root of the per-task workspaces; unset for `<data_dir>/workspaces`.
    pub workspace_dir: Option<PathBuf>,
    /// Largest file a tool reads or writes, in bytes.
    pub max_file_bytes: usize,
    /// Most entries `file_list` returns.
    pub max_list_entries: usize,
    /// Recorded results kept for idempotent replay.
    pub max_journal_entries: usize,
    /// Where the idempotency journal lives: `memory` (this process only) or
    /// `redis` (shared by every tools replica and kept across restarts, so a
    /// call with an idempotency key runs once in the whole mesh). Unset
    /// follows `orchestrator.backend`; the Redis journal uses
    /// `orchestrator.redis_url` and keys under
    /// `<orchestrator.redis_prefix>:tools:journal:`.
    pub journal: Option<StoreBackend>,
    /// How long a recorded result stays replayable.
    #[serde(with = "duration_text")]
    pub journal_ttl: Duration,
    /// How long a call's reservation of its idempotency key lasts without
    /// renewal (the running call renews it); a replica that dies mid-call
    /// loses the key to the next caller after this.
    #[serde(with = "duration_text")]
    pub journal_lease: Duration,
    /// Store recorded results sealed (envelope encryption, AES-256-GCM, the
    /// tenant as key context) in the Redis journal.
    pub journal_encrypt: bool,
    /// The journal's master key file (created 0600 if absent); unset for
    /// `<data_dir>/tools.keys`. Replicas must share it.
    pub journal_key_file: Option<PathBuf>,
    /// The `amaos-sandbox` helper; unset to look next to this program.
    pub sandbox_helper: Option<PathBuf>,
    /// A development flag: start even when no sandbox can be made (the
    /// `shell` tool is then not offered). Off by default: the service
    /// refuses to start without a working sandbox.
    pub allow_no_sandbox: bool,
    /// First unprivileged host uid of the sandbox pool (two per sandbox).
    pub sandbox_uid_base: u32,
    /// Sandboxes at once, in all.
    pub max_sandboxes: usize,
    /// Sandboxes at once per tenant.
    pub max_sandboxes_per_tenant: usize,
    /// Tool calls per minute per tenant; 0 for no limit.
    pub calls_per_minute: u32,
    /// CPU seconds of one sandboxed command.
    pub sandbox_cpu_seconds: u64,
    /// Address space of one sandboxed command, bytes.
    pub sandbox_memory_bytes: u64,
    /// Processes of one sandbox.
    pub sandbox_processes: u64,
    /// Bytes of stdout and of stderr kept per command.
    pub sandbox_output_bytes: usize,
    /// Which tools each role may call (`*` for all); a caller may call a
    /// tool when any of its roles allows it.
    pub role_tools: BTreeMap<String, Vec<String>>,
    /// Tools whose every call waits for a person's approval, for every
    /// tenant: names, or `server.*` for all of an MCP server's tools (`*`
    /// for every tool). A tenant gates more with Casbin lines
    /// `p, approval, <tenant>, tools/<tool>, required`. A gated call runs
    /// only for a run token carrying the person's grant for exactly its
    /// idempotency key and arguments.
    pub approval_required: Vec<String>,
    /// Largest body `web_fetch` reads, bytes; more is cut and marked.
    pub web_fetch_max_bytes: usize,
    /// Longest a `web_fetch` may take, redirects included per hop.
    #[serde(with = "duration_text")]
    pub web_fetch_timeout: Duration,
    /// Addresses `web_fetch` may reach although their range is refused
    /// (loopback, private, …): for tests and private deployments only.
    pub web_fetch_exempt: Vec<std::net::IpAddr>,
    /// Per tenant, the only domains `web_fetch` may reach (subdomains
    /// included); tenants not listed may reach any public address.
    pub web_allow: BTreeMap<String, Vec<String>>,
    /// MCP servers registered at start, by name (their tools appear as
    /// `name.tool`); they are platform-wide.
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Networks (CIDRs, or single addresses) that platform-wide MCP servers'
    /// URLs may reach although `web_fetch` refuses them (loopback, private,
    /// …), e.g. the cluster's service network. Tenants' servers never get
    /// this exemption (only `web_fetch_exempt`, as `web_fetch` does).
    pub mcp_exempt: Vec<String>,
    /// Most bytes one task workspace holds (disk use: the larger of a file's
    /// size and its allocated blocks, directories included).
    pub workspace_max_bytes: u64,
    /// Most files and directories one task workspace holds.
    pub workspace_max_files: u64,
    /// Most task workspaces a tenant has at once.
    pub max_workspaces_per_tenant: usize,
    /// A workspace untouched by any tool call for this long is removed (its
    /// task has finished or stalled); at least 5 minutes.
    #[serde(with = "duration_text")]
    pub workspace_retention: Duration,
}

/// An MCP server registered at start: a stdio `command` (run in the
/// sandbox) or a streamable-HTTP `url`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// The program (an absolute path) and its arguments, for stdio.
    pub command: Vec<String>,
    /// Host paths the stdio server needs, visible read-only in its sandbox.
    pub read_only_paths: Vec<PathBuf>,
    /// The streamable-HTTP endpoint, for HTTP.
    pub url: String,
    /// Secrets passed to a stdio server as environment variables
    /// (`NAME=path`, or `path` for a name made from it).
    pub secret_env: Vec<String>,
    /// The secret sent to an HTTP server as a bearer token; empty for none.
    pub bearer_secret: String,
}
service_endpoint!(ToolsConfig);

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            listen: addr(50054),
            admin_listen: Some(addr(9604)),
            url: url(50054),
            workspace_dir: None,
            max_file_bytes: 1024 * 1024,
            max_list_entries: 1000,
            max_journal_entries: 100_000,
            journal: None,
            journal_ttl: Duration::from_secs(24 * 60 * 60),
            journal_lease: Duration::from_secs(10),
            journal_encrypt: true,
            journal_key_file: None,
            sandbox_helper: None,
            allow_no_sandbox: false,
            sandbox_uid_base: 200_000,
            max_sandboxes: 8,
            max_sandboxes_per_tenant: 2,
            calls_per_minute: 600,
            sandbox_cpu_seconds: 10,
            sandbox_memory_bytes: 512 * 1024 * 1024,
            sandbox_processes: 64,
            sandbox_output_bytes: 64 * 1024,
            web_fetch_max_bytes: 1024 * 1024,
            web_fetch_timeout: Duration::from_secs(20),
            web_fetch_exempt: Vec::new(),
            web_allow: BTreeMap::new(),
            mcp_servers: BTreeMap::new(),
            mcp_exempt: Vec::new(),
            workspace_max_bytes: 256 * 1024 * 1024,
            workspace_max_files: 10_000,
            max_workspaces_per_tenant: 128,
            workspace_retention: Duration::from_secs(60 * 60),
            approval_required: Vec::new(),
            role_tools: BTreeMap::from([
                ("admin".to_owned(), vec!["*".to_owned()]),
                ("agent".to_owned(), vec!["*".to_owned()]),
            ]),
        }
    }
}

impl ToolsConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "tools.max_file_bytes",
            self.max_file_bytes,
            1,
            1024 * 1024 * 1024,
        )?;
        in_range(
            "tools.max_list_entries",
            self.max_list_entries,
            1,
            1_000_000,
        )?;
        in_range(
            "tools.max_journal_entries",
            self.max_journal_entries,
            1,
            100_000_000,
        )?;
        positive("tools.journal_ttl", self.journal_ttl)?;
        if self.journal_lease < Duration::from_millis(100) || self.journal_lease > self.journal_ttl
        {
            return Err(ConfigError::new(
                "tools.journal_lease",
                "must be at least 100ms and at most tools.journal_ttl",
            ));
        }
        in_range("tools.max_sandboxes", self.max_sandboxes, 1, 1024)?;
        in_range(
            "tools.web_fetch_max_bytes",
            self.web_fetch_max_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        positive("tools.web_fetch_timeout", self.web_fetch_timeout)?;
        for (name, server) in &self.mcp_servers {
            let key = format!("tools.mcp_servers.{name}");
            match (server.command.is_empty(), server.url.is_empty()) {
                (false, true) if server.command[0].starts_with('/') => {}
                (false, true) => {
                    return Err(ConfigError::new(
                        &format!("{key}.command"),
                        "the program must be an absolute path",
                    ));
                }
                (true, false) => http_url(&format!("{key}.url"), &server.url)?,
                _ => {
                    return Err(ConfigError::new(
                        &key,
                        "set exactly one of `command` (stdio) or `url` (streamable HTTP)",
                    ));
                }
            }
        }
        if let Some(bad) = self.mcp_exempt.iter().find(|n| Cidr::parse(n).is_none()) {
            return Err(ConfigError::new(
                "tools.mcp_exempt",
                format!("`{bad}` is not an address or a CIDR network"),
            ));
        }
        in_range(
            "tools.workspace_max_bytes",
            self.workspace_max_bytes as usize,
            64 * 1024,
            1024 * 1024 * 1024 * 1024,
        )?;
        in_range(
            "tools.workspace_max_files",
            self.workspace_max_files as usize,
            16,
            10_000_000,
        )?;
        in_range(
            "tools.max_workspaces_per_tenant",
            self.max_workspaces_per_tenant,
            1,
            1_000_000,
        )?;
        if self.workspace_retention < Duration::from_secs(300) {
            return Err(ConfigError::new(
                "tools.workspace_retention",
                "must be at least 5m (longer than the longest tool call)",
            ));
        }
        in_range(
            "tools.max_sandboxes_per_tenant",
            self.max_sandboxes_per_tenant,
            1,
            1024,
        )?;
        in_range(
            "tools.sandbox_cpu_seconds",
            self.sandbox_cpu_seconds as usize,
            1,
            3600,
        )?;
        in_range(
            "tools.sandbox_memory_bytes",
            self.sandbox_memory_bytes as usize,
            16 * 1024 * 1024,
            64 * 1024 * 1024 * 1024,
        )?;
        in_range(
            "tools.sandbox_processes",
            self.sandbox_processes as usize,
            1,
            4096,
        )?;
        in_range(
            "tools.sandbox_output_bytes",
            self.sandbox_output_bytes,
            1024,
            16 * 1024 * 1024,
        )?;
        if self.sandbox_uid_base < 1000
            || self
                .sandbox_uid_base
                .checked_add(2 * self.max_sandboxes as u32)
                .is_none()
        {
            return Err(ConfigError::new(
                "tools.sandbox_uid_base",
                "must be an unprivileged uid (1000 or more) with room for max_sandboxes after it",
            ));
        }
        Ok(())
    }
}
