//! The model router: what one run's agents talk to.
//!
//! - `replay`: a deterministic scripted model whose turns (text or tool calls)
//!   come from the team spec. It makes runs reproducible for tests, offline
//!   demos and benchmarks.
//! - configured aliases (`[models.<alias>]`): OpenAI-compatible Chat
//!   Completions ([`crate::openai`]) or Anthropic Messages
//!   ([`crate::anthropic`]), each with a fallback chain tried in order when a
//!   call fails or the alias's breaker is open.
//!
//! [`RunModels`] is what one run uses: it picks the model each agent names
//! (or the run's override) and records which alias answered. The types every
//! model speaks live in [`crate::provider`] (re-exported here); this module
//! sits above the providers, which import only those types.

use amaos_mesh::breaker::{Breaker, BreakerPolicy, State};
use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_mesh::secrets::SecretStore;
use amaos_teams::{AgentSpec, REPLAY_MODEL, ReplayTurn};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::anthropic::AnthropicChat;
use crate::metrics::{AgentMetrics, CallOutcome};
use crate::openai::OpenAiChat;
pub use crate::provider::{
    ChatMessage, ChatModel, Completion, ModelError, Reply, ToolCallRequest, ToolSpec, Usage,
    estimate_tokens,
};

/// The deterministic scripted model.
pub struct Replay {
    input: String,
    cursors: Mutex<HashMap<String, usize>>,
}

impl Replay {
    /// A replay model for one run; `{input}` in scripts becomes `input`.
    pub fn new(input: &str) -> Self {
        Self {
            input: input.to_owned(),
            cursors: Mutex::new(HashMap::new()),
        }
    }

    fn fill(&self, value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(s) => {
                serde_json::Value::String(s.replace("{input}", &self.input))
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(|v| self.fill(v)).collect())
            }
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter().map(|(k, v)| (k.clone(), self.fill(v))).collect(),
            ),
            other => other.clone(),
        }
    }

    fn next_turn<'a>(&self, agent: &'a AgentSpec) -> Option<(usize, &'a ReplayTurn)> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = cursors.entry(agent.name.clone()).or_default();
        let turn = agent.replay.get(*cursor)?;
        *cursor += 1;
        Some((*cursor, turn))
    }
}

impl ChatModel for Replay {
    async fn complete(
        &self,
        agent: &AgentSpec,
        messages: &[ChatMessage],
        _tools: &[ToolSpec],
    ) -> Result<Completion, ModelError> {
        if let Some(latency) = agent.replay_latency {
            tokio::time::sleep(latency).await;
        }
        let (n, turn) = self
            .next_turn(agent)
            .ok_or_else(|| ModelError::ScriptExhausted(agent.name.clone()))?;
        let reply = match turn {
            ReplayTurn::Say(text) => Reply::Text(text.replace("{input}", &self.input)),
            ReplayTurn::Tool(tool) => Reply::ToolCalls(vec![ToolCallRequest {
                id: format!("replay-{}-{n}", agent.name),
                name: tool.name.clone(),
                args: tool
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), self.fill(v)))
                    .collect(),
            }]),
        };
        let completion_text = match &reply {
            Reply::Text(t) => t.clone(),
            Reply::ToolCalls(calls) => calls
                .iter()
                .map(|c| format!("{}{}", c.name, serde_json::Value::Object(c.args.clone())))
                .collect(),
        };
        Ok(Completion {
            usage: Usage {
                prompt_tokens: messages.iter().map(|m| estimate_tokens(&m.content)).sum(),
                completion_tokens: estimate_tokens(&completion_text),
            },
            reply,
            cost_usd: 0.0,
            model: REPLAY_MODEL.into(),
        })
    }
}

/// A configured provider.
enum Provider {
    OpenAi(OpenAiChat),
    Anthropic(AnthropicChat),
}

impl Provider {
    /// The provider's name in metrics.
    fn name(&self) -> &'static str {
        match self {
            Provider::OpenAi(_) => "openai",
            Provider::Anthropic(_) => "anthropic",
        }
    }

    async fn complete(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<Completion, ModelError> {
        match self {
            Provider::OpenAi(p) => p.complete(messages, tools).await,
            Provider::Anthropic(p) => p.complete(messages, tools).await,
        }
    }
}

