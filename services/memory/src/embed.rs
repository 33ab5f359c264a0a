//! Embeddings: the [`Embedder`] trait and its two backends.
//!
//! - [`MiniLm`]: all-MiniLM-L6-v2 on the CPU ([`amaos_bert`]: candle's
//!   matrix products, packed sequences), loaded from `model.safetensors`,
//!   `tokenizer.json` and `config.json` (see `scripts/fetch-embedding-model`).
//!   Batched; mean pooling over each text's tokens, then L2 normalisation, as
//!   sentence-transformers does.
//! - [`OpenAiEmbedder`]: any server speaking the OpenAI `POST /embeddings`
//!   API (a local inference server, or OpenAI itself), through the mesh's
//!   one API client: `https://`, the API key, retries.
//!
//! A missing model is an error naming the fetch script; nothing silently
//! falls back to another embedder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amaos_bert::{Bert, BertConfig, Sequence};
use amaos_mesh::api_client::{ApiClient, ApiKey, KeyHeader};
use futures::future::BoxFuture;
use tokenizers::{Tokenizer, TruncationParams};

/// Files the MiniLM embedder needs in its model directory.
pub const MODEL_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// The model [`MiniLm`] runs.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Whether every file of [`MODEL_FILES`] is in `dir`, without loading
/// them: [`EmbedError::ModelMissing`] names the first missing one and how
/// to fetch it.
pub fn check_model(dir: &Path) -> Result<(), EmbedError> {
    for file in MODEL_FILES {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(EmbedError::ModelMissing(path));
        }
    }
    Ok(())
}

/// Tokens per text the model sees (sentence-transformers' `max_seq_length`
/// for all-MiniLM-L6-v2); longer texts are truncated.
pub const MAX_TOKENS: usize = 256;

/// Largest response an embeddings server may send, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What can go wrong while embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model files are not where they should be.
    #[error(
        "the embedding model {MODEL_NAME} is not there: {0} is missing; fetch it with \
         scripts/fetch-embedding-model (or point AMAOS_EMBED_MODEL_DIR at a directory \
         holding model.safetensors, tokenizer.json and config.json)"
    )]
    ModelMissing(PathBuf),
    /// The model files exist but could not be loaded.
    #[error("embedding model in {dir}: {message}")]
    ModelInvalid {
        /// The model directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Tokenising or running the model failed.
    #[error("embedding failed: {0}")]
    Inference(String),
    /// The embeddings server could not be reached or answered with an error.
    #[error("embeddings server: {0}")]
    Server(String),
    /// The embeddings server answered with something unusable.
    #[error("embeddings server sent a bad response: {0}")]
    BadResponse(String),
}

/// Turns texts into fixed-size vectors.
pub trait Embedder: Send + Sync {
    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String])
    -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>>;
}

/// Cosine similarity of two vectors of the same length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

/// all-MiniLM-L6-v2 on the CPU.
#[derive(Clone)]
pub struct MiniLm {
    inner: Arc<MiniLmInner>,
}

struct MiniLmInner {
    model: Bert,
    tokenizer: Tokenizer,
    batch_size: usize,
}

impl MiniLm {
    /// Loads the model from `dir`; `batch_size` texts go through the model at once.
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self, EmbedError> {
        check_model(dir)?;
        let invalid = |message: String| EmbedError::ModelInvalid {
            dir: dir.to_path_buf(),
            message,
        };
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| invalid(format!("config.json: {e}")))?;
        let config: BertConfig =
            serde_json::from_str(&config_text).map_err(|e| invalid(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        // The wheel's tokenizer pads every text to 128 tokens; the encoder
        // packs texts end to end instead, so nothing is padded.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| invalid(format!("model.safetensors: {e}")))?;
        let model = Bert::load(&weights, &config).map_err(|e| invalid(e.to_string()))?;
        if MAX_TOKENS > model.max_positions() {
            return Err(invalid(format!(
                "the model takes {} tokens, fewer than the {MAX_TOKENS} texts are cut to",
                model.max_positions()
            )));
        }
        Ok(Self {
            inner: Arc::new(MiniLmInner {
                model,
                tokenizer,
                batch_size: batch_size.max(1),
            }),
        })
    }

    /// Embeds on the calling thread (the async [`Embedder::embed`] runs this
    /// on the blocking pool).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.inner.batch_size) {
            out.extend(self.inner.embed_batch(chunk)?);
        }
        Ok(out)
    }
}

