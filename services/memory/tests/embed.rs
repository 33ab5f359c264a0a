//! Embedder tests: MiniLM against sentence-transformers' reference vectors,
//! batching, a missing model, and the OpenAI-compatible backend against an
//! HTTP server on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use amaos_memory::embed::{EmbedError, Embedder, EmbeddingsServer, MiniLm, OpenAiEmbedder, cosine};
use amaos_mesh::api_client::ApiKey;
use amaos_mesh::secrets::{FileSecrets, Secret, SecretStore};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::load_model;
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
struct Reference {
    items: Vec<ReferenceItem>,
}

#[derive(serde::Deserialize)]
struct ReferenceItem {
    text: String,
    embedding: Vec<f32>,
}

#[tokio::test]
async fn minilm_matches_sentence_transformers() {
    let reference: Reference = serde_json::from_str(include_str!("data/reference.json")).unwrap();
    assert!(reference.items.len() >= 5);
    let model = load_model(32);
    assert_eq!(model.dimension(), 384);
    let texts: Vec<String> = reference.items.iter().map(|i| i.text.clone()).collect();
    let vectors = model.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), texts.len());
    for (item, vector) in reference.items.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let similarity = cosine(&item.embedding, vector);
        assert!(
            similarity >= 0.999,
            "cosine {similarity} for `{}`",
            item.text
        );
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Different sentences stay apart: the reference is not trivially matched.
    assert!(cosine(&vectors[0], &vectors[2]) < 0.5);
}

#[tokio::test]
async fn batching_and_padding_do_not_change_vectors() {
    let texts: Vec<String> = (0..37)
        .map(|i| {
            format!(
                "sentence number {i} {}",
                "with some padding words ".repeat(i % 7)
            )
        })
        .collect();
    let batched = load_model(32).embed(&texts).await.unwrap();
    let single = load_model(1);
    assert_eq!(batched.len(), texts.len());
    for (text, vector) in texts.iter().zip(&batched) {
        let alone = single.embed(std::slice::from_ref(text)).await.unwrap();
        let similarity = cosine(&alone[0], vector);
        assert!(similarity > 0.9999, "cosine {similarity} for `{text}`");
    }
}

#[test]
fn missing_model_names_the_fetch_script() {
    let dir = tempfile::tempdir().unwrap();
    let error = match MiniLm::load(dir.path(), 32) {
        Ok(_) => panic!("loaded a model from an empty directory"),
        Err(e) => e,
    };
    assert!(matches!(error, EmbedError::ModelMissing(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("scripts/fetch-embedding-model"),
        "{message}"
    );
    assert!(message.contains("AMAOS_EMBED_MODEL_DIR"), "{message}");
}

/// One request the fake server saw: its `Authorization` header and JSON body.
type SeenRequest = (Option<String>, Value);

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

/// A small OpenAI-compatible server: the vector of a text is
/// `[len, first byte, 1]`, sent back in reverse order to check reordering.
async fn embeddings(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.requests.lock().unwrap().push((auth, body.clone()));
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    if inputs.iter().any(|i| i.as_str() == Some("fail")) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "boom"})),
        );
    }
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let text = input.as_str().unwrap();
            let dims = if text == "short" { 2 } else { 3 };
            let vector: Vec<f32> =
                [text.len() as f32, f32::from(text.as_bytes()[0]), 1.0][..dims].to_vec();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    data.reverse();
    (
        StatusCode::OK,
        Json(json!({"object": "list", "data": data, "model": body["model"]})),
    )
}

async fn start_server() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test]
async fn openai_backend_batches_orders_and_authenticates() {
    let (url, seen) = start_server().await;
    let embedder = OpenAiEmbedder::new(
        server(&url, ApiKey::Fixed(Secret::new("secret"))),
        "test-model",
        3,
        2,
    )
    .unwrap();
    assert_eq!(embedder.dimension(), 3);
    let texts: Vec<String> = ["a", "bb", "ccc", "dddd", "eeeee"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let vectors = embedder.embed(&texts).await.unwrap();
    let expected: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| vec![t.len() as f32, f32::from(t.as_bytes()[0]), 1.0])
        .collect();
    assert_eq!(vectors, expected);
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "5 texts in batches of 2");
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some("Bearer secret"));
        assert_eq!(body["model"], "test-model");
    }
    assert_eq!(requests[0].1["input"], json!(["a", "bb"]));
    assert_eq!(requests[2].1["input"], json!(["eeeee"]));
}

#[tokio::test]
async fn openai_backend_rejects_errors_and_wrong_dimensions() {
    let (url, _) = start_server().await;
    let embedder = OpenAiEmbedder::new(server(&url, ApiKey::None), "m", 3, 8).unwrap();
    let error = embedder.embed(&["fail".to_string()]).await.unwrap_err();
    assert!(
        matches!(&error, EmbedError::Server(m) if m.contains("500")),
        "{error:?}"
    );
    let error = embedder
        .embed(&["fine".to_string(), "short".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(error, EmbedError::BadResponse(_)), "{error:?}");

    // Nobody listening: a server error, not a hang.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let embedder = OpenAiEmbedder::new(
        server(&format!("http://{addr}/v1"), ApiKey::None),
        "m",
        3,
        8,
    )
    .unwrap();
    let error = embedder.embed(&["x".to_string()]).await.unwrap_err();
    assert!(matches!(error, EmbedError::Server(_)), "{error:?}");

    assert!(OpenAiEmbedder::new(server("ftp://example.invalid", ApiKey::None), "m", 3, 8).is_err());
    // https is a URL it takes (nothing is sent until a text is embedded).
    assert!(
        OpenAiEmbedder::new(
            server("https://example.invalid/v1", ApiKey::None),
            "m",
            3,
            8
        )
        .is_ok()
    );
}

#[tokio::test]
async fn openai_backend_sends_the_api_key_from_the_secret_store() {
    let (url, seen) = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, r#"{"llm/embeddings": "sk-embed-1"}"#).unwrap();
    let store: Arc<dyn SecretStore> = Arc::new(FileSecrets::new(file));
    let api_key = ApiKey::configured(None, Some("llm/embeddings"), Some(&store), |f| {
        format!("memory.embed_{f}")
    })
    .unwrap();
    let embedder = OpenAiEmbedder::new(server(&url, api_key), "m", 3, 8).unwrap();
    embedder.embed(&["a".to_string()]).await.unwrap();
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0.as_deref(), Some("Bearer sk-embed-1"));
    // Without a store, a key kept there is a config error naming the key.
    let error = ApiKey::configured(None, Some("llm/embeddings"), None, |f| {
        format!("memory.embed_{f}")
    })
    .err()
    .unwrap();
    assert!(
        error.to_string().contains("memory.embed_api_key_secret"),
        "{error}"
    );
}

/// The server at `base_url`, with `api_key`, no retries and a 5 s timeout.
fn server(base_url: &str, api_key: ApiKey) -> EmbeddingsServer<'_> {
    EmbeddingsServer {
        base_url,
        api_key,
        timeout: Duration::from_secs(5),
        max_retries: 0,
    }
}
