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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_mesh::secrets::SecretStore;
use amaos_teams::{AgentSpec, REPLAY_MODEL, ReplayTurn};

use crate::anthropic::AnthropicChat;
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

/// Consecutive failures that open an alias's breaker.
const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker skips its alias before letting one call through.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(30);

/// A configured provider.
enum Provider {
    OpenAi(OpenAiChat),
    Anthropic(AnthropicChat),
}

impl Provider {
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

/// A breaker per alias: after [`BREAKER_FAILURES`] failed calls in a row the
/// alias is skipped (its fallbacks answer) for [`BREAKER_COOL_DOWN`], then
/// one call is let through to probe it.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// One alias: its provider, fallbacks and breaker.
struct Alias {
    provider: Provider,
    fallbacks: Vec<String>,
    breaker: Mutex<Breaker>,
}

impl Alias {
    /// Whether a call may go out now; an expired open breaker lets one through.
    fn admit(&self) -> bool {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match b.open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half-open: one probe; a failure opens it again at once.
                b.open_until = None;
                b.failures = BREAKER_FAILURES - 1;
                true
            }
            None => true,
        }
    }

    fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= BREAKER_FAILURES {
                b.open_until = Some(Instant::now() + BREAKER_COOL_DOWN);
            }
        }
    }
}

/// The configured aliases of a worker.
#[derive(Default)]
pub struct ModelSet {
    aliases: BTreeMap<String, Alias>,
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
                    breaker: Mutex::new(Breaker::default()),
                },
            );
        }
        Ok(Self { aliases })
    }

    /// True when `alias` can answer.
    pub fn knows(&self, alias: &str) -> bool {
        alias == REPLAY_MODEL || self.aliases.contains_key(alias)
    }

    /// Whether `alias`'s breaker is open now.
    pub fn breaker_open(&self, alias: &str) -> bool {
        self.aliases.get(alias).is_some_and(|a| {
            let b = a.breaker.lock().unwrap_or_else(|e| e.into_inner());
            b.open_until.is_some_and(|until| Instant::now() < until)
        })
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

impl ChatModel for RunModels {
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
                return self.replay.complete(agent, messages, tools).await;
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
            if !entry.admit() {
                tracing::warn!(model = %alias, "model breaker open; trying the next in its chain");
                last_error = Some(ModelError::Provider {
                    model: alias,
                    message: "the breaker is open after repeated failures".into(),
                });
                continue;
            }
            match entry.provider.complete(messages, tools).await {
                Ok(completion) => {
                    entry.record(true);
                    return Ok(completion);
                }
                Err(error) => {
                    entry.record(false);
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
}
