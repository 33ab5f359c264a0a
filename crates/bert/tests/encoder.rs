//! The encoder on a small model with random weights: its vectors match a
//! plain f64 implementation of the model, packing texts together gives each
//! the vector it gets alone, and bad weights, configs and inputs are refused
//! with errors that name what is wrong. (Agreement with
//! sentence-transformers on the real model is tested in the memory service.)

use std::collections::HashMap;

use amaos_bert::{Bert, BertConfig, BertError, Sequence};
use candle_core::{Device, Tensor};

const HIDDEN: usize = 8;
const INTERMEDIATE: usize = 16;
const VOCAB: usize = 50;
const POSITIONS: usize = 16;

fn config() -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu"
    }))
    .unwrap()
}

/// Deterministic weights in [-0.5, 0.5).
struct Noise(u64);

impl Noise {
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

fn weights(prefix: &str) -> HashMap<String, Tensor> {
    let mut noise = Noise(42);
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize]| {
        w.insert(format!("{prefix}{name}"), noise.tensor(shape));
    };
    put("embeddings.word_embeddings.weight".into(), &[VOCAB, HIDDEN]);
    put(
        "embeddings.position_embeddings.weight".into(),
        &[POSITIONS, HIDDEN],
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, HIDDEN],
    );
    put("embeddings.LayerNorm.weight".into(), &[HIDDEN]);
    put("embeddings.LayerNorm.bias".into(), &[HIDDEN]);
    for l in 0..2 {
        for (part, out, inp) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", INTERMEDIATE, HIDDEN),
            ("output.dense", HIDDEN, INTERMEDIATE),
        ] {
            put(format!("encoder.layer.{l}.{part}.weight"), &[out, inp]);
            put(format!("encoder.layer.{l}.{part}.bias"), &[out]);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("encoder.layer.{l}.{norm}.weight"), &[HIDDEN]);
            put(format!("encoder.layer.{l}.{norm}.bias"), &[HIDDEN]);
        }
    }
    w
}

fn bytes(weights: &HashMap<String, Tensor>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(weights, &path).unwrap();
    std::fs::read(path).unwrap()
}

fn model() -> Bert {
    Bert::load(&bytes(&weights("")), &config()).unwrap()
}

fn texts() -> Vec<(Vec<u32>, Vec<u32>)> {
    (1..=7)
        .map(|len| {
            let ids = (0..len).map(|i| ((i * 7 + len) % VOCAB) as u32).collect();
            let types = (0..len).map(|i| u32::from(i >= len / 2)).collect();
            (ids, types)
        })
        .collect()
}

fn sequences(texts: &[(Vec<u32>, Vec<u32>)]) -> Vec<Sequence<'_>> {
    texts
        .iter()
        .map(|(ids, types)| Sequence { ids, types })
        .collect()
}

#[test]
fn a_text_gets_the_same_vector_alone_and_packed_with_others() {
    let model = model();
    let texts = texts();
    let packed = model.embed(&sequences(&texts)).unwrap();
    assert_eq!(packed.len(), texts.len());
    for (text, vector) in sequences(&texts).iter().zip(&packed) {
        assert_eq!(vector.len(), HIDDEN);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        let alone = model.embed(std::slice::from_ref(text)).unwrap();
        for (a, b) in alone[0].iter().zip(vector) {
            assert!((a - b).abs() < 1e-5, "{:?} vs {vector:?}", alone[0]);
        }
    }
    // Different texts get different vectors.
    assert!(
        packed[0]
            .iter()
            .zip(&packed[6])
            .any(|(a, b)| (a - b).abs() > 1e-3)
    );
    assert!(model.embed(&[]).unwrap().is_empty());
}

#[test]
fn weights_under_a_bert_prefix_load_the_same_model() {
    let plain = model();
    let prefixed = Bert::load(&bytes(&weights("bert.")), &config()).unwrap();
    let texts = texts();
    assert_eq!(
        plain.embed(&sequences(&texts)).unwrap(),
        prefixed.embed(&sequences(&texts)).unwrap()
    );
}

