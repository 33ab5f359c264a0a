//! The typed configuration of every AMAOS process.
//!
//! Layers, later ones winning: built-in defaults → an optional TOML file
//! (`--config` or `AMAOS_CONFIG`) → `AMAOS_*` environment variables, where
//! `__` separates nesting (`AMAOS_ROUTER__LISTEN=0.0.0.0:50052`). The result is
//! validated once, at start; any problem is one [`ConfigError`] line naming the
//! key, and binaries exit with [`EXIT_CONFIG`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The exit code of a process whose configuration is invalid (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// The top-level keys, which are the only `AMAOS_*` variables read as config
/// (others, such as `AMAOS_API_KEY`, belong to the CLI).
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "log",
    "telemetry",
    "limits",
    "orchestrator",
    "router",
    "agents",
    "tools",
    "memory",
    "auth",
    "models",
    "secrets",
    "tls",
];

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    /// The dotted key, e.g. `router.listen`.
    pub key: String,
    /// What is wrong, and where the value came from when known.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where embedded backends keep their files (keys, workspaces).
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Tracing export.
    pub telemetry: TelemetryConfig,
    /// Limits shared by every server and client.
    pub limits: Limits,
    /// The orchestrator.
    pub orchestrator: OrchestratorConfig,
    /// The router.
    pub router: RouterConfig,
    /// The agents service.
    pub agents: AgentsConfig,
    /// The tools service.
    pub tools: ToolsConfig,
    /// The memory service.
    pub memory: MemoryConfig,
    /// The auth service.
    pub auth: AuthConfig,
    /// Model aliases agents name in their specs (`replay` is built in).
    pub models: BTreeMap<String, ModelConfig>,
    /// Where secrets (LLM API keys, MCP credentials) come from.
    pub secrets: crate::secrets::SecretsConfig,
    /// Transport security between services.
    pub tls: crate::tls::TlsConfig,
}

/// Which API a model alias speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelProvider {
    /// OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).
    Openai,
    /// Anthropic's Messages API (base URL e.g. `https://api.anthropic.com/v1`).
    Anthropic,
    /// The deterministic scripted model.
    Replay,
}

/// A model alias.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The API.
    pub provider: ModelProvider,
    /// The API's base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    #[serde(default)]
    pub base_url: String,
    /// The provider's model name.
    #[serde(default)]
    pub model: String,
    /// The environment variable holding the API key; unset for none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The secret-store path of the API key (e.g. `llm/openai`), read at
    /// each call so a rotated key is used without a restart.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Timeout of one call.
    #[serde(default = "model_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Retries on 429, 5xx and transport errors.
    #[serde(default = "model_retries")]
    pub max_retries: u32,
    /// Aliases tried in order when this one fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// US dollars per 1,000 prompt tokens, for cost estimates.
    #[serde(default)]
    pub prompt_price_per_1k: f64,
    /// US dollars per 1,000 completion tokens.
    #[serde(default)]
    pub completion_price_per_1k: f64,
    /// Stream the answer over server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Most completion tokens per call; unset for the provider's default.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

fn model_timeout() -> Duration {
    Duration::from_secs(60)
}

fn model_retries() -> u32 {
    3
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `amaos_agents=debug,info`.
    pub level: String,
}

/// Tracing export.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset for none.
    pub otlp_endpoint: Option<String>,
}

/// Limits shared by every server and client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// Requests a server handles at once; more are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams one client connection may have open at once (every
    /// running task holds a stream between the orchestrator and its worker).
    pub max_concurrent_streams: u32,
    /// HTTP/2 connections a client opens to each service it calls.
    pub connections_per_service: usize,
    /// Default timeout of a unary call between services.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection to another service.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// How long a stopping server lets in-flight requests finish.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
}

/// Where a service listens and how others reach it.
pub trait ServiceEndpoint {
    /// The gRPC listen address.
    fn listen(&self) -> SocketAddr;
    /// The admin HTTP listen address (`/metrics`, `/healthz`), if any.
    fn admin_listen(&self) -> Option<SocketAddr>;
    /// The URL other services use to reach it.
    fn url(&self) -> &str;
}

macro_rules! service_endpoint {
    ($ty:ty) => {
        impl ServiceEndpoint for $ty {
            fn listen(&self) -> SocketAddr {
                self.listen
            }
            fn admin_listen(&self) -> Option<SocketAddr> {
                self.admin_listen
            }
            fn url(&self) -> &str {
                &self.url
            }
        }
    };
}

