//! The typed configuration of every AMAOS process.
//!
//! Layers, later ones winning: built-in defaults → an optional TOML file
//! (`--config` or `AMAOS_CONFIG`) → `AMAOS_*` environment variables, where
//! `__` separates nesting (`AMAOS_ROUTER__LISTEN=0.0.0.0:50052`). The result is
//! validated once, at start; any problem is one [`ConfigError`] line naming the
//! key, and binaries exit with [`EXIT_CONFIG`].
//!
//! # Layout
//!
//! One module per section, each owning its struct, its defaults and its
//! `validate`: `limits`, `telemetry` (`[log]` and `[telemetry]`), `tls`,
//! `orchestrator`, `router` (and [`Cidr`]), `agents`, `tools` (and
//! [`McpServerConfig`]), `memory`, `auth` (and the audit trail's
//! [`Durability`]), `models` and `secrets`; `common` holds [`ConfigError`]
//! and the checks the sections share, `duration` the duration codecs. The
//! sections import nothing else from the crate, so every other module may
//! depend on them. [`Config`] only aggregates them.
//!
//! A one-service binary validates what it uses ([`Config::validate_for`],
//! [`Service::sections`]): a router does not refuse to start over a bad
//! `[models.x]`. `amaos` (`amaos up` and every other command) validates
//! every section ([`Config::validate`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod agents;
mod auth;
mod common;
mod duration;
mod gateway;
mod limits;
mod memory;
mod models;
mod orchestrator;
mod router;
mod secrets;
mod telemetry;
mod tls;
mod tools;

pub use agents::{A2aRemote, AgentsConfig};
pub use auth::{AuthConfig, Durability, KeyStoreBackend};
pub use common::{ConfigError, ServiceEndpoint, StoreBackend};
pub use gateway::GatewayConfig;
pub use limits::Limits;
pub use memory::{EmbedderBackend, LongTermBackend, MemoryConfig};
pub use models::{ModelConfig, ModelProvider};
pub use orchestrator::{A2aConfig, OrchestratorConfig};
pub use router::{Cidr, RouterConfig};
pub use secrets::{SecretsBackend, SecretsConfig, VaultAuthMethod};
pub use telemetry::{LogConfig, LogFormat, TelemetryConfig};
pub use tls::{PRINCIPALS, TlsConfig, TlsMode};
pub use tools::{McpServerConfig, ToolsConfig};

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
    "gateway",
    "models",
    "secrets",
    "tls",
];

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
    /// The REST gateway.
    pub gateway: GatewayConfig,
    /// Model aliases agents name in their specs (`replay` is built in).
    pub models: BTreeMap<String, ModelConfig>,
    /// Where secrets (LLM API keys, MCP credentials) come from.
    pub secrets: SecretsConfig,
    /// Transport security between services.
    pub tls: TlsConfig,
}

/// A part of the configuration validated as one, in the order
/// [`Config::validate`] checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `[limits]`.
    Limits,
    /// `[log]` and `[telemetry]`.
    Telemetry,
    /// Every service's `url`: how each process reaches the others.
    Endpoints,
    /// `[orchestrator]`.
    Orchestrator,
    /// `[router]`.
    Router,
    /// `[agents]`.
    Agents,
    /// `[tools]`.
    Tools,
    /// `[memory]`.
    Memory,
    /// `[auth]`.
    Auth,
    /// `[gateway]`.
    Gateway,
    /// `[models.<alias>]`.
    Models,
    /// `[tls]`.
    Tls,
    /// `[secrets]`.
    Secrets,
}

impl Section {
    /// Every section, in the order they are checked.
    pub const ALL: &[Section] = &[
        Section::Limits,
        Section::Telemetry,
        Section::Endpoints,
        Section::Orchestrator,
        Section::Router,
        Section::Agents,
        Section::Tools,
        Section::Memory,
        Section::Auth,
        Section::Gateway,
        Section::Models,
        Section::Tls,
        Section::Secrets,
    ];
}

