//! The one HTTP client for model providers' APIs: chat (the agents' model
//! aliases) and embeddings (the memory service's OpenAI-compatible
//! embedder) speak through it.
//!
//! It is reqwest over rustls (`https://` and `http://`), with a timeout per
//! request; an API key from an environment variable or the secret store
//! (read at each call, so a rotated key is used without a restart), sent on
//! every request and scrubbed from every error; retries of 429, 5xx and
//! transport errors with [`crate::retry`]'s backoff, honouring
//! `Retry-After`; and bodies read to a bound.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;

use crate::BoxError;
use crate::retry::{Backoff, retry_after};
use crate::secrets::{Secret, SecretStore};

/// Largest response body read, in bytes.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Waits between attempts when the server names none: 0.4 s doubling to 12.8 s.
const BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(400), Duration::from_millis(12_800));

/// Where an API key comes from. The key itself is a [`Secret`]: never
/// printed, and scrubbed from error messages.
#[derive(Clone)]
pub enum ApiKey {
    /// No key.
    None,
    /// Read from the environment at start.
    Fixed(Secret),
    /// Read from the secret store at each call (cached by the store).
    Stored(Arc<dyn SecretStore>, String),
}

impl ApiKey {
    /// The key now.
    pub async fn get(&self) -> Result<Option<Secret>, String> {
        match self {
            ApiKey::None => Ok(None),
            ApiKey::Fixed(secret) => Ok(Some(secret.clone())),
            ApiKey::Stored(store, path) => store
                .get(path)
                .await
                .map(Some)
                .map_err(|e| format!("API key: {e}")),
        }
    }

    /// The key named by config: the environment variable `env` (read now,
    /// so a missing one is reported at start) or the secret-store path
    /// `secret`. `config_key` turns a field (`api_key_env`,
    /// `api_key_secret`) into the config key errors name.
    pub fn configured(
        env: Option<&str>,
        secret: Option<&str>,
        secrets: Option<&Arc<dyn SecretStore>>,
        config_key: impl Fn(&str) -> String,
    ) -> Result<ApiKey, BoxError> {
        match (env, secret) {
            (Some(var), _) => Ok(ApiKey::Fixed(Secret::new(std::env::var(var).map_err(
                |_| {
                    format!(
                        "config key `{}`: environment variable {var} is not set",
                        config_key("api_key_env")
                    )
                },
            )?))),
            (None, Some(path)) => match secrets {
                Some(store) => Ok(ApiKey::Stored(store.clone(), path.to_owned())),
                None => Err(format!(
                    "config key `{}`: no secret store is configured",
                    config_key("api_key_secret")
                )
                .into()),
            },
            (None, None) => Ok(ApiKey::None),
        }
    }
}

/// How an API wants its key sent.
#[derive(Clone, Copy, Debug)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>` (OpenAI-compatible).
    Bearer,
    /// The key alone in this header (Anthropic's `x-api-key`).
    Named(&'static str),
}

/// A client of one provider's API.
pub struct ApiClient {
    client: reqwest::Client,
    max_retries: u32,
    api_key: ApiKey,
    key_header: KeyHeader,
}

impl ApiClient {
    /// A client whose requests time out after `timeout`, retried up to
    /// `max_retries` times, carrying `api_key` as `key_header` says.
    pub fn new(
        timeout: Duration,
        max_retries: u32,
        api_key: ApiKey,
        key_header: KeyHeader,
    ) -> Result<Self, BoxError> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            client,
            max_retries,
            api_key,
            key_header,
        })
    }

    /// Sends the request `build` makes until it succeeds, retrying 429, 5xx
    /// (including Anthropic's 529) and transport errors up to `max_retries`
    /// times; other statuses fail at once with the start of their body.
    /// The API key (read now, so a rotated one is used) goes on every
    /// request, and is scrubbed from every error.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let key = self.api_key.get().await?;
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
                        return Err(scrub(format!("HTTP {status}: {text}")));
                    }
                    retry_after.unwrap_or_else(|| BACKOFF.wait(attempt))
                }
                Err(e) => {
                    if attempt > self.max_retries {
                        return Err(scrub(format!("request failed: {e}")));
                    }
                    BACKOFF.wait(attempt)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The whole body, at most `max` bytes (read no further).
    pub async fn body(&self, response: reqwest::Response, max: usize) -> Result<Bytes, String> {
        let mut stream = response.bytes_stream();
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("reading the answer: {e}"))?;
            if body.len() + chunk.len() > max {
                return Err("the answer is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The whole body as JSON, at most [`MAX_BODY`] bytes.
    pub async fn json(&self, response: reqwest::Response) -> Result<Value, String> {
        let bytes = self.body(response, MAX_BODY).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))
    }
}
