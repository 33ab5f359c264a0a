//! LLM providers behind one trait.
//!
//! - `replay`: a deterministic scripted model whose turns (text or tool calls)
//!   come from the team spec. It makes runs reproducible for tests, offline
//!   demos and benchmarks.
//! - configured aliases (`[models.<alias>]`): OpenAI-compatible Chat
//!   Completions ([`crate::openai`]), each with a fallback chain tried in
//!   order when a call fails.
//!
//! [`RunModels`] is what one run uses: it picks the model each agent names
//! (or the run's override) and records which alias answered.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_teams::{AgentSpec, REPLAY_MODEL, ReplayTurn};

use crate::openai::OpenAiChat;

/// A tool call a model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCallRequest {
    /// The call's id, echoed in the tool's answer.
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments.
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'static str,
    /// The text.
    pub content: String,
    /// Tool calls the assistant asked for (assistant messages).
    pub tool_calls: Vec<ToolCallRequest>,
    /// The call this message answers (tool messages).
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain message.
    pub fn text(role: &'static str, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool offered to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// What a model answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A final answer.
    Text(String),
    /// Requests to call tools, in order.
    ToolCalls(Vec<ToolCallRequest>),
}

/// Tokens used by one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// A model's answer and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The answer.
    pub reply: Reply,
    /// The tokens used.
    pub usage: Usage,
    /// Estimated cost in US dollars.
    pub cost_usd: f64,
    /// The alias that answered (after any fallbacks).
    pub model: String,
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The scripted model has no more turns for the agent.
    #[error("the replay script of agent `{0}` has no more turns")]
    ScriptExhausted(String),
    /// No alias of that name is configured.
    #[error("unknown model alias `{0}`")]
    UnknownAlias(String),
    /// The provider failed (after retries).
    #[error("model `{model}`: {message}")]
    Provider {
        /// The alias.
        model: String,
        /// What went wrong.
        message: String,
    },
}

/// A chat model.
pub trait ChatModel: Send + Sync {
    /// Answers the conversation as `agent`, offering `tools`.
    fn complete(
        &self,
        agent: &AgentSpec,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> impl Future<Output = Result<Completion, ModelError>> + Send;
}

/// A rough token count (four characters a token), used where the provider
/// reports none.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

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
        if let Some(latency) = agent.replay_latency() {
            tokio::time::sleep(latency).await;
        }
        let (n, turn) = self
            .next_turn(agent)
            .ok_or_else(|| ModelError::ScriptExhausted(agent.name.clone()))?;
        let reply = match (&turn.say, &turn.tool) {
            (Some(text), _) => Reply::Text(text.replace("{input}", &self.input)),
            (None, Some(tool)) => Reply::ToolCalls(vec![ToolCallRequest {
                id: format!("replay-{}-{n}", agent.name),
                name: tool.name.clone(),
                args: tool
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), self.fill(v)))
                    .collect(),
            }]),
            // Specs are validated: every turn has exactly one of the two.
            (None, None) => Reply::Text(String::new()),
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

/// The configured aliases of a worker.
#[derive(Default)]
pub struct ModelSet {
    providers: BTreeMap<String, (Arc<OpenAiChat>, Vec<String>)>,
}

impl ModelSet {
    /// Builds the providers of `[models]`.
    pub fn new(models: &BTreeMap<String, ModelConfig>) -> Result<Self, amaos_mesh::BoxError> {
        let mut providers = BTreeMap::new();
        for (alias, config) in models {
            if config.provider == ModelProvider::Openai {
                providers.insert(
                    alias.clone(),
                    (
                        Arc::new(OpenAiChat::new(alias, config)?),
                        config.fallbacks.clone(),
                    ),
                );
            }
        }
        Ok(Self { providers })
    }

    /// True when `alias` can answer.
    pub fn knows(&self, alias: &str) -> bool {
        alias == REPLAY_MODEL || self.providers.contains_key(alias)
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
            let Some((provider, fallbacks)) = self.set.providers.get(&alias) else {
                last_error = Some(ModelError::UnknownAlias(alias));
                continue;
            };
            match provider.complete(messages, tools).await {
                Ok(completion) => return Ok(completion),
                Err(error) => {
                    tracing::warn!(model = %alias, %error, "model call failed; trying the next in its chain");
                    for f in fallbacks {
                        if !chain.contains(f) {
                            chain.push(f.clone());
                        }
                    }
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
        let yaml = r#"
name: a
role: r
goal: g
tools: [file_write]
replay:
  - tool: { name: file_write, args: { path: "{input}.md", content: "x" } }
  - say: "done with {input}"
"#;
        serde_yaml::from_str(yaml).unwrap()
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
