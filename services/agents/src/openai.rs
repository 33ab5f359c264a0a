//! OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, llama.cpp's
//! server, LM Studio): tools as functions, usage accounting, a timeout per
//! call, retries with backoff on 429, 5xx and transport errors honouring
//! `Retry-After`, and optional streaming over server-sent events.

use amaos_mesh::config::ModelConfig;
use serde_json::{Value, json};

use crate::http::{KeyHeader, ProviderHttp, tool_call};
use crate::provider::{
    ChatMessage, Completion, ModelError, Reply, ToolSpec, Usage, estimate_tokens,
};

/// One configured OpenAI-compatible model.
pub struct OpenAiChat {
    http: ProviderHttp,
    url: String,
    model: String,
    stream: bool,
    max_tokens: Option<u32>,
}

impl OpenAiChat {
    /// A client for alias `alias`; the API key is read from its environment
    /// variable now, so a missing one is reported at start.
    pub fn new(
        alias: &str,
        config: &ModelConfig,
        secrets: Option<&std::sync::Arc<dyn amaos_mesh::secrets::SecretStore>>,
    ) -> Result<Self, amaos_mesh::BoxError> {
        Ok(Self {
            http: ProviderHttp::new(alias, config, secrets, KeyHeader::Bearer)?,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            model: config.model.clone(),
            stream: config.stream,
            max_tokens: config.max_tokens,
        })
    }

    fn error(&self, message: impl Into<String>) -> ModelError {
        self.http.error(message)
    }

    fn body(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Value {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut v = json!({"role": m.role, "content": m.content});
                if !m.tool_calls.is_empty() {
                    v["tool_calls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function", "function": {
                                "name": c.name,
                                "arguments": Value::Object(c.args.clone()).to_string(),
                            }})
                        })
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = json!(id);
                }
                v
            })
            .collect();
        let mut body = json!({"model": self.model, "messages": messages, "stream": self.stream});
        if !tools.is_empty() {
            body["tools"] = tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters,
                    }})
                })
                .collect();
        }
        if let Some(max) = self.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
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
            .send(|client| client.post(&self.url).json(&body))
            .await?;
        let (reply, usage) = if self.stream {
            self.read_stream(response).await?
        } else {
            self.read_json(response).await?
        };
        let usage = usage.unwrap_or_else(|| Usage {
            prompt_tokens: messages.iter().map(|m| estimate_tokens(&m.content)).sum(),
            completion_tokens: match &reply {
                Reply::Text(t) => estimate_tokens(t),
                Reply::ToolCalls(_) => 0,
            },
        });
        Ok(Completion {
            reply,
            usage,
            cost_usd: self.http.cost(usage),
            model: self.http.alias().to_owned(),
        })
    }

    async fn read_json(
        &self,
        response: reqwest::Response,
    ) -> Result<(Reply, Option<Usage>), ModelError> {
        let v = self.http.json(response).await?;
        let message = &v["choices"][0]["message"];
        if message.is_null() {
            return Err(self.error("the answer has no choices[0].message"));
        }
        let calls = match message["tool_calls"].as_array() {
            Some(calls) => calls
                .iter()
                .map(|c| {
                    tool_call(
                        c["id"].as_str().unwrap_or_default(),
                        c["function"]["name"].as_str().unwrap_or_default(),
                        c["function"]["arguments"].as_str().unwrap_or("{}"),
                    )
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| self.error(e))?,
            None => Vec::new(),
        };
        let reply = if calls.is_empty() {
            Reply::Text(message["content"].as_str().unwrap_or_default().to_owned())
        } else {
            Reply::ToolCalls(calls)
        };
        Ok((reply, usage(&v["usage"])))
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
    ) -> Result<(Reply, Option<Usage>), ModelError> {
        let mut text = String::new();
        // Tool calls arrive in pieces, by index.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut usage_seen = None;
        let mut done = false;
        self.http
            .sse(response, |data| {
                if data == "[DONE]" {
                    done = true;
                    return Ok(());
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| self.error(format!("a stream event is not JSON: {e}")))?;
                if let Some(u) = usage(&v["usage"]) {
                    usage_seen = Some(u);
                }
                let delta = &v["choices"][0]["delta"];
                if let Some(t) = delta["content"].as_str() {
                    text.push_str(t);
                }
                for c in delta["tool_calls"].as_array().into_iter().flatten() {
                    let index = c["index"].as_u64().unwrap_or(0) as usize;
                    if index > 64 {
                        return Err(self.error("too many tool calls"));
                    }
                    while calls.len() <= index {
                        calls.push(Default::default());
                    }
                    let slot = &mut calls[index];
                    if let Some(id) = c["id"].as_str() {
                        slot.0 = id.to_owned();
                    }
                    if let Some(name) = c["function"]["name"].as_str() {
                        slot.1.push_str(name);
                    }
                    if let Some(args) = c["function"]["arguments"].as_str() {
                        slot.2.push_str(args);
                    }
                }
                Ok(())
            })
            .await?;
        if !done {
            return Err(self.error("the stream ended before [DONE]"));
        }
        if calls.is_empty() {
            return Ok((Reply::Text(text), usage_seen));
        }
        let calls = calls
            .iter()
            .map(|(id, name, args)| tool_call(id, name, if args.is_empty() { "{}" } else { args }))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| self.error(e))?;
        Ok((Reply::ToolCalls(calls), usage_seen))
    }
}

fn usage(v: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: v["prompt_tokens"].as_u64()?,
        completion_tokens: v["completion_tokens"].as_u64().unwrap_or(0),
    })
}
