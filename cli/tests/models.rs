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
        c.models
            .insert("local".into(), priced_model(url, (0.5, 1.5)));
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

/// The alias `local`: `url`'s Chat Completions at (prompt, completion)
/// dollars per 1k tokens.
fn priced_model(url: String, (prompt, completion): (f64, f64)) -> ModelConfig {
    ModelConfig {
        provider: ModelProvider::Openai,
        base_url: url,
        model: "tiny".into(),
        api_key_env: None,
        api_key_secret: None,
        timeout: Duration::from_secs(5),
        max_retries: 0,
        fallbacks: vec![],
        prompt_price_per_1k: prompt,
        completion_price_per_1k: completion,
        stream: false,
        max_tokens: None,
        breaker_failures: 3,
        breaker_cool_down: Duration::from_secs(30),
    }
}

async fn usage(mesh: &TestMesh, key: &str, request: pb::GetUsageRequest) -> pb::GetUsageResponse {
    mesh.orchestrator()
        .get_usage(TestMesh::with_key(key, request))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn usage_is_counted_per_team_and_task_and_a_budget_stops_a_run_then_refuses_submissions() {
    // The first answer costs $1.00 (1,000 prompt tokens at $1 per 1k): past
    // the team's $0.50, so the run is stopped once that usage is recorded.
    let (url, requests) = fake_model(vec![
        json!({"choices": [{"message": {"content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "file_write", "arguments": "{\"path\":\"out.md\",\"content\":\"x\"}"}
        }]}}], "usage": {"prompt_tokens": 1000, "completion_tokens": 10}}),
        json!({"choices": [{"message": {"content": "never asked for"}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
    ])
    .await;
    let mesh = TestMesh::start_with(|c| {
        c.models
            .insert("local".into(), priced_model(url, (1.0, 0.0)));
        c.orchestrator
            .team_budgets_usd
            .insert("model-crew".into(), 0.5);
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let task_id = mesh.submit(&key, SPEC, "tides").await;
    mesh.events(&key, &task_id).await;
    let task = mesh.task(&key, &task_id).await;
    assert_eq!(task.state, pb::TaskState::Failed as i32, "{task:?}");
    let message = task.error.unwrap().message;
    assert!(message.contains("stopped mid-run"), "{message}");
    assert!(
        message.contains("orchestrator.team_budgets_usd.model-crew"),
        "{message}"
    );
    assert_eq!(task.attempt, 1, "a spent budget is not retried");
    // A call already under way when the orchestrator stops the run may
    // finish; nothing after it is asked.
    assert!(requests.lock().unwrap().len() <= 2);

    // The attempt's usage, by task and by team, with the budget.
    let one = usage(
        &mesh,
        &key,
        pb::GetUsageRequest {
            task_id: task_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let total = one.total.unwrap();
    assert_eq!((total.input_tokens, total.output_tokens), (1000, 10));
    assert!((total.cost_usd - 1.0).abs() < 1e-9, "{total:?}");
    assert_eq!((total.model_calls, total.attempts), (1, 1));
    let month = usage(&mesh, &key, pb::GetUsageRequest::default()).await;
    assert_eq!(month.rows.len(), 1);
    assert_eq!(month.rows[0].team, "model-crew");
    assert_eq!(month.rows[0].tenant, "acme");
    let budget = &month.budgets[0];
    assert_eq!(budget.scope, "team:model-crew");
    assert!(
        budget.spent_usd >= 1.0 && budget.limit_usd == 0.5,
        "{budget:?}"
    );

    // Another tenant sees none of it, and may not ask for acme's.
    let other = mesh.create_key("globex", "developer").await;
    assert!(
        usage(&mesh, &other, pb::GetUsageRequest::default())
            .await
            .rows
            .is_empty()
    );
    let refused = mesh
        .orchestrator()
        .get_usage(TestMesh::with_key(
            &other,
            pb::GetUsageRequest {
                tenant: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // The spend is read at most every 5 s: after that, a submission to the
    // team is refused, naming the budget.
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let over = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(&key, common::inline(SPEC, "again")))
        .await
        .unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message()
            .contains("orchestrator.team_budgets_usd.model-crew"),
        "{}",
        over.message()
    );
    // Through the gateway, the same usage as JSON.
    let body = reqwest::Client::new()
        .get(format!(
            "{}/v1/usage?groupBy=USAGE_GROUPING_DAY",
            mesh.config.gateway.url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let body: Value = body.json().await.unwrap();
    assert_eq!(body["rows"][0]["team"], "model-crew", "{body}");
    assert!(
        !body["rows"][0]["day"].as_str().unwrap().is_empty(),
        "{body}"
    );
    mesh.stop().await;
}
