//! What the HTTP model providers share: where an alias's API key comes
//! from, the client with its timeouts, the retry loop (429, 5xx and
//! transport errors, honouring `Retry-After`), bounded body and
//! server-sent-event reading, cost estimates and tool-call argument parsing.
//! It builds on [`crate::provider`] only; the providers build on it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_mesh::config::ModelConfig;
use amaos_mesh::retry::{Backoff, retry_after};
use amaos_mesh::secrets::{Secret, SecretStore};
use futures::StreamExt;
use serde_json::Value;

use crate::provider::{ModelError, ToolCallRequest, Usage};

/// Largest response body read, in bytes.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Waits between attempts when the server names none: 0.4 s doubling to 12.8 s.
const BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(400), Duration::from_millis(12_800));

/// Where an alias's API key comes from. The key itself is a [`Secret`]:
/// never printed, and scrubbed from error messages.
#[derive(Clone)]
pub(crate) enum ApiKey {
    /// No key.
    None,
    /// Read from the environment at start.
    Fixed(Secret),
    /// Read from the secret store at each call (cached by the store), so a
    /// rotated key is used without a restart.
    Stored(Arc<dyn SecretStore>, String),
}

impl ApiKey {
    /// The key now.
    pub(crate) async fn get(&self, alias: &str) -> Result<Option<Secret>, ModelError> {
        match self {
            ApiKey::None => Ok(None),
            ApiKey::Fixed(secret) => Ok(Some(secret.clone())),
            ApiKey::Stored(store, path) => {
                store
                    .get(path)
                    .await
                    .map(Some)
                    .map_err(|e| ModelError::Provider {
                        model: alias.to_owned(),
                        message: format!("API key: {e}"),
                    })
            }
        }
    }
}

/// The API key of `alias`: from its environment variable (read now, so a
/// missing one is reported at start) or from the secret store.
pub(crate) fn api_key(
    alias: &str,
    config: &ModelConfig,
    secrets: Option<&Arc<dyn SecretStore>>,
) -> Result<ApiKey, amaos_mesh::BoxError> {
    match (&config.api_key_env, &config.api_key_secret) {
        (Some(var), _) => Ok(ApiKey::Fixed(Secret::new(std::env::var(var).map_err(
            |_| {
                format!(
                    "config key `models.{alias}.api_key_env`: environment variable {var} is not set"
                )
            },
        )?))),
        (None, Some(path)) => match secrets {
            Some(store) => Ok(ApiKey::Stored(store.clone(), path.clone())),
            None => Err(format!(
                "config key `models.{alias}.api_key_secret`: no secret store is configured"
            )
            .into()),
        },
        (None, None) => Ok(ApiKey::None),
    }
}

/// One configured alias's HTTP side.
pub(crate) struct ProviderHttp {
    alias: String,
    client: reqwest::Client,
    max_retries: u32,
    prices: (f64, f64),
    api_key: ApiKey,
    key_header: KeyHeader,
}

/// How a provider wants its API key sent.
#[derive(Clone, Copy)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer <key>` (OpenAI-compatible).
    Bearer,
    /// The key alone in this header (Anthropic's `x-api-key`).
    Named(&'static str),
}

impl ProviderHttp {
    pub(crate) fn new(
        alias: &str,
        config: &ModelConfig,
        secrets: Option<&Arc<dyn SecretStore>>,
        key_header: KeyHeader,
    ) -> Result<Self, amaos_mesh::BoxError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            alias: alias.to_owned(),
            client,
            max_retries: config.max_retries,
            prices: (config.prompt_price_per_1k, config.completion_price_per_1k),
            api_key: api_key(alias, config, secrets)?,
            key_header,
        })
    }

    /// The alias this client serves.
    pub(crate) fn alias(&self) -> &str {
        &self.alias
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Provider {
            model: self.alias.clone(),
            message: message.into(),
        }
    }

    /// Estimated cost of `usage` in US dollars.
    pub(crate) fn cost(&self, usage: Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.prices.0
            + usage.completion_tokens as f64 * self.prices.1)
            / 1000.0
    }

    /// Sends the request `build` makes until it succeeds, retrying 429, 5xx
    /// (including Anthropic's 529) and transport errors up to `max_retries`
    /// times; other statuses fail at once with the start of their body.
    /// The API key (read now, so a rotated one is used) goes on every
    /// request, and is scrubbed from every error.
    pub(crate) async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ModelError> {
        let key = self.api_key.get(&self.alias).await?;
        // What a server sends back may quote the key: never pass it on.
        let scrub = |text: String| match &key {
            Some(key) => key.scrub(&text),
            None => text,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = build(&self.client);
            if let Some(key) = &key {
                request = match self.key_header {
                    KeyHeader::Bearer => request.bearer_auth(key.expose()),
                    KeyHeader::Named(name) => request.header(name, key.expose()),
                };
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, SystemTime::now()))
                        .map(|wait| wait.min(MAX_RETRY_AFTER));
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    if !(status.as_u16() == 429 || status.is_server_error())
                        || attempt > self.max_retries
                    {
                        return Err(self.error(scrub(format!("HTTP {status}: {text}"))));
                    }
                    retry_after.unwrap_or_else(|| BACKOFF.wait(attempt))
                }
                Err(e) => {
                    if attempt > self.max_retries {
                        return Err(self.error(scrub(format!("request failed: {e}"))));
                    }
                    BACKOFF.wait(attempt)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The whole body as JSON, at most 8 MiB.
    pub(crate) async fn json(&self, response: reqwest::Response) -> Result<Value, ModelError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.error(format!("reading the answer: {e}")))?;
        if bytes.len() > MAX_BODY {
            return Err(self.error("the answer is too large"));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("the answer is not JSON: {e}")))
    }

    /// Feeds the `data:` payload of every server-sent event to `on`, until
    /// the stream ends (at most 8 MiB in all).
    pub(crate) async fn sse(
        &self,
        response: reqwest::Response,
        mut on: impl FnMut(&str) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let mut stream = response.bytes_stream();
        let mut lines = SseLines::default();
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(format!("the stream broke: {e}")))?;
            read += chunk.len();
            if read > MAX_BODY {
                return Err(self.error("the answer is too large"));
            }
            lines.feed(&chunk, &mut on)?;
        }
        Ok(())
    }
}

