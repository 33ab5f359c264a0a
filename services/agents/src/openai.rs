//! OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, llama.cpp's
//! server, LM Studio): tools as functions, usage accounting, a timeout per
//! call, retries with backoff on 429, 5xx and transport errors honouring
//! `Retry-After`, and optional streaming over server-sent events.

use std::time::Duration;

use amaos_mesh::config::ModelConfig;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::model::{
    ChatMessage, Completion, ModelError, Reply, ToolCallRequest, ToolSpec, Usage, estimate_tokens,
};

/// Largest response body read, in bytes.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One configured OpenAI-compatible model.
pub struct OpenAiChat {
    alias: String,
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    max_retries: u32,
    stream: bool,
    max_tokens: Option<u32>,
    prices: (f64, f64),
}

impl OpenAiChat {
    /// A client for alias `alias`; the API key is read from its environment
    /// variable now, so a missing one is reported at start.
    pub fn new(alias: &str, config: &ModelConfig) -> Result<Self, amaos_mesh::BoxError> {
        let api_key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!(
                    "config key `models.{alias}.api_key_env`: environment variable {var} is not set"
                )
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            alias: alias.to_owned(),
            http,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            model: config.model.clone(),
            api_key,
            max_retries: config.max_retries,
            stream: config.stream,
            max_tokens: config.max_tokens,
            prices: (config.prompt_price_per_1k, config.completion_price_per_1k),
        })
    }

    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Provider {
            model: self.alias.clone(),
            message: message.into(),
        }
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.post(&self.url).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => {
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
                    let cost = (usage.prompt_tokens as f64 * self.prices.0
                        + usage.completion_tokens as f64 * self.prices.1)
                        / 1000.0;
                    return Ok(Completion {
                        reply,
                        usage,
                        cost_usd: cost,
                        model: self.alias.clone(),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.max(0.0)).min(MAX_RETRY_AFTER));
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    if !(status.as_u16() == 429 || status.is_server_error())
                        || attempt > self.max_retries
                    {
                        return Err(self.error(format!("HTTP {status}: {text}")));
                    }
                    retry_after.unwrap_or_else(|| backoff(attempt))
                }
                Err(e) => {
                    if attempt > self.max_retries {
                        return Err(self.error(format!("request failed: {e}")));
                    }
                    backoff(attempt)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn read_json(
        &self,
        response: reqwest::Response,
    ) -> Result<(Reply, Option<Usage>), ModelError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.error(format!("reading the answer: {e}")))?;
        if bytes.len() > MAX_BODY {
            return Err(self.error("the answer is too large"));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("the answer is not JSON: {e}")))?;
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
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let mut text = String::new();
        // Tool calls arrive in pieces, by index.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut usage_seen = None;
        let mut done = false;
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(format!("the stream broke: {e}")))?;
            read += chunk.len();
            if read > MAX_BODY {
                return Err(self.error("the answer is too large"));
            }
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim().to_owned();
                buffer.drain(..=end);
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
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
            }
        }
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

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)))
}

fn usage(v: &Value) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: v["prompt_tokens"].as_u64()?,
        completion_tokens: v["completion_tokens"].as_u64().unwrap_or(0),
    })
}

fn tool_call(id: &str, name: &str, arguments: &str) -> Result<ToolCallRequest, String> {
    if name.is_empty() {
        return Err("a tool call names no function".into());
    }
    let args = match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(format!("the arguments of `{name}` are not a JSON object")),
        Err(e) => return Err(format!("the arguments of `{name}` are not JSON: {e}")),
    };
    Ok(ToolCallRequest {
        id: if id.is_empty() {
            format!("call-{name}")
        } else {
            id.to_owned()
        },
        name: name.to_owned(),
        args,
    })
}
