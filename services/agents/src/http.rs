//! What the HTTP model providers share: an alias's client (the mesh's one
//! API client — key, timeouts, retries honouring `Retry-After`, bounded
//! bodies — named by the alias), server-sent-event reading, cost estimates
//! and tool-call argument parsing.
//! It builds on [`crate::provider`] only; the providers build on it.

use std::sync::Arc;

use amaos_mesh::api_client::{ApiClient, ApiKey, MAX_BODY};
use amaos_mesh::config::ModelConfig;
use amaos_mesh::secrets::SecretStore;
use futures::StreamExt;
use serde_json::Value;

pub(crate) use amaos_mesh::api_client::KeyHeader;

use crate::provider::{ModelError, ToolCallRequest, Usage};

/// One configured alias's HTTP side: `mesh::api_client`'s client, and what
/// an alias adds (its name on errors, its prices).
pub(crate) struct ProviderHttp {
    alias: String,
    client: ApiClient,
    prices: (f64, f64),
}

impl ProviderHttp {
    pub(crate) fn new(
        alias: &str,
        config: &ModelConfig,
        secrets: Option<&Arc<dyn SecretStore>>,
        key_header: KeyHeader,
    ) -> Result<Self, amaos_mesh::BoxError> {
        let api_key = ApiKey::configured(
            config.api_key_env.as_deref(),
            config.api_key_secret.as_deref(),
            secrets,
            |field| format!("models.{alias}.{field}"),
        )?;
        Ok(Self {
            alias: alias.to_owned(),
            client: ApiClient::new(config.timeout, config.max_retries, api_key, key_header)?,
            prices: (config.prompt_price_per_1k, config.completion_price_per_1k),
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

    /// Sends the request `build` makes, with the alias's key and retries
    /// ([`ApiClient::send`]).
    pub(crate) async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ModelError> {
        self.client.send(build).await.map_err(|e| self.error(e))
    }

    /// The whole body as JSON, at most 8 MiB.
    pub(crate) async fn json(&self, response: reqwest::Response) -> Result<Value, ModelError> {
        self.client.json(response).await.map_err(|e| self.error(e))
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