/// Splits a server-sent event stream into the payloads of its `data:`
/// lines. Bytes are buffered and split on line ends before they are decoded,
/// so a character split across network chunks arrives whole.
#[derive(Default)]
pub(crate) struct SseLines {
    buffer: Vec<u8>,
}

impl SseLines {
    /// Adds `chunk` and hands every complete `data:` payload to `on`.
    pub(crate) fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.buffer[start..start + end]);
            start += end + 1;
            if let Some(data) = line.trim().strip_prefix("data:") {
                on(data.trim())?;
            }
        }
        self.buffer.drain(..start);
        Ok(())
    }
}

/// A tool call from its id, name and arguments as JSON text.
pub(crate) fn tool_call(id: &str, name: &str, arguments: &str) -> Result<ToolCallRequest, String> {
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

#[cfg(test)]
mod sse_tests {
    use super::SseLines;

    /// The payloads `chunk` completes.
    fn feed(lines: &mut SseLines, chunk: &str) -> Vec<String> {
        let mut out = Vec::new();
        lines
            .feed(chunk.as_bytes(), |data| {
                out.push(data.to_owned());
                Ok::<(), ()>(())
            })
            .unwrap();
        out
    }

    fn text_payloads(chunks: &[&str]) -> Vec<String> {
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
        payloads(&chunks)
    }

    fn payloads(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = SseLines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines
                .feed(chunk, |data| {
                    out.push(data.to_owned());
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn a_character_split_across_chunks_arrives_whole_at_every_split() {
        let stream = "data: {\"t\":\"héllo — 世界 🎉\"}\r\n\nevent: x\ndata: [DONE]\n".as_bytes();
        let whole = payloads(&[stream]);
        assert_eq!(whole, ["{\"t\":\"héllo — 世界 🎉\"}", "[DONE]"]);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let split = payloads(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(split, whole, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn lf_and_crlf_line_ends_give_the_same_payloads() {
        let lf = text_payloads(&["data: one\n\ndata: two\n\n"]);
        let crlf = text_payloads(&["data: one\r\n\r\ndata: two\r\n\r\n"]);
        assert_eq!(lf, ["one", "two"]);
        assert_eq!(crlf, lf);
        let split = text_payloads(&["data: one\r", "\n\r\ndata: two\r", "\n"]);
        assert_eq!(split, lf, "a CRLF split between chunks");
    }

    #[test]
    fn every_data_line_of_a_multi_line_event_is_its_own_payload() {
        // Lines are not joined into one event's data: each is handed on alone.
        let stream = "event: message\ndata: {\"a\":\ndata: 1}\n\ndata: [DONE]\n\n";
        assert_eq!(text_payloads(&[stream]), ["{\"a\":", "1}", "[DONE]"]);
    }

    #[test]
    fn other_fields_comments_and_blank_lines_are_skipped() {
        let stream = ": keep-alive\nevent: delta\nid: 7\nretry: 100\n\n\ndata:tight\n  data:  padded  \ndata:\n";
        assert_eq!(text_payloads(&[stream]), ["tight", "padded", ""]);
    }

    #[test]
    fn a_line_waits_for_its_end() {
        let mut lines = SseLines::default();
        assert!(feed(&mut lines, "data: par").is_empty());
        assert!(
            feed(&mut lines, "tial").is_empty(),
            "nothing before the line ends"
        );
        assert_eq!(feed(&mut lines, "\ndata: next"), ["partial"]);
        // A last line without its end is never handed on.
        assert_eq!(text_payloads(&["data: a\ndata: unfinished"]), ["a"]);
    }

    #[test]
    fn a_payload_the_reader_refuses_stops_the_feed() {
        let mut lines = SseLines::default();
        let mut seen = Vec::new();
        let result = lines.feed(b"data: a\ndata: stop\ndata: c\n", |data| {
            seen.push(data.to_owned());
            if data == "stop" {
                Err("refused")
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("refused"));
        assert_eq!(seen, ["a", "stop"]);
    }
}
