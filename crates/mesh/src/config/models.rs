//! `[models.<alias>]`: the model aliases agents name in their specs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, http_url, in_range, positive};
use super::duration::duration_text;

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
    /// Consecutive failed calls that open the alias's breaker: its fallbacks
    /// answer until the cool-down ends, then one call probes it.
    #[serde(default = "breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker skips the alias before one probe.
    #[serde(default = "breaker_cool_down", with = "duration_text")]
    pub breaker_cool_down: Duration,
}

fn model_timeout() -> Duration {
    Duration::from_secs(60)
}

fn breaker_failures() -> u32 {
    3
}

fn breaker_cool_down() -> Duration {
    Duration::from_secs(30)
}

fn model_retries() -> u32 {
    3
}

/// Checks every alias: its name, its provider's settings and its fallbacks
/// (which must name other configured aliases).
pub fn validate(models: &BTreeMap<String, ModelConfig>) -> Result<(), ConfigError> {
    for (alias, m) in models {
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
        in_range(
            &key("breaker_failures"),
            m.breaker_failures as usize,
            1,
            10_000,
        )?;
        positive(&key("breaker_cool_down"), m.breaker_cool_down)?;
        for fallback in &m.fallbacks {
            if fallback == alias || (fallback != "replay" && !models.contains_key(fallback)) {
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
    Ok(())
}
