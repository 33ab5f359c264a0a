//! The OpenAI-compatible provider against an HTTP server started in the test
//! that speaks the Chat Completions wire format with recorded answers:
//! tool calls, streaming, 429 with Retry-After, 500, malformed JSON, a stream
//! cut mid-way, and a fallback chain.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amaos_agents::model::{ChatMessage, ChatModel, ModelSet, Reply, RunModels, ToolSpec};
use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_teams::AgentSpec;
use serde_json::{Value, json};

/// A recorded answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Fake {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn serve(fake: Fake) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let fake = fake.clone();
            async move {
                fake.requests
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                let (status, headers, body) = fake.answers.lock().unwrap().pop_front().unwrap_or((
                    500,
                    vec![],
                    "no more answers".into(),
                ));
                let mut response = axum::response::Response::builder().status(status);
                for (k, v) in headers {
                    response = response.header(k, v);
                }
                response.body(axum::body::Body::from(body)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/v1")
}

fn config(base_url: &str, stream: bool, retries: u32, fallbacks: &[&str]) -> ModelConfig {
    ModelConfig {
        provider: ModelProvider::Openai,
        base_url: base_url.into(),
        model: "test-model".into(),
        api_key_env: None,
        timeout: Duration::from_secs(5),
        max_retries: retries,
        fallbacks: fallbacks.iter().map(|f| f.to_string()).collect(),
        prompt_price_per_1k: 1.0,
        completion_price_per_1k: 2.0,
        stream,
        max_tokens: Some(256),
    }
}

fn agent(model: &str) -> AgentSpec {
    serde_yaml::from_str(&format!(
        "name: a\nrole: r\ngoal: g\nmodel: {model}\ntools: [file_write]\n"
    ))
    .unwrap()
}

fn models(entries: Vec<(&str, ModelConfig)>) -> RunModels {
    let map: BTreeMap<String, ModelConfig> = entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    RunModels::new("in", Arc::new(ModelSet::new(&map).unwrap()), None)
}

fn ok(body: Value) -> Answer {
    (
        200,
        vec![("content-type", "application/json".into())],
        body.to_string(),
    )
}

fn tool() -> ToolSpec {
    ToolSpec {
        name: "file_write".into(),
        description: "write".into(),
        parameters: json!({"type": "object"}),
    }
}

#[tokio::test]
async fn tool_calls_usage_and_the_conversation_round_trip() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    fake.answers.lock().unwrap().extend([ok(json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "file_write", "arguments": "{\"path\":\"a.md\"}"}}
        ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20}
    }))]);
    let m = models(vec![("local", config(&url, false, 0, &[]))]);
    let messages = vec![ChatMessage::text("user", "hello")];
    let c = m
        .complete(&agent("local"), &messages, &[tool()])
        .await
        .unwrap();
    let Reply::ToolCalls(calls) = c.reply else {
        panic!("tool calls")
    };
    assert_eq!(calls[0].id, "call_1");
    assert_eq!(calls[0].args["path"], "a.md");
    assert_eq!(
        (c.usage.prompt_tokens, c.usage.completion_tokens),
        (100, 20)
    );
    assert!((c.cost_usd - 0.14).abs() < 1e-9, "{}", c.cost_usd);
    assert_eq!(c.model, "local");
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "test-model");
    assert_eq!(sent["tools"][0]["function"]["name"], "file_write");
    assert_eq!(sent["max_tokens"], 256);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_500_exhausts_retries() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    fake.answers.lock().unwrap().extend([
        (429, vec![("retry-after", "0".into())], "slow down".into()),
        ok(json!({"choices": [{"message": {"content": "done"}}]})),
        (500, vec![], "boom".into()),
        (500, vec![], "boom".into()),
    ]);
    let m = models(vec![("local", config(&url, false, 1, &[]))]);
    let c = m
        .complete(&agent("local"), &[ChatMessage::text("user", "x")], &[])
        .await
        .unwrap();
    assert_eq!(c.reply, Reply::Text("done".into()));
    assert_eq!(fake.requests.lock().unwrap().len(), 2);
    let error = m
        .complete(&agent("local"), &[ChatMessage::text("user", "x")], &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("HTTP 500"), "{error}");
    assert_eq!(
        fake.requests.lock().unwrap().len(),
        4,
        "one try plus one retry"
    );
}

#[tokio::test]
async fn malformed_json_is_an_error_and_a_fallback_answers() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    fake.answers.lock().unwrap().extend([
        (200, vec![], "{not json".into()),
        ok(json!({"choices": [{"message": {"content": "from the fallback"}}]})),
    ]);
    let m = models(vec![
        ("primary", config(&url, false, 0, &["backup"])),
        ("backup", config(&url, false, 0, &[])),
    ]);
    let c = m
        .complete(&agent("primary"), &[ChatMessage::text("user", "x")], &[])
        .await
        .unwrap();
    assert_eq!(c.reply, Reply::Text("from the fallback".into()));
    assert_eq!(c.model, "backup");
}

fn sse(events: &[Value], done: bool) -> Answer {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    (
        200,
        vec![("content-type", "text/event-stream".into())],
        body,
    )
}

#[tokio::test]
async fn streaming_assembles_text_tool_calls_and_usage_and_a_cut_stream_fails() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    fake.answers.lock().unwrap().extend([
        sse(
            &[
                json!({"choices": [{"delta": {"content": "Hel"}}]}),
                json!({"choices": [{"delta": {"content": "lo"}}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
            ],
            true,
        ),
        sse(
            &[
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c9", "function": {"name": "file_write", "arguments": "{\"pa"}}]}}]}),
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "th\":\"b.md\"}"}}]}}]}),
            ],
            true,
        ),
        sse(&[json!({"choices": [{"delta": {"content": "cut"}}]})], false),
    ]);
    let m = models(vec![("local", config(&url, true, 0, &[]))]);
    let messages = [ChatMessage::text("user", "x")];
    let c = m.complete(&agent("local"), &messages, &[]).await.unwrap();
    assert_eq!(c.reply, Reply::Text("Hello".into()));
    assert_eq!(c.usage.prompt_tokens, 7);
    assert_eq!(fake.requests.lock().unwrap()[0]["stream"], true);
    let c = m
        .complete(&agent("local"), &messages, &[tool()])
        .await
        .unwrap();
    let Reply::ToolCalls(calls) = c.reply else {
        panic!("tool calls")
    };
    assert_eq!(
        (calls[0].id.as_str(), calls[0].args["path"].as_str()),
        ("c9", Some("b.md"))
    );
    let error = m
        .complete(&agent("local"), &messages, &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("[DONE]"), "{error}");
}
