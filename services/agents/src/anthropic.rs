//! Anthropic's Messages API: system prompt apart, tools with JSON Schemas,
//! `tool_use` / `tool_result` content blocks, usage accounting, retries (429,
//! 5xx, 529 overloaded) honouring `Retry-After`, and optional streaming over
//! server-sent events (`message_start` … `message_stop`).

use amaos_mesh::config::ModelConfig;
use serde_json::{Value, json};

use crate::http::{KeyHeader, ProviderHttp, tool_call};
use crate::provider::{ChatMessage, Completion, ModelError, Reply, ToolSpec, Usage};

/// The API version sent in `anthropic-version`.
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this is used when the alias sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Most content blocks in one streamed answer.
const MAX_BLOCKS: usize = 64;

/// One configured Anthropic model.
pub struct AnthropicChat {
    http: ProviderHttp,
    url: String,
    model: String,
    stream: bool,
    max_tokens: u32,
}

/// A content block being assembled from a stream.
#[derive(Default)]
struct Block {
    kind: String,
    id: String,
    name: String,
    text: String,
}

impl AnthropicChat {
    /// A client for alias `alias`; the API key is read from its environment
    /// variable now, so a missing one is reported at start.
    pub fn new(
        alias: &str,
        config: &ModelConfig,
        secrets: Option<&std::sync::Arc<dyn amaos_mesh::secrets::SecretStore>>,
    ) -> Result<Self, amaos_mesh::BoxError> {
        Ok(Self {
            http: ProviderHttp::new(alias, config, secrets, KeyHeader::Named("x-api-key"))?,
            url: format!("{}/messages", config.base_url.trim_end_matches('/')),
            model: config.model.clone(),
            stream: config.stream,
            max_tokens: config.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }

    fn error(&self, message: impl Into<String>) -> ModelError {
        self.http.error(message)
    }

    /// The request body: system messages joined into `system`, tool results
    /// as `tool_result` blocks of a user turn (consecutive ones merged, as
    /// the API wants turns to alternate).
    fn body(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Value {
        let system: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let mut turns: Vec<Value> = Vec::new();
        for m in messages.iter().filter(|m| m.role != "system") {
            let (role, blocks) = match m.role {
                "assistant" => {
                    let mut blocks = Vec::new();
                    if !m.content.is_empty() {
                        blocks.push(json!({"type": "text", "text": m.content}));
                    }
                    for c in &m.tool_calls {
                        blocks.push(json!({
                            "type": "tool_use", "id": c.id, "name": c.name,
                            "input": Value::Object(c.args.clone()),
                        }));
                    }
                    ("assistant", blocks)
                }
                "tool" => (
                    "user",
                    vec![json!({
                        "type": "tool_result",
                        "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                        "content": m.content,
                        "is_error": m.content.starts_with("error: "),
                    })],
                ),
                _ => ("user", vec![json!({"type": "text", "text": m.content})]),
            };
            match turns.last_mut() {
                Some(last) if last["role"] == role => {
                    if let Some(content) = last["content"].as_array_mut() {
                        content.extend(blocks);
                    }
                }
                _ => turns.push(json!({"role": role, "content": blocks})),
            }
        }
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": turns,
            "stream": self.stream,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !tools.is_empty() {
            body["tools"] = tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
        }
        body
    }

    /// One call, with retries.
    pub async fn complete(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Result<Completion, ModelError> {
        let body = self.body(messages, tools);
        let response = self
            .http
            .send(|client| {
                client
                    .post(&self.url)
                    .header("anthropic-version", API_VERSION)
                    .json(&body)
            })
            .await?;
        let (blocks, usage) = if self.stream {
            self.read_stream(response).await?
        } else {
            self.read_json(response).await?
        };
        let reply = self.reply(blocks)?;
        Ok(Completion {
            reply,
            usage,
            cost_usd: self.http.cost(usage),
            model: self.http.alias().to_owned(),
        })
    }

    /// Text blocks joined, or the tool calls when there are any.
    fn reply(&self, blocks: Vec<Block>) -> Result<Reply, ModelError> {
        let mut text = String::new();
        let mut calls = Vec::new();
        for b in blocks {
            match b.kind.as_str() {
                "text" => text.push_str(&b.text),
                "tool_use" => calls.push(
                    tool_call(
                        &b.id,
                        &b.name,
                        if b.text.is_empty() { "{}" } else { &b.text },
                    )
                    .map_err(|e| self.error(e))?,
                ),
                // Thinking and other blocks are not part of the answer.
                _ => {}
            }
        }
        Ok(if calls.is_empty() {
            Reply::Text(text)
        } else {
            Reply::ToolCalls(calls)
        })
    }

    async fn read_json(
        &self,
        response: reqwest::Response,
    ) -> Result<(Vec<Block>, Usage), ModelError> {
        let v = self.http.json(response).await?;
        let Some(content) = v["content"].as_array() else {
            return Err(self.error("the answer has no `content` array"));
        };
        let blocks = content
            .iter()
            .map(|c| Block {
                kind: c["type"].as_str().unwrap_or_default().to_owned(),
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                text: match c["type"].as_str() {
                    Some("tool_use") => c["input"].to_string(),
                    _ => c["text"].as_str().unwrap_or_default().to_owned(),
                },
            })
            .collect();
        Ok((blocks, usage(&v["usage"])))
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
    ) -> Result<(Vec<Block>, Usage), ModelError> {
        let mut blocks: Vec<Block> = Vec::new();
        let mut usage_seen = Usage::default();
        let mut stopped = false;
        self.http
            .sse(response, |data| {
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| self.error(format!("a stream event is not JSON: {e}")))?;
                match v["type"].as_str().unwrap_or_default() {
                    "message_start" => {
                        let u = usage(&v["message"]["usage"]);
                        usage_seen.prompt_tokens = u.prompt_tokens;
                        usage_seen.completion_tokens += u.completion_tokens;
                    }
                    "content_block_start" => {
                        let index = v["index"].as_u64().unwrap_or(0) as usize;
                        if index >= MAX_BLOCKS {
                            return Err(self.error("too many content blocks"));
                        }
                        while blocks.len() <= index {
                            blocks.push(Block::default());
                        }
                        let c = &v["content_block"];
                        blocks[index] = Block {
                            kind: c["type"].as_str().unwrap_or_default().to_owned(),
                            id: c["id"].as_str().unwrap_or_default().to_owned(),
                            name: c["name"].as_str().unwrap_or_default().to_owned(),
                            text: c["text"].as_str().unwrap_or_default().to_owned(),
                        };
                    }
                    "content_block_delta" => {
                        let index = v["index"].as_u64().unwrap_or(0) as usize;
                        let Some(block) = blocks.get_mut(index) else {
                            return Err(self.error("a delta for a block that never started"));
                        };
                        let d = &v["delta"];
                        match d["type"].as_str() {
                            Some("text_delta") => {
                                block.text.push_str(d["text"].as_str().unwrap_or_default())
                            }
                            Some("input_json_delta") => block
                                .text
                                .push_str(d["partial_json"].as_str().unwrap_or_default()),
                            _ => {}
                        }
                    }
                    "message_delta" => {
                        if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                            usage_seen.completion_tokens = n;
                        }
                    }
                    "message_stop" => stopped = true,
                    "error" => {
                        return Err(self.error(format!(
                            "the stream reported an error: {}",
                            v["error"]["message"].as_str().unwrap_or("unknown")
                        )));
                    }
                    // `ping`, `content_block_stop` and future event types.
                    _ => {}
                }
                Ok(())
            })
            .await?;
        if !stopped {
            return Err(self.error("the stream ended before message_stop"));
        }
        Ok((blocks, usage_seen))
    }
}

fn usage(v: &Value) -> Usage {
    Usage {
        prompt_tokens: v["input_tokens"].as_u64().unwrap_or(0),
        completion_tokens: v["output_tokens"].as_u64().unwrap_or(0),
    }
}
