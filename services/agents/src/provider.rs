//! The provider-facing types every model speaks: messages, tool calls and
//! tool specs, replies, usage, completions, [`ModelError`] and the
//! [`ChatModel`] trait. A leaf: it imports nothing of this crate, so the
//! providers ([`crate::openai`], [`crate::anthropic`], their shared
//! `http`) and the router over them ([`crate::model`]) all build on
//! it without importing each other in a cycle.

use std::future::Future;

use amaos_teams::AgentSpec;

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

    /// The provider behind `alias` (`openai`, `anthropic`, `replay`), for
    /// traces and metrics.
    fn provider(&self, _alias: &str) -> &'static str {
        "unknown"
    }
}

/// A rough token count (four characters a token), used where the provider
/// reports none.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}