/// One alias: its provider, fallbacks and breaker. After
/// `breaker_failures` failed calls in a row the alias is skipped (its
/// fallbacks answer) for `breaker_cool_down`, then one call at a time is let
/// through to probe it.
struct Alias {
    provider: Provider,
    fallbacks: Vec<String>,
    policy: BreakerPolicy,
    breaker: Mutex<Breaker<Instant>>,
}

impl Alias {
    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker<Instant>> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go out now; a half-open breaker admits one probe.
    fn admit(&self) -> bool {
        self.breaker().admit(&self.policy, Instant::now()).is_ok()
    }

    fn record(&self, ok: bool) {
        self.breaker().record(&self.policy, ok, Instant::now());
    }
}

/// The configured aliases of a worker.
#[derive(Default)]
pub struct ModelSet {
    aliases: BTreeMap<String, Alias>,
    metrics: Option<AgentMetrics>,
}

impl ModelSet {
    /// Builds the providers of `[models]`, without a secret store.
    pub fn new(models: &BTreeMap<String, ModelConfig>) -> Result<Self, amaos_mesh::BoxError> {
        Self::with_secrets(models, None)
    }

    /// Builds the providers of `[models]`, reading `api_key_secret`s from `secrets`.
    pub fn with_secrets(
        models: &BTreeMap<String, ModelConfig>,
        secrets: Option<Arc<dyn SecretStore>>,
    ) -> Result<Self, amaos_mesh::BoxError> {
        let mut aliases = BTreeMap::new();
        for (alias, config) in models {
            let provider = match config.provider {
                ModelProvider::Openai => {
                    Provider::OpenAi(OpenAiChat::new(alias, config, secrets.as_ref())?)
                }
                ModelProvider::Anthropic => {
                    Provider::Anthropic(AnthropicChat::new(alias, config, secrets.as_ref())?)
                }
                ModelProvider::Replay => continue,
            };
            aliases.insert(
                alias.clone(),
                Alias {
                    provider,
                    fallbacks: config.fallbacks.clone(),
                    policy: BreakerPolicy {
                        failures: config.breaker_failures,
                        cool_down: config.breaker_cool_down,
                    },
                    breaker: Mutex::new(Breaker::new()),
                },
            );
        }
        Ok(Self {
            aliases,
            metrics: None,
        })
    }

    /// The same set, counting its calls in `metrics`.
    pub fn with_metrics(mut self, metrics: AgentMetrics) -> Self {
        // Every configured alias has its breaker series from the start.
        for alias in self.aliases.keys() {
            metrics.breaker(alias, false);
        }
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, f: impl FnOnce(&AgentMetrics)) {
        if let Some(metrics) = &self.metrics {
            f(metrics);
        }
    }

    /// True when `alias` can answer.
    pub fn knows(&self, alias: &str) -> bool {
        alias == REPLAY_MODEL || self.aliases.contains_key(alias)
    }

    /// Whether `alias`'s breaker is open now.
    pub fn breaker_open(&self, alias: &str) -> bool {
        self.aliases
            .get(alias)
            .is_some_and(|a| a.breaker().state(Instant::now()) == State::Open)
    }
}

/// The models of one run.
pub struct RunModels {
    replay: Replay,
    set: Arc<ModelSet>,
    override_alias: Option<String>,
}

impl RunModels {
    /// The models of a run on `input`, with every agent using `override_alias` when given.
    pub fn new(input: &str, set: Arc<ModelSet>, override_alias: Option<String>) -> Self {
        Self {
            replay: Replay::new(input),
            set,
            override_alias,
        }
    }
}

impl ModelSet {
    /// The provider behind `alias`.
    pub fn provider_of(&self, alias: &str) -> &'static str {
        if alias == REPLAY_MODEL {
            return "replay";
        }
        self.aliases
            .get(alias)
            .map_or("unknown", |a| a.provider.name())
    }
}

