//! The encoder on a small model with random weights: packing texts together
//! gives each the vector it gets alone, and bad weights, configs and inputs
//! are refused with errors that name what is wrong. (Agreement with
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
