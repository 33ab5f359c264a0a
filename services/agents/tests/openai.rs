//! The OpenAI-compatible provider against an HTTP server started in the test
//! that speaks the Chat Completions wire format with recorded answers:
//! tool calls, streaming, 429 with Retry-After, 500, malformed JSON, a stream
//! cut mid-way, and a fallback chain.

mod common;

use amaos_agents::model::{ChatMessage, ChatModel, Reply, ToolSpec};
use amaos_mesh::config::ModelProvider;
use common::{Fake, agent, config, models, ok, serve, sse};
use serde_json::json;

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
    let url = serve(fake.clone(), "/v1/chat/completions").await;
    fake.answers.lock().unwrap().extend([ok(json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "file_write", "arguments": "{\"path\":\"a.md\"}"}}
        ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20}
    }))]);
    let m = models(vec![(
        "local",
        config(ModelProvider::Openai, &url, false, 0, &[]),
    )]);
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
    let url = serve(fake.clone(), "/v1/chat/completions").await;
    fake.answers.lock().unwrap().extend([
        (429, vec![("retry-after", "0".into())], "slow down".into()),
        ok(json!({"choices": [{"message": {"content": "done"}}]})),
        (500, vec![], "boom".into()),
        (500, vec![], "boom".into()),
    ]);
    let m = models(vec![(
        "local",
        config(ModelProvider::Openai, &url, false, 1, &[]),
    )]);
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
    let url = serve(fake.clone(), "/v1/chat/completions").await;
    fake.answers.lock().unwrap().extend([
        (200, vec![], "{not json".into()),
        ok(json!({"choices": [{"message": {"content": "from the fallback"}}]})),
    ]);
    let m = models(vec![
        (
            "primary",
            config(ModelProvider::Openai, &url, false, 0, &["backup"]),
        ),
        ("backup", config(ModelProvider::Openai, &url, false, 0, &[])),
    ]);
    let c = m
        .complete(&agent("primary"), &[ChatMessage::text("user", "x")], &[])
        .await
        .unwrap();
    assert_eq!(c.reply, Reply::Text("from the fallback".into()));
    assert_eq!(c.model, "backup");
}

#[tokio::test]
async fn streaming_assembles_text_tool_calls_and_usage_and_a_cut_stream_fails() {
    let fake = Fake::default();
    let url = serve(fake.clone(), "/v1/chat/completions").await;
    fake.answers.lock().unwrap().extend([
        sse(
            &[
                json!({"choices": [{"delta": {"content": "Hel"}}]}),
                json!({"choices": [{"delta": {"content": "lo"}}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
            ],
            Some("data: [DONE]"),
        ),
        sse(
            &[
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c9", "function": {"name": "file_write", "arguments": "{\"pa"}}]}}]}),
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "th\":\"b.md\"}"}}]}}]}),
            ],
            Some("data: [DONE]"),
        ),
        sse(&[json!({"choices": [{"delta": {"content": "cut"}}]})], None),
    ]);
    let m = models(vec![(
        "local",
        config(ModelProvider::Openai, &url, true, 0, &[]),
    )]);
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

#[tokio::test]
async fn repeated_failures_open_the_breaker_and_the_fallback_answers_without_a_call() {
    let failing = Fake::default();
    let failing_url = serve(failing.clone(), "/v1/chat/completions").await;
    let backup = Fake::default();
    let backup_url = serve(backup.clone(), "/v1/chat/completions").await;
    backup.answers.lock().unwrap().extend(
        (0..4).map(|_| ok(json!({"choices": [{"message": {"content": "from the backup"}}]}))),
    );
    let m = models(vec![
        (
            "primary",
            config(ModelProvider::Openai, &failing_url, false, 0, &["backup"]),
        ),
        (
            "backup",
            config(ModelProvider::Openai, &backup_url, false, 0, &[]),
        ),
    ]);
    let messages = [ChatMessage::text("user", "x")];
    for _ in 0..4 {
        let c = m.complete(&agent("primary"), &messages, &[]).await.unwrap();
        assert_eq!(c.model, "backup");
    }
    assert_eq!(
        failing.requests.lock().unwrap().len(),
        3,
        "after three failures in a row the breaker skips the primary"
    );
    assert_eq!(backup.requests.lock().unwrap().len(), 4);
}

/// A `Write` into a shared buffer, for capturing logs.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_api_key_from_the_secret_store_is_rotated_and_never_logged_or_shown() {
    let fake = Fake::default();
    let url = serve(fake.clone(), "/v1/chat/completions").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, r#"{"llm/test": "sk-very-secret-1"}"#).unwrap();
    let store: std::sync::Arc<dyn amaos_mesh::secrets::SecretStore> =
        std::sync::Arc::new(amaos_mesh::secrets::FileSecrets::new(file.clone()));
    let mut cfg = config(ModelProvider::Openai, &url, false, 0, &[]);
    cfg.api_key_secret = Some("llm/test".into());
    let set = amaos_agents::model::ModelSet::with_secrets(
        &std::collections::BTreeMap::from([("local".to_owned(), cfg)]),
        Some(store),
    )
    .unwrap();
    let m = amaos_agents::model::RunModels::new("in", std::sync::Arc::new(set), None);
    // A server that quotes the key back in its error.
    fake.answers.lock().unwrap().extend([
        (
            401,
            vec![],
            "Incorrect API key provided: sk-very-secret-1".into(),
        ),
        ok(json!({"choices": [{"message": {"content": "ok"}}]})),
    ]);
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let messages = [ChatMessage::text("user", "x")];
    let error = m
        .complete(&agent("local"), &messages, &[])
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("sk-very-secret-1"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert_eq!(fake.auths.lock().unwrap()[0], "Bearer sk-very-secret-1");
    // Rotated in the store: the next call uses the new key, no restart.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, r#"{"llm/test": "sk-very-secret-2"}"#).unwrap();
    m.complete(&agent("local"), &messages, &[]).await.unwrap();
    assert_eq!(fake.auths.lock().unwrap()[1], "Bearer sk-very-secret-2");
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("model call failed"),
        "the failure was logged: {logged}"
    );
    assert!(!logged.contains("sk-very-secret"), "{logged}");
}