impl ChatModel for RunModels {
    fn provider(&self, alias: &str) -> &'static str {
        self.set.provider_of(alias)
    }

    async fn complete(
        &self,
        agent: &AgentSpec,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<Completion, ModelError> {
        let first = self
            .override_alias
            .clone()
            .unwrap_or_else(|| agent.model.clone());
        let mut chain = vec![first];
        let mut last_error = None;
        let mut i = 0;
        while i < chain.len() && i < 8 {
            let alias = chain[i].clone();
            i += 1;
            if alias == REPLAY_MODEL {
                let started = Instant::now();
                let answer = self.replay.complete(agent, messages, tools).await;
                self.set.count(|m| match &answer {
                    Ok(completion) => {
                        m.model_call(REPLAY_MODEL, "replay", CallOutcome::Ok, started.elapsed());
                        m.model_usage(
                            REPLAY_MODEL,
                            "replay",
                            completion.usage.prompt_tokens,
                            completion.usage.completion_tokens,
                            completion.cost_usd,
                        );
                    }
                    Err(_) => {
                        m.model_call(
                            REPLAY_MODEL,
                            "replay",
                            CallOutcome::Error,
                            started.elapsed(),
                        );
                    }
                });
                return answer;
            }
            let Some(entry) = self.set.aliases.get(&alias) else {
                last_error = Some(ModelError::UnknownAlias(alias));
                continue;
            };
            for f in &entry.fallbacks {
                if !chain.contains(f) {
                    chain.push(f.clone());
                }
            }
            let provider = entry.provider.name();
            if !entry.admit() {
                self.set.count(|m| {
                    m.model_call(&alias, provider, CallOutcome::BreakerOpen, Duration::ZERO);
                    m.breaker(&alias, true);
                });
                tracing::warn!(model = %alias, "model breaker open; trying the next in its chain");
                last_error = Some(ModelError::Provider {
                    model: alias,
                    message: "the breaker is open after repeated failures".into(),
                });
                continue;
            }
            let started = Instant::now();
            let answer = entry.provider.complete(messages, tools).await;
            let took = started.elapsed();
            match answer {
                Ok(completion) => {
                    entry.record(true);
                    self.set.count(|m| {
                        m.model_call(&alias, provider, CallOutcome::Ok, took);
                        m.model_usage(
                            &alias,
                            provider,
                            completion.usage.prompt_tokens,
                            completion.usage.completion_tokens,
                            completion.cost_usd,
                        );
                        m.breaker(&alias, false);
                    });
                    return Ok(completion);
                }
                Err(error) => {
                    entry.record(false);
                    self.set.count(|m| {
                        m.model_call(&alias, provider, CallOutcome::Error, took);
                        m.breaker(&alias, entry.breaker().state(Instant::now()) == State::Open);
                    });
                    tracing::warn!(model = %alias, %error, "model call failed; trying the next in its chain");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ModelError::UnknownAlias(agent.model.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentSpec {
        let spec = amaos_teams::parse(
            r#"
name: t
agents:
  - name: a
    role: r
    goal: g
    tools: [file_write]
    replay:
      - tool: { name: file_write, args: { path: "{input}.md", content: "x" } }
      - say: "done with {input}"
crew: { tasks: [{ name: t, description: d, agent: a }] }
"#,
        )
        .unwrap();
        spec.agents[0].clone()
    }

    #[tokio::test]
    async fn replays_turns_in_order_with_the_input_filled_in() {
        let model = Replay::new("rust");
        let a = agent();
        let first = model.complete(&a, &[], &[]).await.unwrap();
        let Reply::ToolCalls(calls) = first.reply else {
            panic!("a tool call")
        };
        assert_eq!(calls[0].name, "file_write");
        assert_eq!(calls[0].args["path"], "rust.md");
        let second = model.complete(&a, &[], &[]).await.unwrap();
        assert_eq!(second.reply, Reply::Text("done with rust".into()));
        assert!(matches!(
            model.complete(&a, &[], &[]).await,
            Err(ModelError::ScriptExhausted(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_alias_breaker_follows_its_config_and_probes_one_call_at_a_time() {
        let config: ModelConfig = serde_json::from_value(serde_json::json!({
            "provider": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "m",
            "breaker_failures": 2,
            "breaker_cool_down": "5s",
        }))
        .unwrap();
        let set = ModelSet::new(&BTreeMap::from([("m".to_owned(), config)])).unwrap();
        let alias = &set.aliases["m"];
        alias.record(false);
        assert!(!set.breaker_open("m"));
        alias.record(false);
        assert!(set.breaker_open("m"), "two failures open it");
        assert!(!alias.admit());
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let admitted = (0..8).filter(|_| alias.admit()).count();
        assert_eq!(admitted, 1, "half-open admits one probe, not every caller");
        alias.record(true);
        assert!(alias.admit() && alias.admit());
    }
}
