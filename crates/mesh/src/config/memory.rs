//! `[memory]`: the memory service: its hot and long-term tiers, the
//! embedder, retention and encryption.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{
    ConfigError, StoreBackend, addr, http_url, in_range, positive, service_endpoint, url,
};
use super::duration::{duration_map, duration_text};

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
    /// Where qdrant-edge keeps the long-term tier, for `long_term = "edge"`;
    /// unset for `<data_dir>/memory/qdrant-edge`. One process per
    /// directory: replicas on a shared data volume each need their own.
    pub edge_dir: Option<PathBuf>,
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
    /// The environment variable holding the embeddings server's API key,
    /// for `embedder = "openai"`; unset for none.
    pub embed_api_key_env: Option<String>,
    /// The secret-store path of that key (e.g. `llm/openai`), read at each
    /// call so a rotated key is used without a restart.
    pub embed_api_key_secret: Option<String>,
    /// Timeout of one embeddings call.
    #[serde(with = "duration_text")]
    pub embed_timeout: Duration,
    /// Retries of an embeddings call on 429, 5xx and transport errors.
    pub embed_max_retries: u32,
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

    /// The qdrant-edge directory: the configured one, else
    /// `<data_dir>/memory/qdrant-edge`.
    pub fn edge_dir(&self, data_dir: &Path) -> PathBuf {
        self.edge_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("memory").join("qdrant-edge"))
    }

    /// How long `tenant`'s memories are kept.
    pub fn retention_of(&self, tenant: &str) -> Duration {
        self.tenant_retention
            .get(tenant)
            .copied()
            .unwrap_or(self.retention)
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
            edge_dir: None,
            qdrant_url: "http://127.0.0.1:6334".into(),
            qdrant_collection: "amaos_memories".into(),
            qdrant_api_key_env: None,
            embedder: EmbedderBackend::Minilm,
            embed_model_dir: None,
            embed_url: String::new(),
            embed_model: String::new(),
            embed_dimension: 384,
            embed_batch: 32,
            embed_api_key_env: None,
            embed_api_key_secret: None,
            embed_timeout: Duration::from_secs(30),
            embed_max_retries: 3,
            retention: Duration::from_secs(90 * 24 * 3600),
            tenant_retention: BTreeMap::new(),
            sweep_interval: Duration::from_secs(1),
            encrypt: true,
            key_file: None,
        }
    }
}

impl MemoryConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "memory.max_items_per_tenant",
            self.max_items_per_tenant,
            1,
            100_000_000,
        )?;
        in_range(
            "memory.max_text_bytes",
            self.max_text_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        in_range("memory.hot_capacity", self.hot_capacity, 1, 1_000_000)?;
        positive("memory.hot_ttl", self.hot_ttl)?;
        positive("memory.retention", self.retention)?;
        positive("memory.sweep_interval", self.sweep_interval)?;
        in_range("memory.embed_batch", self.embed_batch, 1, 1024)?;
        for (tenant, d) in &self.tenant_retention {
            positive(&format!("memory.tenant_retention.{tenant}"), *d)?;
        }
        if self.long_term == LongTermBackend::Qdrant {
            http_url("memory.qdrant_url", &self.qdrant_url)?;
        }
        if self.embedder == EmbedderBackend::Openai {
            http_url("memory.embed_url", &self.embed_url)?;
            in_range("memory.embed_dimension", self.embed_dimension, 1, 65_536)?;
            if self.embed_model.is_empty() {
                return Err(ConfigError::new(
                    "memory.embed_model",
                    "must name the embeddings model",
                ));
            }
            if self.embed_api_key_env.is_some() && self.embed_api_key_secret.is_some() {
                return Err(ConfigError::new(
                    "memory.embed_api_key_secret",
                    "set `embed_api_key_env` or `embed_api_key_secret`, not both",
                ));
            }
            positive("memory.embed_timeout", self.embed_timeout)?;
            in_range(
                "memory.embed_max_retries",
                self.embed_max_retries as usize,
                0,
                10,
            )?;
        }
        Ok(())
    }
}
