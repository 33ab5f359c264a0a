//! A BERT encoder (all-MiniLM-L6-v2's architecture) for the CPU, built for
//! sentence embeddings: mean-pooled, L2-normalised vectors.
//!
//! The matrix products go through candle (`Tensor::matmul`, gemm with its
//! AVX-512 kernels, on the rayon pool); everything between them is done
//! here, in fused passes over plain slices:
//!
//! - Sequences are *packed*, not padded: the tokens of a batch's texts sit
//!   end to end, the dense layers run over exactly the real tokens, and
//!   attention runs per text over its own tokens. A batch of one long and
//!   many short texts costs what its tokens cost, not `texts × longest`.
//! - Query, key and value projections are one product with a fused weight;
//!   the attention scale is folded into the query weights at load time.
//! - Bias, residual and layer norm are one pass; bias and GELU are one pass;
//!   `exp` and `erf` are branch-free polynomials the compiler vectorises.
//!
//! Nothing here calls candle's element-wise operators: their worker pool
//! spins between calls and, on a small machine, competes with gemm's
//! threads for the same cores.
//!
//! # Layout
//!
//! - `kernels`: sums, layer norm, `exp`, `erf` and GELU over plain slices.

use std::collections::HashMap;

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

mod kernels;

pub use kernels::{erf, exp};
use kernels::{gelu, layer_norm, sum};

/// What can go wrong loading or running the encoder.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// `config.json` describes a model this encoder does not run.
    #[error("config.json: {0}")]
    Config(String),
    /// A weight is missing or has the wrong shape.
    #[error("weight `{name}`: {message}")]
    Weight {
        /// The weight's name in the safetensors file.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// An input the model cannot take.
    #[error("input: {0}")]
    Input(String),
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The part of a Hugging Face BERT `config.json` the encoder reads.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every token's hidden state.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    pub type_vocab_size: usize,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only `gelu` (the exact, erf
    /// form) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Only `absolute` is supported.
    #[serde(default = "default_position")]
    pub position_embedding_type: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

fn default_position() -> String {
    "absolute".into()
}

/// One text's tokens.
#[derive(Clone, Copy, Debug)]
pub struct Sequence<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Token type ids, one per token.
    pub types: &'a [u32],
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// `[hidden, 3 * hidden]`: query (pre-scaled), key and value side by side.
    qkv: Tensor,
    qkv_bias: Vec<f32>,
    /// `[hidden, hidden]`.
    out: Tensor,
    out_bias: Vec<f32>,
    attention_norm: Norm,
    /// `[hidden, intermediate]`.
    up: Tensor,
    up_bias: Vec<f32>,
    /// `[intermediate, hidden]`.
    down: Tensor,
    down_bias: Vec<f32>,
    output_norm: Norm,
}

