//! A crew on a configured OpenAI-compatible model alias, end to end: the
//! model (an HTTP server in the test speaking Chat Completions) asks for a
//! tool, the tools service runs it in the task's workspace, the result goes
//! back to the model with its call id, and the model's answer is the output.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use common::TestMesh;
use serde_json::{Value, json};

const SPEC: &str = r#"name: model-crew
agents:
  - name: writer
    role: Writer
    goal: Write what is asked into a file
    model: local
    tools: [file_write]
crew:
  tasks:
    - { name: write, description: "Write about {input}", agent: writer }
"#;

async fn fake_model(answers: Vec<Value>) -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = requests.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let answers = answers.clone();
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                let answer = answers.lock().unwrap().pop_front().unwrap_or(Value::Null);
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(answer.to_string()))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/v1"), requests)
}

#[tokio::test]
async fn a_crew_runs_on_an_openai_compatible_model_with_tools() {
    let (url, requests) = fake_model(vec![
        json!({"choices": [{"message": {"content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "file_write", "arguments": "{\"path\":\"out.md\",\"content\":\"model text\"}"}
        }]}}], "usage": {"prompt_tokens": 50, "completion_tokens": 10}}),
        json!({"choices": [{"message": {"content": "Wrote out.md about tides."}}],
               "usage": {"prompt_tokens": 80, "completion_tokens": 8}}),
    ])
    .await;
    let mesh = TestMesh::start_with(|c| {
        c.models.insert(
            "local".into(),
            ModelConfig {
                provider: ModelProvider::Openai,
                base_url: url,
                model: "tiny".into(),
                api_key_env: None,
                api_key_secret: None,
                timeout: Duration::from_secs(5),
                max_retries: 0,
                fallbacks: vec![],
                prompt_price_per_1k: 0.5,
                completion_price_per_1k: 1.5,
                stream: false,
                max_tokens: None,
                breaker_failures: 3,
                breaker_cool_down: Duration::from_secs(30),
            },
        );
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let task_id = mesh.submit(&key, SPEC, "tides").await;
    let mut stream = mesh
        .orchestrator()
        .watch_task(TestMesh::with_key(
            &key,
            pb::WatchTaskRequest {
                task_id: task_id.clone(),
                after_sequence: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut usage_models = Vec::new();
    let mut last_state = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = stream.message().await.unwrap() {
            match r.event.unwrap().kind {
                Some(Kind::RunEvent(run)) => {
                    if let Some(Payload::TokenUsage(u)) = run.payload {
                        usage_models.push((u.model, u.prompt_tokens, u.cost_usd));
                    }
                }
                Some(Kind::StateChanged(s)) => last_state = s.to,
                None => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(last_state, pb::TaskState::Succeeded as i32);
    let task = mesh
        .orchestrator()
        .get_task(TestMesh::with_key(
            &key,
            pb::GetTaskRequest {
                task_id: task_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.output, "Wrote out.md about tides.");
    let written = std::fs::read_to_string(
        mesh.config
            .workspace_dir()
            .join("acme")
            .join(&task_id)
            .join("out.md"),
    )
    .unwrap();
    assert_eq!(written, "model text");
    assert_eq!(usage_models.len(), 2);
    assert_eq!(usage_models[0].0, "local");
    assert_eq!(usage_models[0].1, 50);
    // The second request carried the tool's answer under the model's call id.
    let second = requests.lock().unwrap()[1].clone();
    let tool_message = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert_eq!(tool_message["tool_call_id"], "call_1");
    assert!(
        tool_message["content"]
            .as_str()
            .unwrap()
            .contains("bytes_written")
    );
    let offered = requests.lock().unwrap()[0]["tools"].clone();
    assert_eq!(
        offered.as_array().unwrap().len(),
        1,
        "only the agent's own tools are offered"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn an_unknown_model_alias_fails_the_run_with_a_clear_reason() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let task_id = mesh.submit(&key, SPEC, "x").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let task = mesh
            .orchestrator()
            .get_task(TestMesh::with_key(
                &key,
                pb::GetTaskRequest {
                    task_id: task_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        if task.state == pb::TaskState::Failed as i32 {
            let message = task.error.unwrap().message;
            assert!(message.contains("model alias `local`"), "{message}");
            assert_eq!(task.attempt, 1, "an invalid spec is not retried");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{task:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.stop().await;
}