/// The orchestrator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// How long a task may take when the submitter gives no timeout.
    #[serde(with = "duration_text")]
    pub task_timeout: Duration,
    /// Largest task input, in bytes.
    pub max_input_bytes: usize,
    /// Tasks kept in the embedded store; the oldest finished ones are dropped first.
    pub max_tasks: usize,
    /// Events kept per task; a run that emits more fails.
    pub max_events_per_task: usize,
    /// Where tasks, events and the queue live: `memory` (this process only)
    /// or `redis` (shared by every replica, survives restarts).
    pub backend: StoreBackend,
    /// The Redis server, for `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of every Redis key, so several meshes can share a server.
    pub redis_prefix: String,
    /// How long an attempt's lease lasts without renewal; a replica that dies
    /// loses its attempts to another replica after this.
    #[serde(with = "duration_text")]
    pub lease: Duration,
    /// Attempts this replica runs at once.
    pub max_in_flight: usize,
    /// Parallel loops claiming work.
    pub claimers: usize,
    /// Attempts running at once per tenant, across replicas; more wait queued.
    pub max_running_per_tenant: u32,
    /// How long a finished task stays readable (Redis backend).
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Submissions per second per tenant, across replicas; 0 for no limit.
    pub tenant_rate: f64,
    /// Submissions a tenant may make at once above its rate.
    pub tenant_burst: u32,
    /// Submissions per second per tenant and team; 0 for no limit.
    pub team_rate: f64,
    /// Submissions at once above the team rate.
    pub team_burst: u32,
    /// Default attempts per stage when a submission gives no retry policy.
    pub retry_max_attempts: u32,
    /// Default backoff before the second attempt.
    #[serde(with = "duration_text")]
    pub retry_initial_backoff: Duration,
    /// Default upper bound on a backoff.
    #[serde(with = "duration_text")]
    pub retry_max_backoff: Duration,
    /// An API key with the `service` role, used to obtain task-scoped tokens;
    /// unset for `<data_dir>/service.key` (written by auth on first start).
    pub service_key_file: Option<PathBuf>,
    /// Store task data and run events sealed (envelope encryption,
    /// AES-256-GCM, the task as key context) in the Redis backend.
    pub encrypt: bool,
    /// The master key file (created 0600 if absent); unset for
    /// `<data_dir>/orchestrator.keys`. Replicas must share it.
    pub key_file: Option<PathBuf>,
}
service_endpoint!(OrchestratorConfig);

/// Where API keys live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStoreBackend {
    /// A JSON file under the data directory (one auth replica).
    File,
    /// Redis, shared by auth replicas.
    Redis,
}

/// Where the orchestrator keeps tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process only.
    Memory,
    /// In Redis, shared by every replica.
    Redis,
}

/// The router.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// How often workers heartbeat.
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// How long a worker stays routable without a heartbeat.
    #[serde(with = "duration_text")]
    pub worker_ttl: Duration,
    /// Largest number of registered workers.
    pub max_workers: usize,
    /// Where the registry and breakers live: `memory` (one router replica) or
    /// `redis` (shared by every replica).
    pub backend: StoreBackend,
    /// The Redis server, for `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of the router's Redis keys.
    pub redis_prefix: String,
    /// Consecutive failed runs that open a worker's or a team's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses traffic before one probe.
    #[serde(with = "duration_text")]
    pub breaker_cool_down: Duration,
    /// The networks (CIDRs) a worker's address must fall in; the orchestrator
    /// sends task input and run tokens there. Loopback by default; a cluster
    /// names its pod network.
    pub worker_networks: Vec<String>,
    /// Most workers one identity may have registered at once.
    pub max_workers_per_identity: usize,
}
service_endpoint!(RouterConfig);

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a single host).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().ok()?)),
            None => (text.trim(), None),
        };
        let network: std::net::IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { network, prefix })
    }

    /// True when `ip` is inside the network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |ip: std::net::IpAddr| -> (u128, u32) {
            match ip {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if width != addr_width {
            return false;
        }
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            (u128::MAX << host_bits) & (u128::MAX >> (128 - width))
        };
        net & mask == addr & mask
    }
}

/// The agents service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it; also what it registers with the router.
    pub url: String,
    /// A directory of team specs (`*.yaml`) served by name.
    pub teams_dir: PathBuf,
    /// Runs taken at once.
    pub capacity: u32,
    /// Model calls per run when the spec sets no budget.
    pub max_steps: u32,
    /// Largest team spec, in bytes.
    pub max_spec_bytes: usize,
    /// The worker's own key (role `worker`), exchanged at auth for the
    /// service token it registers with; unset for `<data_dir>/worker.key`,
    /// which auth writes when it creates the first keys.
    pub service_key_file: Option<PathBuf>,
}
service_endpoint!(AgentsConfig);

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

