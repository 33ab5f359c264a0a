//! The REST gateway against the in-process mesh, as a curl or browser
//! client would use it: every annotated RPC family through HTTP/JSON,
//! streams over SSE and NDJSON with resume, errors with their details,
//! credentials refused, limits, and the OpenAPI documents.

mod common;

use std::time::Duration;

use common::TestMesh;
use serde_json::{Value, json};

struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    fn new(mesh: &TestMesh) -> Self {
        Self {
            base: mesh.config.gateway.url.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The whole text of a stream, read until the server ends it.
    async fn stream(
        &self,
        key: &str,
        path: &str,
        accept: &str,
        last_event_id: Option<u64>,
    ) -> (u16, String, String) {
        let mut request = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .header("accept", accept);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = tokio::time::timeout(Duration::from_secs(90), response.text())
            .await
            .expect("the stream ended")
            .unwrap();
        (status, kind, text)
    }
}

/// The `data:` payloads and `id:`s of an SSE text, and its event names.
fn sse_events(text: &str) -> Vec<(Option<u64>, Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut id = None;
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (id, event, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_through_the_gateway() {
    let mesh = TestMesh::start().await;
    let rest = Rest::new(&mesh);
    let admin = mesh.admin_key.clone();

    // Submit by name (body "*"), the response in the proto3 JSON mapping.
    let (status, submitted) = rest
        .post(
            &admin,
            "/v1/tasks",
            &json!({
                "team": { "name": "research-crew" },
                "input": "solar panels",
                "labels": { "via": "rest" },
                "timeout": "120s"
            }),
        )
        .await;
    assert_eq!(status, 200, "{submitted}");
    let task_id = submitted["taskId"].as_str().unwrap().to_owned();
    assert_eq!(submitted["task"]["team"], "research-crew");
    assert_eq!(submitted["task"]["labels"]["via"], "rest");

    // Watch over SSE to the end: ids are the sequence, the last event is
    // the terminal state, then `event: end`.
    let (status, kind, text) = rest
        .stream(
            &admin,
            &format!("/v1/tasks/{task_id}:watch"),
            "text/event-stream",
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let events = sse_events(&text);
    let (ids, payloads): (Vec<_>, Vec<_>) = events
        .iter()
        .filter(|(_, event, _)| event.is_none())
        .map(|(id, _, data)| (id.unwrap(), serde_json::from_str::<Value>(data).unwrap()))
        .unzip();
    assert!(ids.len() > 3, "{text}");
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{text}");
    let last = payloads.last().unwrap();
    assert_eq!(
        last["event"]["stateChanged"]["to"], "TASK_STATE_SUCCEEDED",
        "{last}"
    );
    assert_eq!(events.last().unwrap().1.as_deref(), Some("end"));

    // Resume: Last-Event-ID gives only what came after it.
    let middle = ids[ids.len() / 2];
    let (_, _, resumed) = rest
        .stream(
            &admin,
            &format!("/v1/tasks/{task_id}:watch"),
            "text/event-stream",
            Some(middle),
        )
        .await;
    let resumed_ids: Vec<u64> = sse_events(&resumed).iter().filter_map(|e| e.0).collect();
    assert_eq!(resumed_ids, ids[ids.len() / 2 + 1..].to_vec());

    // NDJSON: one JSON object per line, the same events; `afterSequence`
    // as a query parameter resumes as well.
    let (status, kind, text) = rest
        .stream(
            &admin,
            &format!("/v1/tasks/{task_id}:watch?afterSequence={middle}"),
            "application/x-ndjson",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/x-ndjson"), "{kind}");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ids.len() - ids.len() / 2 - 1);
    assert_eq!(
        lines[0]["event"]["sequence"],
        (middle + 1).to_string(),
        "64-bit integers are strings"
    );

    // Get (path variable) and the output.
    let (status, got) = rest.get(&admin, &format!("/v1/tasks/{task_id}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["task"]["state"], "TASK_STATE_SUCCEEDED");
    assert!(!got["task"]["output"].as_str().unwrap().is_empty());
    assert!(got["task"]["finishedAt"].as_str().unwrap().ends_with('Z'));

    // List with paging and filters as query parameters (lowerCamelCase and
    // proto names both accepted).
    let (_, second) = rest
        .post(
            &admin,
            "/v1/tasks",
            &json!({ "team": { "name": "research-crew" }, "input": "wind" }),
        )
        .await;
    let (status, page) = rest.get(&admin, "/v1/tasks?pageSize=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(page["tasks"][0]["taskId"], second["taskId"], "newest first");
    let token = page["nextPageToken"].as_str().unwrap();
    let (_, next) = rest
        .get(&admin, &format!("/v1/tasks?page_size=1&pageToken={token}"))
        .await;
    assert_eq!(next["tasks"][0]["taskId"], task_id.as_str());
    let (_, succeeded) = rest
        .get(
            &admin,
            "/v1/tasks?state=TASK_STATE_SUCCEEDED&team=research-crew",
        )
        .await;
    assert!(
        succeeded["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "TASK_STATE_SUCCEEDED")
    );

    // Cancel (`:verb`), on a task that has finished: returned unchanged.
    let (status, cancelled) = rest
        .post(
            &admin,
            &format!("/v1/tasks/{task_id}:cancel"),
            &json!({ "reason": "test" }),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["task"]["state"], "TASK_STATE_SUCCEEDED");

    // Teams, workers, validation: other services behind the same door.
    let (status, teams) = rest.get(&admin, "/v1/teams").await;
    assert_eq!(status, 200, "{teams}");
    assert!(
        teams["teams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "research-crew")
    );
    let (status, workers) = rest.get(&admin, "/v1/workers").await;
    assert_eq!(status, 200, "{workers}");
    assert!(!workers["workers"].as_array().unwrap().is_empty());
    let (status, invalid) = rest
        .post(
            &admin,
            "/v1/teams:validate",
            &json!({ "specYaml": "name: x\nagnets: []\n" }),
        )
        .await;
    assert_eq!(status, 400, "{invalid}");
    assert_eq!(invalid["code"], 3);

    // Errors: a malformed body names the field, with a BadRequest detail.
    let (status, error) = rest
        .post(
            &admin,
            "/v1/tasks",
            &json!({ "team": { "name": "research-crew" }, "retry": { "maxAttempts": "many" } }),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    let violation = &error["details"][0];
    assert_eq!(
        violation["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(
        violation["fieldViolations"][0]["field"], "retry.maxAttempts",
        "{error}"
    );
    let (status, error) = rest
        .post(
            &admin,
            "/v1/tasks",
            &json!({ "team": { "name": "research-crew" }, "inptu": "x" }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("inptu"),
        "{error}"
    );
    let response = rest
        .http
        .post(rest.url("/v1/tasks"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, error) = rest.get(&admin, "/v1/tasks?bogus=1").await;
    assert_eq!(status, 400);
    assert_eq!(error["details"][0]["fieldViolations"][0]["field"], "bogus");
    let (status, error) = rest
        .get(&admin, "/v1/tasks/00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["code"], 5);

    // Unknown routes and methods are JSON, not a crash.
    let (status, error) = rest.get(&admin, "/v2/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], 5);
    let response = rest
        .http
        .delete(rest.url("/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );

    // Credentials: none, a bad one, and one without the role.
    let response = rest.http.get(rest.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, _) = rest.get("amaos_not_a_key", "/v1/tasks").await;
    assert_eq!(status, 401);
    let viewer = mesh.create_key("default", "viewer").await;
    let (status, denied) = rest
        .post(
            &viewer,
            "/v1/tasks",
            &json!({ "team": { "name": "research-crew" }, "input": "x" }),
        )
        .await;
    assert_eq!(status, 403, "{denied}");
    let (status, _) = rest.get(&viewer, "/v1/tasks").await;
    assert_eq!(status, 200);

    // Limits: a body over gateway.max_body_bytes is refused before parsing.
    let big = "x".repeat(mesh.config.gateway.max_body_bytes + 1);
    let (status, error) = rest
        .post(&admin, "/v1/tasks", &json!({ "input": big }))
        .await;
    assert_eq!(status, 413, "{error}");

    // OpenAPI, whole and per service.
    let (status, doc) = rest.get(&admin, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tasks/{task_id}:cancel"]["post"].is_object());
    let (status, doc) = rest.get(&admin, "/openapi/orchestrator.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"].get("/v1/teams").is_none());

    // The other services' annotated RPCs, one call each. Auth: keys,
    // authentication, signing keys, the audit trail.
    let (status, created) = rest
        .post(
            &admin,
            "/v1/api-keys",
            &json!({ "name": "ci", "tenant": "acme", "roles": ["developer"], "ttl": "3600s" }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["apiKey"]["keyId"].as_str().unwrap().to_owned();
    let (status, listed) = rest.get(&admin, "/v1/api-keys?tenant=acme").await;
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["keyId"] == key_id.as_str())
    );
    let (status, principal) = rest
        .post(
            &admin,
            "/v1/auth:authenticate",
            &json!({ "apiKey": secret }),
        )
        .await;
    assert_eq!(status, 200, "{principal}");
    assert_eq!(principal["principal"]["tenant"], "acme");
    let (status, revoked) = rest
        .post(&admin, &format!("/v1/api-keys/{key_id}:revoke"), &json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, _) = rest.get(&secret, "/v1/tasks").await;
    assert_eq!(status, 401, "a revoked key is refused through REST too");
    let (status, keys) = rest.get(&admin, "/v1/auth/keys").await;
    assert_eq!(status, 200, "{keys}");
    let (status, audit) = rest.get(&admin, "/v1/audit?pageSize=5").await;
    assert_eq!(status, 200, "{audit}");
    assert!(!audit["records"].as_array().unwrap().is_empty());
    let (status, _) = rest.get(&viewer, "/v1/audit").await;
    assert_eq!(status, 403, "the audit trail is not a viewer's");

    // Tools and memory: listing works for a user; calls that need a run
    // token are refused with a status, never a crash or a 5xx.
    let (status, tools) = rest.get(&admin, "/v1/tools").await;
    assert_eq!(status, 200, "{tools}");
    assert!(
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "file_read")
    );
    for (path, body) in [
        (
            "/v1/tools/file_read:invoke",
            json!({ "arguments": { "path": "x" }, "taskId": task_id }),
        ),
        (
            "/v1/tool-servers",
            json!({ "name": "x", "http": { "url": "http://127.0.0.1:1/mcp" } }),
        ),
        (
            "/v1/memories",
            json!({ "team": "research-crew", "text": "a fact" }),
        ),
        ("/v1/memories:recall", json!({ "query": "a fact" })),
        ("/v1/memories:forget", json!({ "memoryId": "m" })),
    ] {
        let (status, error) = rest.post(&viewer, path, &body).await;
        assert!((400..500).contains(&status), "{path}: {status} {error}");
        assert!(error["code"].as_i64().unwrap() > 0, "{path}: {error}");
    }
    let (status, error) = rest.get(&viewer, "/v1/memories").await;
    assert!(
        status == 200 || (400..500).contains(&status),
        "{status} {error}"
    );

    // CORS is off by default: a browser preflight from another origin is refused.
    let response = rest
        .http
        .request(reqwest::Method::OPTIONS, rest.url("/v1/tasks"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // The dashboard is served.
    let response = rest.http.get(rest.url("/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("/assets/app.js"));

    mesh.stop().await;
}