#[test]
fn missing_or_misshapen_weights_are_named() {
    let mut w = weights("");
    w.remove("encoder.layer.1.output.dense.bias");
    let error = Bert::load(&bytes(&w), &config()).err().unwrap();
    assert!(
        matches!(&error, BertError::Weight { name, .. } if name == "encoder.layer.1.output.dense.bias"),
        "{error}"
    );
    assert!(error.to_string().contains("missing"), "{error}");

    let mut w = weights("");
    w.insert(
        "encoder.layer.0.intermediate.dense.weight".into(),
        Noise(1).tensor(&[HIDDEN, INTERMEDIATE]),
    );
    let error = Bert::load(&bytes(&w), &config()).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("shape [8, 16], expected [16, 8]"),
        "{error}"
    );
}

#[test]
fn unsupported_configs_are_refused() {
    let w = bytes(&weights(""));
    let mut c = config();
    c.hidden_act = "relu".into();
    let error = Bert::load(&w, &c).err().unwrap();
    assert!(error.to_string().contains("hidden_act `relu`"), "{error}");
    let mut c = config();
    c.num_attention_heads = 3;
    let error = Bert::load(&w, &c).err().unwrap();
    assert!(matches!(error, BertError::Config(_)), "{error}");
}

#[test]
fn bad_inputs_are_refused_and_say_which_sequence() {
    let model = model();
    let ok: (&[u32], &[u32]) = (&[1, 2], &[0, 0]);
    let cases: [(&[u32], &[u32], &str); 5] = [
        (&[], &[], "sequence 1 has 0 tokens"),
        (
            &[1; POSITIONS + 1],
            &[0; POSITIONS + 1],
            "sequence 1 has 17 tokens",
        ),
        (&[1, 2], &[0], "but 1 token types"),
        (&[1, VOCAB as u32], &[0, 0], "token id 50 is outside"),
        (&[1, 2], &[0, 2], "token type 2 is outside"),
    ];
    for (ids, types, message) in cases {
        let batch = [
            Sequence {
                ids: ok.0,
                types: ok.1,
            },
            Sequence { ids, types },
        ];
        let error = model.embed(&batch).err().unwrap();
        assert!(matches!(error, BertError::Input(_)), "{error}");
        assert!(
            error.to_string().contains(message),
            "{error} lacks {message}"
        );
    }
}

