//! `[auth]`: the auth service (API keys, tokens, signing keys), and what
//! every process reads from it: the RBAC files and the audit trail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, addr, positive, redis_url, service_endpoint, url};
use super::duration::duration_text;

/// Where API keys live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStoreBackend {
    /// A JSON file under the data directory (one auth replica).
    File,
    /// Redis, shared by auth replicas.
    Redis,
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
    pub audit_durability: Durability,
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
            audit_durability: Durability::Always,
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

impl AuthConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("auth.key_cache_ttl", self.key_cache_ttl)?;
        positive("auth.max_key_ttl", self.max_key_ttl)?;
        if self.max_key_ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
            return Err(ConfigError::new(
                "auth.max_key_ttl",
                "must be at most 100 years",
            ));
        }
        if self.token_ttl < Duration::from_secs(10)
            || self.token_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::new(
                "auth.token_ttl",
                "must be between 10s and 24h",
            ));
        }
        positive("auth.key_rotation", self.key_rotation)?;
        if let Durability::Every(interval) = self.audit_durability
            && !(Durability::MIN_INTERVAL..=Durability::MAX_INTERVAL).contains(&interval)
        {
            return Err(ConfigError::new(
                "auth.audit_durability",
                "must be `always` or an interval between 1ms and 1m",
            ));
        }
        if self.key_store == KeyStoreBackend::Redis {
            redis_url("auth.redis_url", &self.redis_url)?;
        }
        Ok(())
    }
}

/// When an appended record must be on disk (`auth.audit_durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync before the append is answered (batched with appends waiting
    /// at the same time).
    #[default]
    Always,
    /// fsync at most this often; a crash loses at most this much of the
    /// trail (and the checkpoint moves at each fsync).
    Every(Duration),
}

impl Durability {
    /// Shortest interval accepted.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
    /// Longest interval accepted.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "always" {
            return Ok(Self::Always);
        }
        let interval = humantime::parse_duration(text)
            .map_err(|e| format!("`{text}` is neither `always` nor an interval like `1s` ({e})"))?;
        if !(Self::MIN_INTERVAL..=Self::MAX_INTERVAL).contains(&interval) {
            return Err(format!("the interval `{text}` must be between 1ms and 1m"));
        }
        Ok(Self::Every(interval))
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Every(interval) => write!(f, "{}", humantime::format_duration(*interval)),
        }
    }
}

impl Serialize for Durability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