/// A loaded encoder.
pub struct Bert {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    vocab: usize,
    types: usize,
    max_positions: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

/// Most tokens one [`Bert::embed`] call takes (its buffers grow with them).
pub const MAX_BATCH_TOKENS: usize = 1 << 16;

/// Most transformer layers a config may ask for.
const MAX_LAYERS: usize = 128;

/// Rows handed to one rayon task in the row-wise passes.
const ROWS_PER_TASK: usize = 16;

struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    /// The named weight as a flat vector, checked against `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, BertError> {
        let full = format!("{}{name}", self.prefix);
        let error = |message: String| BertError::Weight {
            name: full.clone(),
            message,
        };
        let tensor = self
            .tensors
            .remove(&full)
            .ok_or_else(|| error("missing".into()))?;
        if tensor.dims() != shape {
            return Err(error(format!(
                "shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    fn norm(&mut self, name: &str, hidden: usize) -> Result<Norm, BertError> {
        Ok(Norm {
            gamma: self.take(&format!("{name}.weight"), &[hidden])?,
            beta: self.take(&format!("{name}.bias"), &[hidden])?,
        })
    }

    /// A linear layer's `[out, in]` weight, transposed to `[in, out]` and
    /// multiplied by `scale`, and its bias times `scale`.
    fn linear(
        &mut self,
        name: &str,
        inputs: usize,
        outputs: usize,
        scale: f32,
    ) -> Result<(Vec<f32>, Vec<f32>), BertError> {
        let weight = self.take(&format!("{name}.weight"), &[outputs, inputs])?;
        let mut bias = self.take(&format!("{name}.bias"), &[outputs])?;
        let mut transposed = vec![0.0; inputs * outputs];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, w) in row.iter().enumerate() {
                transposed[i * outputs + o] = w * scale;
            }
        }
        bias.iter_mut().for_each(|b| *b *= scale);
        Ok((transposed, bias))
    }
}

fn matrix(data: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor, BertError> {
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

impl Bert {
    /// Loads the encoder from a safetensors file's bytes (names with or
    /// without a `bert.` prefix).
    pub fn load(safetensors: &[u8], config: &BertConfig) -> Result<Self, BertError> {
        if config.hidden_act != "gelu" {
            return Err(BertError::Config(format!(
                "hidden_act `{}` is not supported (only `gelu`)",
                config.hidden_act
            )));
        }
        if config.position_embedding_type != "absolute" {
            return Err(BertError::Config(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                config.position_embedding_type
            )));
        }
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        for (key, value) in [
            ("vocab_size", config.vocab_size),
            ("intermediate_size", config.intermediate_size),
            ("max_position_embeddings", config.max_position_embeddings),
            ("type_vocab_size", config.type_vocab_size),
            ("num_hidden_layers", config.num_hidden_layers),
        ] {
            if value == 0 {
                return Err(BertError::Config(format!("{key} must be at least 1")));
            }
        }
        if config.num_hidden_layers > MAX_LAYERS {
            return Err(BertError::Config(format!(
                "num_hidden_layers {} is more than {MAX_LAYERS}",
                config.num_hidden_layers
            )));
        }
        if hidden == 0 || heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(BertError::Config(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let tensors = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu)?;
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let mut weights = Weights { tensors, prefix };
        let intermediate = config.intermediate_size;
        let word = weights.take(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, hidden],
        )?;
        let position = weights.take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, hidden],
        )?;
        let token_type = weights.take(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, hidden],
        )?;
        let embedding_norm = weights.norm("embeddings.LayerNorm", hidden)?;
        // Scores are q·k / sqrt(head width); scaling q's weights and bias
        // once does the division for every token.
        let scale = 1.0 / ((hidden / heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let at = |part: &str| format!("encoder.layer.{l}.{part}");
            let (q, qb) = weights.linear(&at("attention.self.query"), hidden, hidden, scale)?;
            let (k, kb) = weights.linear(&at("attention.self.key"), hidden, hidden, 1.0)?;
            let (v, vb) = weights.linear(&at("attention.self.value"), hidden, hidden, 1.0)?;
            let mut qkv = Vec::with_capacity(3 * hidden * hidden);
            for i in 0..hidden {
                let row = i * hidden..(i + 1) * hidden;
                qkv.extend_from_slice(&q[row.clone()]);
                qkv.extend_from_slice(&k[row.clone()]);
                qkv.extend_from_slice(&v[row]);
            }
            let qkv_bias = [qb, kb, vb].concat();
            let (out, out_bias) =
                weights.linear(&at("attention.output.dense"), hidden, hidden, 1.0)?;
            let attention_norm = weights.norm(&at("attention.output.LayerNorm"), hidden)?;
            let (up, up_bias) =
                weights.linear(&at("intermediate.dense"), hidden, intermediate, 1.0)?;
            let (down, down_bias) =
                weights.linear(&at("output.dense"), intermediate, hidden, 1.0)?;
            let output_norm = weights.norm(&at("output.LayerNorm"), hidden)?;
            layers.push(Layer {
                qkv: matrix(qkv, hidden, 3 * hidden)?,
                qkv_bias,
                out: matrix(out, hidden, hidden)?,
                out_bias,
                attention_norm,
                up: matrix(up, hidden, intermediate)?,
                up_bias,
                down: matrix(down, intermediate, hidden)?,
                down_bias,
                output_norm,
            });
        }
        Ok(Self {
            hidden,
            heads,
            intermediate,
            vocab: config.vocab_size,
            types: config.type_vocab_size,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
        })
    }

