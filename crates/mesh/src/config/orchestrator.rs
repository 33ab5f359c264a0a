//! `[orchestrator]`: tasks, their store and queue, admission and retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{
    ConfigError, StoreBackend, addr, http_url, in_range, positive, rate, redis_url,
    service_endpoint, url,
};
use super::duration::duration_text;

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
    /// How long a gated tool call waits for a person's decision before it
    /// expires (a rejection); never past the task's deadline.
    #[serde(with = "duration_text")]
    pub approval_ttl: Duration,
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
    /// Monthly model-cost caps in US dollars, by tenant: a submission once
    /// the tenant's spend this UTC month reached its cap is refused, and a
    /// run that crosses it stops.
    pub tenant_budgets_usd: BTreeMap<String, f64>,
    /// The cap of tenants not in `tenant_budgets_usd`; unset for none.
    pub default_tenant_budget_usd: Option<f64>,
    /// Monthly caps in US dollars by team name, applied to each tenant's
    /// use of that team.
    pub team_budgets_usd: BTreeMap<String, f64>,
    /// How long usage by day is kept (Redis: the keys' TTL).
    #[serde(with = "duration_text")]
    pub usage_retention: Duration,
    /// The Agent2Agent interface (`lf.a2a.v1.A2AService`, served on the
    /// gRPC port) and its agent card.
    pub a2a: A2aConfig,
}
service_endpoint!(OrchestratorConfig);

/// `[orchestrator.a2a]`: how the mesh presents itself to A2A clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A2aConfig {
    /// Serve `lf.a2a.v1.A2AService` beside the orchestrator's own service.
    pub enabled: bool,
    /// The gRPC address A2A clients reach it at, published in the agent
    /// card; unset for `orchestrator.url`.
    pub url: Option<String>,
    /// The agent's name in the card.
    pub name: String,
    /// What it does, in the card.
    pub description: String,
    /// Who runs it, in the card's provider; empty for none.
    pub organization: String,
    /// The team a message runs when it names no skill (metadata `skill`);
    /// unset: such a message is refused with the list of skills.
    pub default_skill: Option<String>,
}

impl Default for A2aConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            name: "AMAOS".into(),
            description: "Teams of AI agents (crews, group chats, hybrids) run durably by AMAOS; \
                          each skill is a team."
                .into(),
            organization: String::new(),
            default_skill: None,
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
            approval_ttl: Duration::from_secs(24 * 3600),
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
            tenant_budgets_usd: BTreeMap::new(),
            default_tenant_budget_usd: None,
            team_budgets_usd: BTreeMap::new(),
            usage_retention: Duration::from_secs(400 * 24 * 3600),
            a2a: A2aConfig::default(),
        }
    }
}

impl OrchestratorConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("orchestrator.task_timeout", self.task_timeout)?;
        positive("orchestrator.approval_ttl", self.approval_ttl)?;
        in_range(
            "orchestrator.max_input_bytes",
            self.max_input_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        in_range("orchestrator.max_tasks", self.max_tasks, 1, 100_000_000)?;
        in_range(
            "orchestrator.max_events_per_task",
            self.max_events_per_task,
            16,
            1_000_000,
        )?;
        redis_url("orchestrator.redis_url", &self.redis_url)?;
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self.redis_prefix.contains(char::is_whitespace)
        {
            return Err(ConfigError::new(
                "orchestrator.redis_prefix",
                "must be 1 to 64 characters without spaces",
            ));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "orchestrator.lease",
                "must be at least 100ms",
            ));
        }
        in_range(
            "orchestrator.max_in_flight",
            self.max_in_flight,
            1,
            1_000_000,
        )?;
        in_range("orchestrator.claimers", self.claimers, 1, 256)?;
        in_range(
            "orchestrator.max_running_per_tenant",
            self.max_running_per_tenant as usize,
            1,
            1_000_000,
        )?;
        positive("orchestrator.retention", self.retention)?;
        if let Some(url) = &self.a2a.url {
            http_url("orchestrator.a2a.url", url)?;
        }
        if self.a2a.name.trim().is_empty() || self.a2a.name.len() > 256 {
            return Err(ConfigError::new(
                "orchestrator.a2a.name",
                "must be 1 to 256 characters",
            ));
        }
        if self.a2a.description.len() > 4096 {
            return Err(ConfigError::new(
                "orchestrator.a2a.description",
                "must be at most 4096 bytes",
            ));
        }
        rate("orchestrator.tenant_rate", self.tenant_rate)?;
        rate("orchestrator.team_rate", self.team_rate)?;
        in_range(
            "orchestrator.tenant_burst",
            self.tenant_burst as usize,
            1,
            10_000_000,
        )?;
        in_range(
            "orchestrator.team_burst",
            self.team_burst as usize,
            1,
            10_000_000,
        )?;
        in_range(
            "orchestrator.retry_max_attempts",
            self.retry_max_attempts as usize,
            1,
            100,
        )?;
        if self.retry_initial_backoff > self.retry_max_backoff {
            return Err(ConfigError::new(
                "orchestrator.retry_initial_backoff",
                "must not exceed orchestrator.retry_max_backoff",
            ));
        }
        let budgets = self
            .tenant_budgets_usd
            .iter()
            .map(|(k, v)| (format!("orchestrator.tenant_budgets_usd.{k}"), *v))
            .chain(
                self.team_budgets_usd
                    .iter()
                    .map(|(k, v)| (format!("orchestrator.team_budgets_usd.{k}"), *v)),
            )
            .chain(
                self.default_tenant_budget_usd
                    .map(|v| ("orchestrator.default_tenant_budget_usd".to_owned(), v)),
            );
        for (key, cap) in budgets {
            if !(cap.is_finite() && cap >= 0.0) {
                return Err(ConfigError::new(
                    &key,
                    "must be a number of dollars, 0 or more",
                ));
            }
        }
        if self.usage_retention < Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "orchestrator.usage_retention",
                "must be at least 1d",
            ));
        }
        Ok(())
    }
}
