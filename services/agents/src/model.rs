//! LLM providers behind one trait, and `replay`: a deterministic scripted
//! model whose turns (text or tool calls) come from the team spec. It makes
//! runs reproducible for tests, offline demos and benchmarks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use amaos_teams::{AgentSpec, ReplayTurn};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// What a model answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A final answer.
    Text(String),
    /// A request to call a tool.
    ToolCall {
        /// The tool.
        name: String,
        /// Its arguments.
        args: serde_json::Map<String, serde_json::Value>,
    },
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
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The scripted model has no more turns for the agent.
    #[error("the replay script of agent `{0}` has no more turns")]
    ScriptExhausted(String),
}

/// A chat model.
pub trait ChatModel: Send + Sync {
    /// Answers the conversation as `agent`.
    fn complete(
        &self,
        agent: &AgentSpec,
        messages: &[ChatMessage],
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

    fn next_turn<'a>(&self, agent: &'a AgentSpec) -> Option<&'a ReplayTurn> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = cursors.entry(agent.name.clone()).or_default();
        let turn = agent.replay.get(*cursor)?;
        *cursor += 1;
        Some(turn)
    }
}

impl ChatModel for Replay {
    async fn complete(
        &self,
        agent: &AgentSpec,
        messages: &[ChatMessage],
    ) -> Result<Completion, ModelError> {
        if let Some(latency) = agent.replay_latency() {
            tokio::time::sleep(latency).await;
        }
        let turn = self
            .next_turn(agent)
            .ok_or_else(|| ModelError::ScriptExhausted(agent.name.clone()))?;
        let reply = match (&turn.say, &turn.tool) {
            (Some(text), _) => Reply::Text(text.replace("{input}", &self.input)),
            (None, Some(tool)) => Reply::ToolCall {
                name: tool.name.clone(),
                args: tool
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), self.fill(v)))
                    .collect(),
            },
            // Specs are validated: every turn has exactly one of the two.
            (None, None) => Reply::Text(String::new()),
        };
        let completion_text = match &reply {
            Reply::Text(t) => t.clone(),
            Reply::ToolCall { name, args } => {
                format!("{name}{}", serde_json::Value::Object(args.clone()))
            }
        };
        Ok(Completion {
            usage: Usage {
                prompt_tokens: messages.iter().map(|m| estimate_tokens(&m.content)).sum(),
                completion_tokens: estimate_tokens(&completion_text),
            },
            reply,
            cost_usd: 0.0,
        })
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
        let first = model.complete(&a, &[]).await.unwrap();
        assert!(
            matches!(first.reply, Reply::ToolCall { ref name, ref args } if name == "file_write" && args["path"] == "rust.md")
        );
        let second = model.complete(&a, &[]).await.unwrap();
        assert_eq!(second.reply, Reply::Text("done with rust".into()));
        assert!(matches!(
            model.complete(&a, &[]).await,
            Err(ModelError::ScriptExhausted(_))
        ));
    }
}
