//! The Anthropic Messages provider against an HTTP server started in the test
//! that speaks the Messages wire format with recorded answers: tool use,
//! the request shape (system apart, tool results merged into one user turn),
//! streaming with `input_json_delta`, 429 and 529 retried, 400 not retried,
//! malformed JSON, a stream cut before `message_stop` and an `error` event.

mod common;

use amaos_agents::model::{ChatMessage, ChatModel, Reply, ToolCallRequest, ToolSpec};
use amaos_mesh::config::ModelProvider;
use common::{Fake, agent, config, models, ok, serve, sse};
use serde_json::json;

const PATH: &str = "/v1/messages";

fn tool() -> ToolSpec {
    ToolSpec {
        name: "file_write".into(),
        description: "write a file".into(),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn tool_use_usage_and_the_request_shape() {
    let fake = Fake::default();
    let url = serve(fake.clone(), PATH).await;
    fake.answers.lock().unwrap().extend([ok(json!({
        "id": "msg_1", "type": "message", "role": "assistant",
        "content": [
            {"type": "text", "text": "I will write it."},
            {"type": "tool_use", "id": "toolu_1", "name": "file_write", "input": {"path": "a.md"}}
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 120, "output_tokens": 30}
    }))]);
    let m = models(vec![(
        "claude",
        config(ModelProvider::Anthropic, &url, false, 0, &[]),
    )]);
    let call = |id: &str| ToolCallRequest {
        id: id.into(),
        name: "file_write".into(),
        args: json!({"path": "x"}).as_object().unwrap().clone(),
    };
    let messages = vec![
        ChatMessage::text("system", "You are a writer."),
        ChatMessage::text("user", "write two files"),
        ChatMessage {
            role: "assistant",
            content: String::new(),
            tool_calls: vec![call("t1"), call("t2")],
            tool_call_id: None,
        },
        ChatMessage {
            role: "tool",
            content: "{\"ok\":true}".into(),
            tool_calls: vec![],
            tool_call_id: Some("t1".into()),
        },
        ChatMessage {
            role: "tool",
            content: "error: PermissionDenied".into(),
            tool_calls: vec![],
            tool_call_id: Some("t2".into()),
        },
    ];
    let c = m
        .complete(&agent("claude"), &messages, &[tool()])
        .await
        .unwrap();
    let Reply::ToolCalls(calls) = c.reply else {
        panic!("tool calls, got {:?}", c.reply)
    };
    assert_eq!(calls[0].id, "toolu_1");
    assert_eq!(calls[0].args["path"], "a.md");
    assert_eq!(
        (c.usage.prompt_tokens, c.usage.completion_tokens),
        (120, 30)
    );
    assert!((c.cost_usd - 0.18).abs() < 1e-9, "{}", c.cost_usd);
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "test-model");
    assert_eq!(sent["system"], "You are a writer.");
    assert_eq!(sent["max_tokens"], 256);
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(
        turns.len(),
        3,
        "user, assistant, one merged user turn: {sent}"
    );
    assert_eq!(turns[1]["content"][1]["type"], "tool_use");
    assert_eq!(turns[1]["content"][1]["id"], "t2");
    let results = turns[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tool_use_id"], "t1");
    assert_eq!(results[1]["is_error"], true);
}

#[tokio::test]
async fn streaming_assembles_text_and_tool_input_and_broken_streams_fail() {
    let fake = Fake::default();
    let url = serve(fake.clone(), PATH).await;
    let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}});
    fake.answers.lock().unwrap().extend([
        sse(
            &[
                start.clone(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
                json!({"type": "message_stop"}),
            ],
            None,
        ),
        sse(
            &[
                start.clone(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "file_write", "input": {}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"pa"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "th\": \"b.md\"}"}}),
                json!({"type": "message_stop"}),
            ],
            None,
        ),
        // Cut before message_stop.
        sse(
            &[
                start.clone(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ],
            None,
        ),
        sse(
            &[
                start,
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ],
            None,
        ),
    ]);
    let m = models(vec![(
        "claude",
        config(ModelProvider::Anthropic, &url, true, 0, &[]),
    )]);
    let messages = [ChatMessage::text("user", "x")];
    let c = m.complete(&agent("claude"), &messages, &[]).await.unwrap();
    assert_eq!(c.reply, Reply::Text("Hello".into()));
    assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (11, 5));
    assert_eq!(fake.requests.lock().unwrap()[0]["stream"], true);
    let c = m
        .complete(&agent("claude"), &messages, &[tool()])
        .await
        .unwrap();
    let Reply::ToolCalls(calls) = c.reply else {
        panic!("tool calls")
    };
    assert_eq!(
        (calls[0].id.as_str(), calls[0].args["path"].as_str()),
        ("toolu_9", Some("b.md"))
    );
    let cut = m
        .complete(&agent("claude"), &messages, &[])
        .await
        .unwrap_err();
    assert!(cut.to_string().contains("message_stop"), "{cut}");
    let error = m
        .complete(&agent("claude"), &messages, &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Overloaded"), "{error}");
}

#[tokio::test]
async fn rate_limits_and_overload_are_retried_and_bad_requests_are_not() {
    let fake = Fake::default();
    let url = serve(fake.clone(), PATH).await;
    let done = ok(
        json!({"content": [{"type": "text", "text": "done"}], "usage": {"input_tokens": 1, "output_tokens": 1}}),
    );
    fake.answers.lock().unwrap().extend([
        (
            429,
            vec![("retry-after", "0".into())],
            "{\"type\":\"error\"}".into(),
        ),
        (529, vec![("retry-after", "0".into())], "overloaded".into()),
        done,
        (
            400,
            vec![],
            "{\"error\":{\"message\":\"max_tokens: required\"}}".into(),
        ),
        (200, vec![], "{not json".into()),
    ]);
    let m = models(vec![(
        "claude",
        config(ModelProvider::Anthropic, &url, false, 2, &[]),
    )]);
    let messages = [ChatMessage::text("user", "x")];
    let c = m.complete(&agent("claude"), &messages, &[]).await.unwrap();
    assert_eq!(c.reply, Reply::Text("done".into()));
    assert_eq!(fake.requests.lock().unwrap().len(), 3);
    let error = m
        .complete(&agent("claude"), &messages, &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("HTTP 400"), "{error}");
    assert_eq!(
        fake.requests.lock().unwrap().len(),
        4,
        "a 400 is not retried"
    );
    let error = m
        .complete(&agent("claude"), &messages, &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not JSON"), "{error}");
}