/// The model written out the plain way, in f64, from the weights as stored
/// (`[out, in]` linear weights, separate q, k, v, exact GELU): an
/// independent check of the encoder's layouts, fusions and approximations.
fn reference(w: &HashMap<String, Tensor>, ids: &[u32], types: &[u32]) -> Vec<f64> {
    let get = |name: &str| -> Vec<f64> {
        w[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let norm = |x: &mut [f64], name: &str| {
        let (g, b) = (get(&format!("{name}.weight")), get(&format!("{name}.bias")));
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        for (i, v) in x.iter_mut().enumerate() {
            *v = (*v - mean) / (var + 1e-12).sqrt() * g[i] + b[i];
        }
    };
    // y = W x + b with W stored [out, in].
    let linear = |x: &[f64], name: &str| -> Vec<f64> {
        let (wt, b) = (get(&format!("{name}.weight")), get(&format!("{name}.bias")));
        let inputs = x.len();
        (0..b.len())
            .map(|o| b[o] + (0..inputs).map(|i| wt[o * inputs + i] * x[i]).sum::<f64>())
            .collect()
    };
    let erf = |x: f64| -> f64 {
        if x.abs() > 5.5 {
            return x.signum();
        }
        // Maclaurin series; plenty of terms for |x| <= 5.5 in f64.
        let (mut term, mut total) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    };
    let (word, pos, kind) = (
        get("embeddings.word_embeddings.weight"),
        get("embeddings.position_embeddings.weight"),
        get("embeddings.token_type_embeddings.weight"),
    );
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .zip(types)
        .enumerate()
        .map(|(p, (&id, &t))| {
            let mut row: Vec<f64> = (0..HIDDEN)
                .map(|i| {
                    word[id as usize * HIDDEN + i]
                        + pos[p * HIDDEN + i]
                        + kind[t as usize * HIDDEN + i]
                })
                .collect();
            norm(&mut row, "embeddings.LayerNorm");
            row
        })
        .collect();
    let (heads, d) = (2, HIDDEN / 2);
    for l in 0..2 {
        let at = |part: &str| format!("encoder.layer.{l}.{part}");
        let q: Vec<Vec<f64>> = x
            .iter()
            .map(|r| linear(r, &at("attention.self.query")))
            .collect();
        let k: Vec<Vec<f64>> = x
            .iter()
            .map(|r| linear(r, &at("attention.self.key")))
            .collect();
        let v: Vec<Vec<f64>> = x
            .iter()
            .map(|r| linear(r, &at("attention.self.value")))
            .collect();
        let mut context = vec![vec![0.0; HIDDEN]; x.len()];
        for h in 0..heads {
            let cols = h * d..(h + 1) * d;
            for i in 0..x.len() {
                let scores: Vec<f64> = (0..x.len())
                    .map(|j| {
                        cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for c in cols.clone() {
                    context[i][c] = (0..x.len()).map(|j| exps[j] / total * v[j][c]).sum();
                }
            }
        }
        for (row, ctx) in x.iter_mut().zip(&context) {
            let attended = linear(ctx, &at("attention.output.dense"));
            row.iter_mut().zip(&attended).for_each(|(r, a)| *r += a);
            norm(row, &at("attention.output.LayerNorm"));
            let up: Vec<f64> = linear(row, &at("intermediate.dense"))
                .into_iter()
                .map(|u| 0.5 * u * (1.0 + erf(u / std::f64::consts::SQRT_2)))
                .collect();
            let down = linear(&up, &at("output.dense"));
            row.iter_mut().zip(&down).for_each(|(r, o)| *r += o);
            norm(row, &at("output.LayerNorm"));
        }
    }
    let mut mean = [0.0; HIDDEN];
    for row in &x {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v / x.len() as f64);
    }
    let length = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    mean.iter().map(|m| m / length).collect()
}

#[test]
fn vectors_match_a_plain_f64_implementation_of_the_model() {
    let w = weights("");
    let model = Bert::load(&bytes(&w), &config()).unwrap();
    let texts = texts();
    let vectors = model.embed(&sequences(&texts)).unwrap();
    for ((ids, types), vector) in texts.iter().zip(&vectors) {
        let expected = reference(&w, ids, types);
        for (got, want) in vector.iter().zip(&expected) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-4,
                "{vector:?}\nvs {expected:?} for {ids:?}"
            );
        }
    }
}

#[test]
fn zero_sizes_and_oversized_batches_are_refused() {
    let w = bytes(&weights(""));
    let mut c = config();
    c.intermediate_size = 0;
    let error = Bert::load(&w, &c).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("intermediate_size must be at least 1"),
        "{error}"
    );
    let mut c = config();
    c.num_hidden_layers = 1_000_000;
    let error = Bert::load(&w, &c).err().unwrap();
    assert!(
        error.to_string().contains("num_hidden_layers 1000000"),
        "{error}"
    );

    let model = model();
    let ids = vec![1u32; POSITIONS];
    let types = vec![0u32; POSITIONS];
    let many = amaos_bert::MAX_BATCH_TOKENS / POSITIONS + 1;
    let batch = vec![
        Sequence {
            ids: &ids,
            types: &types
        };
        many
    ];
    let error = model.embed(&batch).err().unwrap();
    assert!(error.to_string().contains("at most 65536"), "{error}");
}
