//! A model provider's HTTP server, started inside the test, answering with
//! recorded responses and keeping what it was sent.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amaos_agents::model::{ModelSet, RunModels};
use amaos_mesh::config::{ModelConfig, ModelProvider};
use amaos_teams::AgentSpec;
use serde_json::Value;

/// A recorded answer: status, extra headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
pub struct Fake {
    pub answers: Arc<Mutex<VecDeque<Answer>>>,
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// The `authorization` header of each request.
    pub auths: Arc<Mutex<Vec<String>>>,
}

/// Serves `fake` at `POST {path}`; returns the base URL (`…/v1`).
pub async fn serve(fake: Fake, path: &str) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        path,
        post(move |headers: axum::http::HeaderMap, body: String| {
            let fake = fake.clone();
            async move {
                fake.auths.lock().unwrap().push(
                    headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                );
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

/// An alias of `provider` at `base_url`.
pub fn config(
    provider: ModelProvider,
    base_url: &str,
    stream: bool,
    retries: u32,
    fallbacks: &[&str],
) -> ModelConfig {
    ModelConfig {
        provider,
        base_url: base_url.into(),
        model: "test-model".into(),
        api_key_env: None,
        api_key_secret: None,
        timeout: Duration::from_secs(5),
        max_retries: retries,
        fallbacks: fallbacks.iter().map(|f| f.to_string()).collect(),
        prompt_price_per_1k: 1.0,
        completion_price_per_1k: 2.0,
        stream,
        max_tokens: Some(256),
        breaker_failures: 3,
        breaker_cool_down: Duration::from_secs(30),
    }
}

/// An agent on `model` allowed `file_write`.
pub fn agent(model: &str) -> AgentSpec {
    AgentSpec {
        name: "a".into(),
        role: "r".into(),
        goal: "g".into(),
        backstory: String::new(),
        model: model.into(),
        tools: vec!["file_write".into()],
        memory: false,
        replay: Vec::new(),
        replay_latency: None,
        approval: amaos_teams::Approval::None,
        remote: None,
    }
}

/// The run models of these aliases.
pub fn models(entries: Vec<(&str, ModelConfig)>) -> RunModels {
    let map: BTreeMap<String, ModelConfig> = entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    RunModels::new("in", Arc::new(ModelSet::new(&map).unwrap()), None)
}

/// A 200 JSON answer.
pub fn ok(body: Value) -> Answer {
    (
        200,
        vec![("content-type", "application/json".into())],
        body.to_string(),
    )
}

/// A 200 server-sent-event answer of `events` (`data:` lines), with
/// `trailer` appended as a last raw line when given.
pub fn sse(events: &[Value], trailer: Option<&str>) -> Answer {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if let Some(t) = trailer {
        body.push_str(&format!("{t}\n\n"));
    }
    (
        200,
        vec![("content-type", "text/event-stream".into())],
        body,
    )
}