/// A service that runs as its own process (`amaos-<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `amaos-orchestrator`.
    Orchestrator,
    /// `amaos-router`.
    Router,
    /// `amaos-agents`.
    Agents,
    /// `amaos-tools`.
    Tools,
    /// `amaos-memory`.
    Memory,
    /// `amaos-auth`.
    Auth,
    /// `amaos-gateway`.
    Gateway,
}

impl Service {
    /// Every service.
    pub const ALL: &[Service] = &[
        Service::Orchestrator,
        Service::Router,
        Service::Agents,
        Service::Tools,
        Service::Memory,
        Service::Auth,
        Service::Gateway,
    ];

    /// The service's name (`router`), as in its binary and its section.
    pub fn name(self) -> &'static str {
        match self {
            Service::Orchestrator => "orchestrator",
            Service::Router => "router",
            Service::Agents => "agents",
            Service::Tools => "tools",
            Service::Memory => "memory",
            Service::Auth => "auth",
            Service::Gateway => "gateway",
        }
    }

    /// The service named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// The sections the service reads, which it validates at start.
    ///
    /// Every process reads `[limits]`, `[log]`, `[telemetry]`, `[tls]`, the
    /// other services' URLs, `[auth]` (tokens and API keys, the RBAC files,
    /// the audit trail it writes) and `[secrets]` (the audit key, sealed
    /// stores). Besides its own section, the orchestrator reads
    /// `agents.max_spec_bytes`, agents read `[models]`, and tools read the
    /// orchestrator's Redis for the idempotency journal.
    pub fn sections(self) -> &'static [Section] {
        use Section as S;
        match self {
            Service::Orchestrator => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Orchestrator,
                S::Agents,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
            Service::Router => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Router,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
            Service::Agents => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Agents,
                S::Auth,
                S::Models,
                S::Tls,
                S::Secrets,
            ],
            Service::Tools => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Orchestrator,
                S::Tools,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
            Service::Memory => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Memory,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
            Service::Auth => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
            Service::Gateway => &[
                S::Limits,
                S::Telemetry,
                S::Endpoints,
                S::Gateway,
                S::Auth,
                S::Tls,
                S::Secrets,
            ],
        }
    }
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
            gateway: GatewayConfig::default(),
            models: BTreeMap::new(),
            secrets: SecretsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the `AMAOS_*` environment,
    /// and validates every section.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Self::read(file)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads like [`Config::load`], but validates only the sections
    /// `service` reads.
    pub fn load_for(file: Option<&Path>, service: Service) -> Result<Self, ConfigError> {
        let config = Self::read(file)?;
        config.validate_for(service)?;
        Ok(config)
    }

    /// Defaults, then `file`, then the environment, unvalidated.
    fn read(file: Option<&Path>) -> Result<Self, ConfigError> {
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
        let mut config: Config = figment.merge(env).extract().map_err(common::from_figment)?;
        // Every path derived from the data directory reaches other processes
        // (the sandbox helper, MCP servers) and must not depend on their
        // working directory: the default `.amaos` is read against this one.
        if config.data_dir.is_relative() {
            config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| {
                ConfigError::new(
                    "data_dir",
                    format!("{} cannot be made absolute: {e}", config.data_dir.display()),
                )
            })?;
        }
        Ok(config)
    }

    /// Checks the values that types alone cannot, in every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sections(Section::ALL)
    }

    /// Checks the sections `service` reads.
    pub fn validate_for(&self, service: Service) -> Result<(), ConfigError> {
        self.validate_sections(service.sections())
    }

    /// Checks `sections`, in the order of [`Section::ALL`]; the first
    /// problem found is the error.
    pub fn validate_sections(&self, sections: &[Section]) -> Result<(), ConfigError> {
        Section::ALL
            .iter()
            .filter(|section| sections.contains(section))
            .try_for_each(|section| self.validate_section(*section))
    }

    fn validate_section(&self, section: Section) -> Result<(), ConfigError> {
        match section {
            Section::Limits => self.limits.validate(),
            Section::Telemetry => {
                self.log.validate()?;
                self.telemetry.validate()
            }
            Section::Endpoints => self.validate_endpoints(),
            Section::Orchestrator => self.orchestrator.validate(),
            Section::Router => self.router.validate(),
            Section::Agents => self.agents.validate(),
            Section::Tools => self.tools.validate(),
            Section::Memory => self.memory.validate(),
            Section::Auth => self.auth.validate(),
            Section::Gateway => self.gateway.validate(),
            Section::Models => models::validate(&self.models),
            Section::Tls => self.tls.validate(),
            Section::Secrets => self.secrets.validate(),
        }
    }

    /// Every service's URL, since each process may call any other.
    fn validate_endpoints(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("orchestrator.url", &self.orchestrator.url),
            ("router.url", &self.router.url),
            ("agents.url", &self.agents.url),
            ("tools.url", &self.tools.url),
            ("memory.url", &self.memory.url),
            ("auth.url", &self.auth.url),
        ] {
            common::http_url(key, value)?;
        }
        Ok(())
    }

    /// `configured`, else `name` in the data directory.
    fn configured_or_data(&self, configured: &Option<PathBuf>, name: &str) -> PathBuf {
        configured
            .clone()
            .unwrap_or_else(|| self.data_dir.join(name))
    }

    /// The tools workspace root.
    pub fn workspace_dir(&self) -> PathBuf {
        self.configured_or_data(&self.tools.workspace_dir, "workspaces")
    }

    /// The token signing keys.
    pub fn signing_key_file(&self) -> PathBuf {
        self.configured_or_data(&self.auth.signing_key_file, "signing-keys.json")
    }

    /// The key the orchestrator uses to obtain task-scoped tokens.
    pub fn service_key_file(&self) -> PathBuf {
        self.configured_or_data(&self.orchestrator.service_key_file, "service.key")
    }

    /// The key an agents worker proves its `worker` identity with.
    pub fn worker_key_file(&self) -> PathBuf {
        self.configured_or_data(&self.agents.service_key_file, "worker.key")
    }

    /// The audit trail.
    pub fn audit_file(&self) -> PathBuf {
        self.configured_or_data(&self.auth.audit_file, "audit.jsonl")
    }

    /// The API key store.
    pub fn key_file(&self) -> PathBuf {
        self.configured_or_data(&self.auth.key_file, "keys.json")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn a_service_validates_only_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amaos.toml");
        std::fs::write(
            &path,
            "[models.x]\nprovider = \"openai\"\nbase_url = \"ftp://x\"\n",
        )
        .unwrap();
        let error = Config::load(Some(&path)).unwrap_err();
        assert_eq!(error.key, "models.x.base_url", "{error}");
        let config = Config::load_for(Some(&path), Service::Router).unwrap();
        assert_eq!(config.models["x"].base_url, "ftp://x");
        config.validate_for(Service::Router).unwrap();
        assert_eq!(
            config.validate_for(Service::Agents).unwrap_err(),
            config.validate().unwrap_err()
        );

        // A section every process reads is still checked.
        std::fs::write(&path, "[models.x]\nprovider = \"openai\"\nbase_url = \"ftp://x\"\n[limits]\nmax_message_bytes = 1\n")
            .unwrap();
        let error = Config::load_for(Some(&path), Service::Router).unwrap_err();
        assert_eq!(error.key, "limits.max_message_bytes");
    }

    #[test]
    fn every_service_reads_the_common_sections_and_its_own() {
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(*service));
            for section in [
                Section::Limits,
                Section::Telemetry,
                Section::Endpoints,
                Section::Auth,
                Section::Tls,
                Section::Secrets,
            ] {
                assert!(
                    service.sections().contains(&section),
                    "{service:?} {section:?}"
                );
            }
        }
        assert_eq!(Service::from_name("nonesuch"), None);
    }
}