/// The memory service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// Memories kept per tenant in the long-term tier; a Remember beyond
    /// this is refused with RESOURCE_EXHAUSTED.
    pub max_items_per_tenant: usize,
    /// Largest memory text, in bytes.
    pub max_text_bytes: usize,
    /// The hot tier: `memory` (an LRU in this process) or `redis` (shared
    /// by every replica, survives restarts).
    pub hot: StoreBackend,
    /// The Redis server, for `hot = "redis"`.
    pub redis_url: String,
    /// Prefix of the memory service's Redis keys.
    pub redis_prefix: String,
    /// Memories per tenant in the hot tier; the least recently written move
    /// to long-term memory when it is full.
    pub hot_capacity: usize,
    /// How long a memory stays hot before it moves to long-term memory.
    #[serde(with = "duration_text")]
    pub hot_ttl: Duration,
    /// The long-term tier: `edge` (Qdrant's engine in this process, under
    /// the data directory) or `qdrant` (a Qdrant server).
    pub long_term: LongTermBackend,
    /// The Qdrant server's gRPC URL, for `long_term = "qdrant"`.
    pub qdrant_url: String,
    /// The collection holding every tenant's memories.
    pub qdrant_collection: String,
    /// The environment variable holding the Qdrant API key; unset for none.
    pub qdrant_api_key_env: Option<String>,
    /// The embedder: `minilm` (all-MiniLM-L6-v2 on the CPU) or `openai`
    /// (an OpenAI-compatible `/embeddings` server).
    pub embedder: EmbedderBackend,
    /// Where the MiniLM model files are; default
    /// `<data_dir>/models/all-MiniLM-L6-v2` (or `AMAOS_EMBED_MODEL_DIR`).
    pub embed_model_dir: Option<PathBuf>,
    /// The embeddings server's base URL, for `embedder = "openai"`.
    pub embed_url: String,
    /// The embeddings model name, for `embedder = "openai"`.
    pub embed_model: String,
    /// The embeddings' length, for `embedder = "openai"`.
    pub embed_dimension: usize,
    /// Texts embedded at once.
    pub embed_batch: usize,
    /// How long a memory is kept at most, in every tier.
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Per-tenant retention overriding `retention`, e.g. `{ acme = "30d" }`.
    #[serde(with = "duration_map")]
    pub tenant_retention: BTreeMap<String, Duration>,
    /// How often the lifecycle moves due memories and applies retention.
    #[serde(with = "duration_text")]
    pub sweep_interval: Duration,
    /// Store memory texts encrypted (envelope encryption, AES-256-GCM, the
    /// tenant as key context) in every tier.
    pub encrypt: bool,
    /// The master key file (created 0600 if absent); unset for
    /// `<data_dir>/memory.keys`.
    pub key_file: Option<PathBuf>,
}
service_endpoint!(MemoryConfig);

/// Where long-term memories live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongTermBackend {
    /// Qdrant's engine (qdrant-edge) in this process.
    Edge,
    /// A Qdrant server over gRPC.
    Qdrant,
}

/// What turns memory texts into vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderBackend {
    /// all-MiniLM-L6-v2 on the CPU with candle.
    Minilm,
    /// An OpenAI-compatible embeddings server.
    Openai,
}

impl MemoryConfig {
    /// The MiniLM model directory: the configured one, else
    /// `AMAOS_EMBED_MODEL_DIR`, else `<data_dir>/models/all-MiniLM-L6-v2`.
    pub fn model_dir(&self, data_dir: &Path) -> PathBuf {
        self.embed_model_dir
            .clone()
            .or_else(|| std::env::var_os("AMAOS_EMBED_MODEL_DIR").map(PathBuf::from))
            .unwrap_or_else(|| data_dir.join("models").join("all-MiniLM-L6-v2"))
    }

    /// How long `tenant`'s memories are kept.
    pub fn retention_of(&self, tenant: &str) -> Duration {
        self.tenant_retention
            .get(tenant)
            .copied()
            .unwrap_or(self.retention)
    }
}