    /// Width of the vectors [`Bert::embed`] returns.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Longest sequence the model takes, in tokens.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// One mean-pooled, L2-normalised vector per sequence, in order.
    pub fn embed(&self, sequences: &[Sequence<'_>]) -> Result<Vec<Vec<f32>>, BertError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let spans = self.spans(sequences)?;
        let tokens = spans.last().map_or(0, |s| s.end);
        let mut x = self.embeddings(sequences, tokens)?;
        for layer in &self.layers {
            x = self.layer(layer, x, &spans)?;
        }
        let h = self.hidden;
        with_slice(&x, |x| {
            spans
                .iter()
                .map(|span| {
                    let mut mean = vec![0.0f32; h];
                    for row in x[span.start * h..span.end * h].chunks_exact(h) {
                        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                    }
                    let count = (span.end - span.start) as f32;
                    mean.iter_mut().for_each(|m| *m /= count);
                    let norm = sum(&mean, |m| m * m).sqrt().max(1e-12);
                    mean.iter_mut().for_each(|m| *m /= norm);
                    mean
                })
                .collect()
        })
    }

    /// Where each sequence's tokens sit in the packed batch; checks them.
    fn spans(&self, sequences: &[Sequence<'_>]) -> Result<Vec<std::ops::Range<usize>>, BertError> {
        let mut spans = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for (n, sequence) in sequences.iter().enumerate() {
            let len = sequence.ids.len();
            if len == 0 || len > self.max_positions {
                return Err(BertError::Input(format!(
                    "sequence {n} has {len} tokens; the model takes 1 to {}",
                    self.max_positions
                )));
            }
            if sequence.types.len() != len {
                return Err(BertError::Input(format!(
                    "sequence {n} has {len} tokens but {} token types",
                    sequence.types.len()
                )));
            }
            if let Some(id) = sequence.ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(BertError::Input(format!(
                    "sequence {n}: token id {id} is outside the vocabulary of {}",
                    self.vocab
                )));
            }
            if let Some(t) = sequence.types.iter().find(|&&t| t as usize >= self.types) {
                return Err(BertError::Input(format!(
                    "sequence {n}: token type {t} is outside the {} types",
                    self.types
                )));
            }
            spans.push(start..start + len);
            start += len;
        }
        if start > MAX_BATCH_TOKENS {
            return Err(BertError::Input(format!(
                "the batch has {start} tokens; at most {MAX_BATCH_TOKENS} go in one call"
            )));
        }
        Ok(spans)
    }

    /// Word + position + type embeddings, layer-normed: `[tokens, hidden]`.
    fn embeddings(&self, sequences: &[Sequence<'_>], tokens: usize) -> Result<Tensor, BertError> {
        let h = self.hidden;
        // (id, position, type) of every packed token.
        let mut index = Vec::with_capacity(tokens);
        for sequence in sequences {
            for (p, (id, t)) in sequence.ids.iter().zip(sequence.types).enumerate() {
                index.push((*id as usize, p, *t as usize));
            }
        }
        let mut x = vec![0.0f32; tokens * h];
        x.par_chunks_mut(h)
            .zip(index.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(row, &(id, p, t))| {
                let word = &self.word[id * h..(id + 1) * h];
                let position = &self.position[p * h..(p + 1) * h];
                let kind = &self.token_type[t * h..(t + 1) * h];
                for (i, out) in row.iter_mut().enumerate() {
                    *out = word[i] + position[i] + kind[i];
                }
                layer_norm(row, &self.embedding_norm, self.eps);
            });
        matrix(x, tokens, h)
    }

    fn layer(
        &self,
        layer: &Layer,
        x: Tensor,
        spans: &[std::ops::Range<usize>],
    ) -> Result<Tensor, BertError> {
        let (h, tokens) = (self.hidden, x.dims()[0]);
        let qkv = x.matmul(&layer.qkv)?;
        let context = with_slice(&qkv, |qkv| self.attention(qkv, &layer.qkv_bias, spans))?;
        let attended = matrix(context, tokens, h)?.matmul(&layer.out)?;
        let x = self.add_and_norm(&attended, &layer.out_bias, &x, &layer.attention_norm)?;
        let up = x.matmul(&layer.up)?;
        let i = self.intermediate;
        let activated = with_slice(&up, |up| {
            let mut out = vec![0.0f32; up.len()];
            out.par_chunks_mut(i)
                .zip(up.par_chunks(i))
                .with_min_len(ROWS_PER_TASK)
                .for_each(|(out, up)| {
                    for ((o, u), b) in out.iter_mut().zip(up).zip(&layer.up_bias) {
                        *o = gelu(u + b);
                    }
                });
            out
        })?;
        let down = matrix(activated, tokens, i)?.matmul(&layer.down)?;
        self.add_and_norm(&down, &layer.down_bias, &x, &layer.output_norm)
    }

    /// `layer_norm(projected + bias + residual)`, row by row.
    fn add_and_norm(
        &self,
        projected: &Tensor,
        bias: &[f32],
        residual: &Tensor,
        norm: &Norm,
    ) -> Result<Tensor, BertError> {
        let h = self.hidden;
        let out = with_slice(projected, |projected| {
            with_slice(residual, |residual| {
                let mut out = vec![0.0f32; projected.len()];
                out.par_chunks_mut(h)
                    .zip(projected.par_chunks(h).zip(residual.par_chunks(h)))
                    .with_min_len(ROWS_PER_TASK)
                    .for_each(|(out, (p, r))| {
                        for (((o, p), r), b) in out.iter_mut().zip(p).zip(r).zip(bias) {
                            *o = p + r + b;
                        }
                        layer_norm(out, norm, self.eps);
                    });
                out
            })
        })??;
        matrix(out, projected.dims()[0], h)
    }

    /// Multi-head self-attention of every sequence over its own tokens:
    /// `qkv` is `[tokens, 3 * hidden]` before its bias; returns the context,
    /// `[tokens, hidden]`.
    fn attention(&self, qkv: &[f32], bias: &[f32], spans: &[std::ops::Range<usize>]) -> Vec<f32> {
        let h = self.hidden;
        let d = h / self.heads;
        let tokens = qkv.len() / (3 * h);
        let mut context = vec![0.0f32; tokens * h];
        let mut parts = Vec::with_capacity(spans.len());
        let mut rest = context.as_mut_slice();
        for span in spans {
            let (part, tail) = rest.split_at_mut((span.end - span.start) * h);
            parts.push((part, span.clone()));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(out, span)| {
            let len = span.end - span.start;
            let rows = &qkv[span.start * 3 * h..span.end * 3 * h];
            // Per head: queries [len, d], keys transposed [d, len], values [len, d].
            let mut q = vec![0.0f32; len * d];
            let mut kt = vec![0.0f32; d * len];
            let mut v = vec![0.0f32; len * d];
            let mut scores = vec![0.0f32; len];
            for head in 0..self.heads {
                let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
                for (t, row) in rows.chunks_exact(3 * h).enumerate() {
                    for c in 0..d {
                        q[t * d + c] = row[qo + c] + bias[qo + c];
                        kt[c * len + t] = row[ko + c] + bias[ko + c];
                        v[t * d + c] = row[vo + c] + bias[vo + c];
                    }
                }
                for t in 0..len {
                    scores.iter_mut().for_each(|s| *s = 0.0);
                    for (c, qc) in q[t * d..(t + 1) * d].iter().enumerate() {
                        let keys = &kt[c * len..(c + 1) * len];
                        scores.iter_mut().zip(keys).for_each(|(s, k)| *s += qc * k);
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    scores.iter_mut().for_each(|s| *s = exp(*s - max));
                    let total = sum(&scores, |s| s);
                    let target = &mut out[t * h + head * d..t * h + (head + 1) * d];
                    target.iter_mut().for_each(|o| *o = 0.0);
                    for (s, value) in scores.iter().zip(v.chunks_exact(d)) {
                        let p = s / total;
                        target.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
                    }
                }
            }
        });
        context
    }
}

/// Runs `f` over a contiguous f32 CPU tensor's data.
fn with_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, BertError> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(BertError::Input("tensor is not on the CPU".into()));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| BertError::Input("tensor is not contiguous".into()))?;
    Ok(f(&data[start..end]))
}