impl MiniLmInner {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect(), true)
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        let sequences: Vec<Sequence<'_>> = encodings
            .iter()
            .map(|e| Sequence {
                ids: e.get_ids(),
                types: e.get_type_ids(),
            })
            .collect();
        self.model
            .embed(&sequences)
            .map_err(|e| EmbedError::Inference(e.to_string()))
    }
}

impl Embedder for MiniLm {
    fn dimension(&self) -> usize {
        self.inner.model.hidden_size()
    }

    fn name(&self) -> &str {
        "all-MiniLM-L6-v2"
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        let this = self.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
                .await
                .map_err(|e| EmbedError::Inference(format!("embedding task failed: {e}")))?
        })
    }
}

/// An OpenAI-compatible embeddings server, through the mesh's API client
/// (`http://` or `https://`, the API key on every request, retries).
pub struct OpenAiEmbedder {
    client: ApiClient,
    endpoint: String,
    model: String,
    dimension: usize,
    batch_size: usize,
}

#[derive(serde::Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(serde::Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingsDatum>,
}

#[derive(serde::Deserialize)]
struct EmbeddingsDatum {
    index: usize,
    embedding: Vec<f32>,
}

/// How an [`OpenAiEmbedder`] reaches its server.
pub struct EmbeddingsServer<'a> {
    /// The base URL; requests go to `<base_url>/embeddings` (for example
    /// `http://127.0.0.1:8080/v1`).
    pub base_url: &'a str,
    /// The API key, sent as `Authorization: Bearer`.
    pub api_key: ApiKey,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Retries on 429, 5xx and transport errors.
    pub max_retries: u32,
}

impl OpenAiEmbedder {
    /// An embedder of `model` on `server`, expecting `dimension`-long
    /// vectors, `batch_size` texts a call.
    pub fn new(
        server: EmbeddingsServer<'_>,
        model: impl Into<String>,
        dimension: usize,
        batch_size: usize,
    ) -> Result<Self, EmbedError> {
        let endpoint = format!("{}/embeddings", server.base_url.trim_end_matches('/'));
        let parsed = url::Url::parse(&endpoint)
            .map_err(|e| EmbedError::Server(format!("bad url `{endpoint}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EmbedError::Server(format!(
                "bad url `{endpoint}`: only http:// and https:// are supported"
            )));
        }
        let client = ApiClient::new(
            server.timeout,
            server.max_retries,
            server.api_key,
            KeyHeader::Bearer,
        )
        .map_err(|e| EmbedError::Server(e.to_string()))?;
        Ok(Self {
            client,
            endpoint,
            model: model.into(),
            dimension,
            batch_size: batch_size.max(1),
        })
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let request = EmbeddingsRequest {
            model: &self.model,
            input: texts,
        };
        let response = self
            .client
            .send(|client| client.post(&self.endpoint).json(&request))
            .await
            .map_err(EmbedError::Server)?;
        let bytes = self
            .client
            .body(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(EmbedError::Server)?;
        let parsed: EmbeddingsResponse =
            serde_json::from_slice(&bytes).map_err(|e| EmbedError::BadResponse(e.to_string()))?;
        if parsed.data.len() != texts.len() {
            return Err(EmbedError::BadResponse(format!(
                "{} vectors for {} texts",
                parsed.data.len(),
                texts.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for datum in parsed.data {
            if datum.embedding.len() != self.dimension {
                return Err(EmbedError::BadResponse(format!(
                    "vector of length {}, expected {}",
                    datum.embedding.len(),
                    self.dimension
                )));
            }
            let slot = out.get_mut(datum.index).ok_or_else(|| {
                EmbedError::BadResponse(format!("index {} out of range", datum.index))
            })?;
            if slot.replace(datum.embedding).is_some() {
                return Err(EmbedError::BadResponse(format!(
                    "index {} sent twice",
                    datum.index
                )));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Embedder for OpenAiEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn name(&self) -> &str {
        &self.model
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(self.batch_size) {
                out.extend(self.embed_batch(chunk).await?);
            }
            Ok(out)
        })
    }
}