/// The auth service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// Where API keys live: `file` (one auth replica) or `redis` (shared by
    /// auth replicas).
    pub key_store: KeyStoreBackend,
    /// The Redis for `key_store = "redis"`.
    pub redis_url: String,
    /// Prefix of the key store's Redis keys.
    pub redis_prefix: String,
    /// The API key store; unset for `<data_dir>/keys.json`.
    pub key_file: Option<PathBuf>,
    /// The audit trail (JSON lines, hash-chained); unset for `<data_dir>/audit.jsonl`.
    pub audit_file: Option<PathBuf>,
    /// When an audit record must be on disk: `always` (fsync before the
    /// append returns; the default) or an interval like `1s` (fsync at most
    /// that often, 1ms to 1m; a crash may lose that much of the trail).
    pub audit_durability: crate::audit::Durability,
    /// The token signing keys; unset for `<data_dir>/signing-keys.json`.
    pub signing_key_file: Option<PathBuf>,
    /// How long a token lives.
    #[serde(with = "duration_text")]
    pub token_ttl: Duration,
    /// How often a new signing key is made (older ones stay published until
    /// their tokens expire).
    #[serde(with = "duration_text")]
    pub key_rotation: Duration,
    /// How long a verified key is trusted by callers before being checked again.
    #[serde(with = "duration_text")]
    pub key_cache_ttl: Duration,
    /// The longest life an API key may be created with (keys without a TTL
    /// live until revoked).
    #[serde(with = "duration_text")]
    pub max_key_ttl: Duration,
    /// The Casbin model file (RBAC with domains); unset for the built-in one.
    /// Every service reads it and reloads it when it changes.
    pub rbac_model: Option<PathBuf>,
    /// The Casbin policy file; unset for the built-in policy.
    pub rbac_policy: Option<PathBuf>,
}
service_endpoint!(AuthConfig);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".amaos"),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            limits: Limits::default(),
            orchestrator: OrchestratorConfig::default(),
            router: RouterConfig::default(),
            agents: AgentsConfig::default(),
            tools: ToolsConfig::default(),
            memory: MemoryConfig::default(),
            auth: AuthConfig::default(),
            models: BTreeMap::new(),
            secrets: crate::secrets::SecretsConfig::default(),
            tls: crate::tls::TlsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 512,
            max_concurrent_streams: 20_000,
            connections_per_service: 4,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            listen: addr(50051),
            admin_listen: Some(addr(9601)),
            url: url(50051),
            task_timeout: Duration::from_secs(600),
            max_input_bytes: 256 * 1024,
            max_tasks: 100_000,
            max_events_per_task: 10_000,
            backend: StoreBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            encrypt: true,
            key_file: None,
            redis_prefix: "amaos".into(),
            lease: Duration::from_secs(15),
            max_in_flight: 10_000,
            claimers: 4,
            max_running_per_tenant: 10_000,
            retention: Duration::from_secs(24 * 3600),
            tenant_rate: 10_000.0,
            tenant_burst: 20_000,
            team_rate: 0.0,
            team_burst: 1_000,
            retry_max_attempts: 3,
            retry_initial_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(30),
            service_key_file: None,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: addr(50052),
            admin_listen: Some(addr(9602)),
            url: url(50052),
            heartbeat_interval: Duration::from_secs(5),
            worker_ttl: Duration::from_secs(15),
            max_workers: 10_000,
            backend: StoreBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "amaos".into(),
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(10),
            worker_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_workers_per_identity: 1024,
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            listen: addr(50053),
            admin_listen: Some(addr(9603)),
            url: url(50053),
            teams_dir: PathBuf::from("examples/teams"),
            capacity: 8,
            max_steps: 32,
            max_spec_bytes: 256 * 1024,
            service_key_file: None,
        }
    }
}

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
            role_tools: BTreeMap::from([
                ("admin".to_owned(), vec!["*".to_owned()]),
                ("agent".to_owned(), vec!["*".to_owned()]),
            ]),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            listen: addr(50055),
            admin_listen: Some(addr(9605)),
            url: url(50055),
            max_items_per_tenant: 1_000_000,
            max_text_bytes: 64 * 1024,
            hot: StoreBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "amaos".into(),
            hot_capacity: 1_000,
            hot_ttl: Duration::from_secs(15 * 60),
            long_term: LongTermBackend::Edge,
            qdrant_url: "http://127.0.0.1:6334".into(),
            qdrant_collection: "amaos_memories".into(),
            qdrant_api_key_env: None,
            embedder: EmbedderBackend::Minilm,
            embed_model_dir: None,
            embed_url: String::new(),
            embed_model: String::new(),
            embed_dimension: 384,
            embed_batch: 32,
            retention: Duration::from_secs(90 * 24 * 3600),
            tenant_retention: BTreeMap::new(),
            sweep_interval: Duration::from_secs(1),
            encrypt: true,
            key_file: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            listen: addr(50056),
            admin_listen: Some(addr(9606)),
            url: url(50056),
            key_store: KeyStoreBackend::File,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "amaos".into(),
            key_file: None,
            audit_file: None,
            audit_durability: crate::audit::Durability::Always,
            signing_key_file: None,
            token_ttl: Duration::from_secs(15 * 60),
            key_rotation: Duration::from_secs(24 * 3600),
            key_cache_ttl: Duration::from_secs(30),
            max_key_ttl: Duration::from_secs(5 * 365 * 24 * 3600),
            rbac_model: None,
            rbac_policy: None,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the `AMAOS_*` environment,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::new(
                    "config",
                    format!("file {} does not exist or is not a file", file.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("AMAOS_")
            .filter(|key| {
                let first = key.as_str().split("__").next().unwrap_or_default();
                TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
            })
            .split("__");
        let config: Config = figment.merge(env).extract().map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        in_range(
            "limits.max_message_bytes",
            l.max_message_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        in_range(
            "limits.max_concurrent_requests",
            l.max_concurrent_requests,
            1,
            100_000,
        )?;
        in_range(
            "limits.connections_per_service",
            l.connections_per_service,
            1,
            64,
        )?;
        in_range(
            "limits.max_concurrent_streams",
            l.max_concurrent_streams as usize,
            1,
            1_000_000,
        )?;
        positive("limits.request_timeout", l.request_timeout)?;
        positive("limits.connect_timeout", l.connect_timeout)?;
        self.log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .map_err(|e| ConfigError::new("log.level", format!("not a valid filter: {e}")))?;
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            http_url("telemetry.otlp_endpoint", endpoint)?;
        }
        for (key, value) in [
            ("orchestrator.url", &self.orchestrator.url),
            ("router.url", &self.router.url),
            ("agents.url", &self.agents.url),
            ("tools.url", &self.tools.url),
            ("memory.url", &self.memory.url),
            ("auth.url", &self.auth.url),
        ] {
            http_url(key, value)?;
        }
        let o = &self.orchestrator;
        positive("orchestrator.task_timeout", o.task_timeout)?;
        in_range(
            "orchestrator.max_input_bytes",
            o.max_input_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        in_range("orchestrator.max_tasks", o.max_tasks, 1, 100_000_000)?;
        in_range(
            "orchestrator.max_events_per_task",
            o.max_events_per_task,
            16,
            1_000_000,
        )?;
        redis_url("orchestrator.redis_url", &o.redis_url)?;
        if o.redis_prefix.is_empty()
            || o.redis_prefix.len() > 64
            || o.redis_prefix.contains(char::is_whitespace)
        {
            return Err(ConfigError::new(
                "orchestrator.redis_prefix",
                "must be 1 to 64 characters without spaces",
            ));
        }
        if o.lease < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "orchestrator.lease",
                "must be at least 100ms",
            ));
        }
        in_range("orchestrator.max_in_flight", o.max_in_flight, 1, 1_000_000)?;
        in_range("orchestrator.claimers", o.claimers, 1, 256)?;
        in_range(
            "orchestrator.max_running_per_tenant",
            o.max_running_per_tenant as usize,
            1,
            1_000_000,
        )?;
        positive("orchestrator.retention", o.retention)?;
        rate("orchestrator.tenant_rate", o.tenant_rate)?;
        rate("orchestrator.team_rate", o.team_rate)?;
        in_range(
            "orchestrator.tenant_burst",
            o.tenant_burst as usize,
            1,
            10_000_000,
        )?;
        in_range(
            "orchestrator.team_burst",
            o.team_burst as usize,
            1,
            10_000_000,
        )?;
        in_range(
            "orchestrator.retry_max_attempts",
            o.retry_max_attempts as usize,
            1,
            100,
        )?;
        if o.retry_initial_backoff > o.retry_max_backoff {
            return Err(ConfigError::new(
                "orchestrator.retry_initial_backoff",
                "must not exceed orchestrator.retry_max_backoff",
            ));
        }
        let r = &self.router;
        positive("router.heartbeat_interval", r.heartbeat_interval)?;
        if r.worker_ttl <= r.heartbeat_interval {
            return Err(ConfigError::new(
                "router.worker_ttl",
                "must be longer than router.heartbeat_interval",
            ));
        }
        in_range("router.max_workers", r.max_workers, 1, 1_000_000)?;
        in_range(
            "router.max_workers_per_identity",
            r.max_workers_per_identity,
            1,
            1_000_000,
        )?;
        if r.worker_networks.is_empty() {
            return Err(ConfigError::new(
                "router.worker_networks",
                "name at least one network (CIDR) workers may register in",
            ));
        }
        if let Some(bad) = r.worker_networks.iter().find(|n| Cidr::parse(n).is_none()) {
            return Err(ConfigError::new(
                "router.worker_networks",
                format!("`{bad}` is not a network in CIDR form (e.g. 10.0.0.0/8)"),
            ));
        }
        in_range(
            "router.breaker_failures",
            r.breaker_failures as usize,
            1,
            10_000,
        )?;
        positive("router.breaker_cool_down", r.breaker_cool_down)?;
        redis_url("router.redis_url", &r.redis_url)?;
        if r.redis_prefix.is_empty() || r.redis_prefix.len() > 64 {
            return Err(ConfigError::new(
                "router.redis_prefix",
                "must be 1 to 64 characters",
            ));
        }
        let a = &self.agents;
        in_range("agents.capacity", a.capacity as usize, 1, 100_000)?;
        in_range("agents.max_steps", a.max_steps as usize, 1, 10_000)?;
        in_range(
            "agents.max_spec_bytes",
            a.max_spec_bytes,
            64,
            16 * 1024 * 1024,
        )?;
        let t = &self.tools;
        in_range(
            "tools.max_file_bytes",
            t.max_file_bytes,
            1,
            1024 * 1024 * 1024,
        )?;
        in_range("tools.max_list_entries", t.max_list_entries, 1, 1_000_000)?;
        in_range(
            "tools.max_journal_entries",
            t.max_journal_entries,
            1,
            100_000_000,
        )?;
        positive("tools.journal_ttl", t.journal_ttl)?;
        if t.journal_lease < Duration::from_millis(100) || t.journal_lease > t.journal_ttl {
            return Err(ConfigError::new(
                "tools.journal_lease",
                "must be at least 100ms and at most tools.journal_ttl",
            ));
        }
        in_range("tools.max_sandboxes", t.max_sandboxes, 1, 1024)?;
        in_range(
            "tools.web_fetch_max_bytes",
            t.web_fetch_max_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        positive("tools.web_fetch_timeout", t.web_fetch_timeout)?;
        for (name, server) in &t.mcp_servers {
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
        if let Some(bad) = t.mcp_exempt.iter().find(|n| Cidr::parse(n).is_none()) {
            return Err(ConfigError::new(
                "tools.mcp_exempt",
                format!("`{bad}` is not an address or a CIDR network"),
            ));
        }
        in_range(
            "tools.workspace_max_bytes",
            t.workspace_max_bytes as usize,
            64 * 1024,
            1024 * 1024 * 1024 * 1024,
        )?;
        in_range(
            "tools.workspace_max_files",
            t.workspace_max_files as usize,
            16,
            10_000_000,
        )?;
        in_range(
            "tools.max_workspaces_per_tenant",
            t.max_workspaces_per_tenant,
            1,
            1_000_000,
        )?;
        if t.workspace_retention < Duration::from_secs(300) {
            return Err(ConfigError::new(
                "tools.workspace_retention",
                "must be at least 5m (longer than the longest tool call)",
            ));
        }
        in_range(
            "tools.max_sandboxes_per_tenant",
            t.max_sandboxes_per_tenant,
            1,
            1024,
        )?;
        in_range(
            "tools.sandbox_cpu_seconds",
            t.sandbox_cpu_seconds as usize,
            1,
            3600,
        )?;
        in_range(
            "tools.sandbox_memory_bytes",
            t.sandbox_memory_bytes as usize,
            16 * 1024 * 1024,
            64 * 1024 * 1024 * 1024,
        )?;
        in_range(
            "tools.sandbox_processes",
            t.sandbox_processes as usize,
            1,
            4096,
        )?;
        in_range(
            "tools.sandbox_output_bytes",
            t.sandbox_output_bytes,
            1024,
            16 * 1024 * 1024,
        )?;
        if t.sandbox_uid_base < 1000
            || t.sandbox_uid_base
                .checked_add(2 * t.max_sandboxes as u32)
                .is_none()
        {
            return Err(ConfigError::new(
                "tools.sandbox_uid_base",
                "must be an unprivileged uid (1000 or more) with room for max_sandboxes after it",
            ));
        }
        let m = &self.memory;
        in_range(
            "memory.max_items_per_tenant",
            m.max_items_per_tenant,
            1,
            100_000_000,
        )?;
        in_range(
            "memory.max_text_bytes",
            m.max_text_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        in_range("memory.hot_capacity", m.hot_capacity, 1, 1_000_000)?;
        positive("memory.hot_ttl", m.hot_ttl)?;
        positive("memory.retention", m.retention)?;
        positive("memory.sweep_interval", m.sweep_interval)?;
        in_range("memory.embed_batch", m.embed_batch, 1, 1024)?;
        for (tenant, d) in &m.tenant_retention {
            positive(&format!("memory.tenant_retention.{tenant}"), *d)?;
        }
        if m.long_term == LongTermBackend::Qdrant {
            http_url("memory.qdrant_url", &m.qdrant_url)?;
        }
        if m.embedder == EmbedderBackend::Openai {
            http_url("memory.embed_url", &m.embed_url)?;
            in_range("memory.embed_dimension", m.embed_dimension, 1, 65_536)?;
            if m.embed_model.is_empty() {
                return Err(ConfigError::new(
                    "memory.embed_model",
                    "must name the embeddings model",
                ));
            }
        }
        positive("auth.key_cache_ttl", self.auth.key_cache_ttl)?;
        positive("auth.max_key_ttl", self.auth.max_key_ttl)?;
        if self.auth.max_key_ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
            return Err(ConfigError::new(
                "auth.max_key_ttl",
                "must be at most 100 years",
            ));
        }
        for (alias, m) in &self.models {
            let key = |field: &str| format!("models.{alias}.{field}");
            let valid_alias = !alias.is_empty()
                && alias.len() <= 64
                && alias
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !valid_alias || alias == "replay" {
                return Err(ConfigError::new(
                    &format!("models.{alias}"),
                    "an alias is 1 to 64 of A-Z, a-z, 0-9, `-`, `_`, `.`, and not `replay`",
                ));
            }
            if matches!(m.provider, ModelProvider::Openai | ModelProvider::Anthropic) {
                http_url(&key("base_url"), &m.base_url)?;
                if m.model.is_empty() {
                    return Err(ConfigError::new(
                        &key("model"),
                        "must name the provider's model",
                    ));
                }
            }
            if m.api_key_env.is_some() && m.api_key_secret.is_some() {
                return Err(ConfigError::new(
                    &key("api_key_secret"),
                    "set `api_key_env` or `api_key_secret`, not both",
                ));
            }
            positive(&key("timeout"), m.timeout)?;
            in_range(&key("max_retries"), m.max_retries as usize, 0, 10)?;
            for fallback in &m.fallbacks {
                if fallback == alias
                    || (fallback != "replay" && !self.models.contains_key(fallback))
                {
                    return Err(ConfigError::new(
                        &key("fallbacks"),
                        format!("`{fallback}` is not another configured alias"),
                    ));
                }
            }
            for (field, price) in [
                ("prompt_price_per_1k", m.prompt_price_per_1k),
                ("completion_price_per_1k", m.completion_price_per_1k),
            ] {
                if !price.is_finite() || price < 0.0 {
                    return Err(ConfigError::new(&key(field), "must be zero or more"));
                }
            }
        }
        let tls = &self.tls;
        for (key, value) in [
            ("tls.namespace", &tls.namespace),
            ("tls.trust_domain", &tls.trust_domain),
        ] {
            let valid = !value.is_empty()
                && value.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !valid {
                return Err(ConfigError::new(
                    key,
                    format!("`{value}` must be lowercase DNS labels (a-z, 0-9, -)"),
                ));
            }
        }
        positive("tls.handshake_timeout", tls.handshake_timeout)?;
        for service in tls.allow.keys() {
            if !crate::tls::PRINCIPALS.contains(&service.as_str()) || service == "cli" {
                return Err(ConfigError::new(
                    &format!("tls.allow.{service}"),
                    "names no service (orchestrator, router, agents, tools, memory, auth)",
                ));
            }
        }
        let sc = &self.secrets;
        positive("secrets.cache_ttl", sc.cache_ttl)?;
        if !sc.transit_key.is_empty() && sc.backend != crate::secrets::SecretsBackend::Vault {
            return Err(ConfigError::new(
                "secrets.transit_key",
                "needs secrets.backend = \"vault\" (the transit key lives in Vault)",
            ));
        }
        if sc.backend == crate::secrets::SecretsBackend::Vault {
            http_url("secrets.vault_addr", &sc.vault_addr)?;
            if sc.vault_mount.is_empty() {
                return Err(ConfigError::new(
                    "secrets.vault_mount",
                    "must name the KV v2 mount",
                ));
            }
            if sc.vault_auth == crate::secrets::VaultAuthMethod::Kubernetes
                && sc.vault_kubernetes_role.is_empty()
            {
                return Err(ConfigError::new(
                    "secrets.vault_kubernetes_role",
                    "must name the Vault role for Kubernetes auth",
                ));
            }
        }
        if self.auth.token_ttl < Duration::from_secs(10)
            || self.auth.token_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::new(
                "auth.token_ttl",
                "must be between 10s and 24h",
            ));
        }
        positive("auth.key_rotation", self.auth.key_rotation)?;
        if let crate::audit::Durability::Every(interval) = self.auth.audit_durability
            && !(crate::audit::Durability::MIN_INTERVAL..=crate::audit::Durability::MAX_INTERVAL)
                .contains(&interval)
        {
            return Err(ConfigError::new(
                "auth.audit_durability",
                "must be `always` or an interval between 1ms and 1m",
            ));
        }
        if self.auth.key_store == KeyStoreBackend::Redis {
            redis_url("auth.redis_url", &self.auth.redis_url)?;
        }
        Ok(())
    }

    /// The tools workspace root.
    pub fn workspace_dir(&self) -> PathBuf {
        self.tools
            .workspace_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("workspaces"))
    }

    /// The token signing keys.
    pub fn signing_key_file(&self) -> PathBuf {
        self.auth
            .signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing-keys.json"))
    }

    /// The key the orchestrator uses to obtain task-scoped tokens.
    pub fn service_key_file(&self) -> PathBuf {
        self.orchestrator
            .service_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("service.key"))
    }

    /// The key an agents worker proves its `worker` identity with.
    pub fn worker_key_file(&self) -> PathBuf {
        self.agents
            .service_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("worker.key"))
    }

    /// The audit trail.
    pub fn audit_file(&self) -> PathBuf {
        self.auth
            .audit_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.jsonl"))
    }

    /// The API key store.
    pub fn key_file(&self) -> PathBuf {
        self.auth
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys.json"))
    }
}

fn in_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(key, "must be longer than zero"))
    } else {
        Ok(())
    }
}

fn rate(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (0.0..=10_000_000.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{value} is outside 0..=10000000 (0 turns the limit off)"),
        ))
    }
}

fn redis_url(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.starts_with("redis://")
        || value.starts_with("rediss://")
        || value.starts_with("unix://")
    {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("`{value}` must be a redis://, rediss:// or unix:// URL"),
        ))
    }
}

fn http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| ConfigError::new(key, format!("`{value}` is not a URL: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("`{value}` must be an http:// or https:// URL"),
        )),
    }
}

fn from_figment(error: figment::Error) -> ConfigError {
    let key = if error.path.is_empty() {
        "config".to_owned()
    } else {
        error.path.join(".")
    };
    let source = error.metadata.as_ref().map(|meta| match &meta.source {
        Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
        _ if meta.name.contains("environment") => {
            let var: Vec<String> = error.path.iter().map(|p| p.to_uppercase()).collect();
            format!(" (from environment variable AMAOS_{})", var.join("__"))
        }
        _ => format!(" (from {})", meta.name),
    });
    ConfigError::new(
        &key,
        format!("{}{}", error.kind, source.unwrap_or_default()),
    )
}

/// Maps of durations as human-readable text.
mod duration_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &BTreeMap<String, Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            value
                .iter()
                .map(|(k, v)| (k, humantime::format_duration(*v).to_string())),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer)?
            .into_iter()
            .map(|(k, text)| {
                let d = humantime::parse_duration(&text).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{k}`: `{text}` is not a duration like `30d` or `12h`: {e}"
                    ))
                })?;
                Ok((k, d))
            })
            .collect()
    }
}

/// Durations as human-readable text (`30s`, `5m`, `250ms`).
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like `30s` or `5m`: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amaos.toml");
        std::fs::write(
            &path,
            "[router]\nlisten = \"127.0.0.1:7000\"\nworker_ttl = \"1m\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.router.listen.port(), 7000);
        assert_eq!(config.router.worker_ttl, Duration::from_secs(60));

        std::fs::write(&path, "[router]\nlistne = \"127.0.0.1:7000\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err();
        assert!(error.to_string().contains("listne"), "{error}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amaos.toml");
        std::fs::write(&path, "[limits]\nrequest_timeout = \"soon\"\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err();
        assert_eq!(error.key, "limits.request_timeout", "{error}");
        assert!(!error.to_string().contains('\n'));

        std::fs::write(&path, "[agents]\ncapacity = 0\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err();
        assert_eq!(error.key, "agents.capacity");

        std::fs::write(&path, "[router]\nurl = \"ftp://x\"\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap_err().key, "router.url");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let error = Config::load(Some(Path::new("/nonexistent/amaos.toml"))).unwrap_err();
        assert_eq!(error.key, "config");
    }
}
