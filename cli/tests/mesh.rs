//! End-to-end tests of the whole mesh in one process: every service on its own
//! loopback port, talking real gRPC.

mod common;

use std::time::Duration;

use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::map_to_struct;
use amaos_proto::memory::v1 as memory;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use common::{TestMesh, research_crew};
use tonic::Code;
use tonic_types::StatusExt;

fn submit_spec(spec: String, input: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::SpecYaml(spec)),
        }),
        input: input.into(),
        session_id: "s-1".into(),
        ..Default::default()
    }
}

async fn watch_all(mesh: &TestMesh, key: &str, task_id: &str) -> Vec<pb::TaskEvent> {
    mesh.events(key, task_id).await
}

/// A compact name per event, to compare orders.
/// Forgets a session's memories as `tenant`'s agent; how many went.
async fn forget_session(
    mesh: &TestMesh,
    memory: &mut MemoryServiceClient<amaos_mesh::client::MeshChannel>,
    tenant: &str,
    session: &str,
) -> u64 {
    memory
        .forget(mesh.internal(
            tenant,
            &["agent"],
            memory::ForgetRequest {
                target: Some(memory::forget_request::Target::Scope(
                    memory::MemoryFilter {
                        session_id: session.into(),
                        ..Default::default()
                    },
                )),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .forgotten
}

fn label(e: &pb::TaskEvent) -> String {
    match &e.kind {
        Some(Kind::StateChanged(s)) => format!("state:{}", amaos_cli::render::state_name(s.to)),
        Some(Kind::RunEvent(r)) => match &r.payload {
            Some(Payload::RunStarted(_)) => "run_started".into(),
            Some(Payload::TaskStarted(t)) => format!("task_started:{}", t.task),
            Some(Payload::Message(m)) => format!("message:{}", m.role),
            Some(Payload::ToolCall(t)) => format!("tool_call:{}", t.tool),
            Some(Payload::ToolResult(t)) => format!(
                "tool_result:{}{}",
                t.tool,
                if t.is_error { ":error" } else { "" }
            ),
            Some(Payload::MemoryRecalled(_)) => "memory_recalled".into(),
            Some(Payload::MemoryStored(_)) => "memory_stored".into(),
            Some(Payload::TokenUsage(_)) => "token_usage".into(),
            Some(Payload::TaskCompleted(t)) => format!("task_completed:{}", t.task),
            Some(Payload::RunCompleted(_)) => "run_completed".into(),
            Some(Payload::RunFailed(f)) => format!("run_failed:{}", f.reason),
            other => format!("{other:?}"),
        },
        None => "none".into(),
    }
}

#[tokio::test]
async fn the_example_crew_runs_end_to_end() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;

    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            submit_spec(research_crew(), "vector databases"),
        ))
        .await
        .unwrap()
        .into_inner();
    let task_id = response.task_id;
    let events = watch_all(&mesh, &key, &task_id).await;

    // Sequence numbers run from 1 without gaps.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
    }
    let labels: Vec<String> = events
        .iter()
        .map(label)
        .filter(|l| l != "token_usage" && !l.starts_with("message:"))
        .collect();
    assert_eq!(
        labels,
        [
            "state:PENDING",
            "state:QUEUED",
            "state:RUNNING",
            "run_started",
            "task_started:research",
            "tool_call:file_write",
            "tool_result:file_write",
            "tool_call:file_list",
            "tool_result:file_list",
            "memory_stored",
            "task_completed:research",
            "task_started:write",
            "tool_call:file_read",
            "tool_result:file_read",
            "tool_call:file_write",
            "tool_result:file_write",
            "task_completed:write",
            "run_completed",
            "state:SUCCEEDED",
        ]
    );

    // The output is the scripted one.
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
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(
        task.output,
        "Brief: vector databases — what it is, who uses it, and the trade-offs to weigh."
    );

    // The tools ran in the task's workspace.
    let workspace = mesh.config.workspace_dir().join("acme").join(&task_id);
    let notes = std::fs::read_to_string(workspace.join("notes.md")).unwrap();
    assert!(notes.starts_with("# Notes on vector databases"), "{notes}");
    assert!(workspace.join("brief.md").exists());

    // Memory holds what the researcher remembered, in the tenant only.
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let recent = memory
        .recent(mesh.internal(
            "acme",
            &["agent"],
            memory::RecentRequest {
                filter: None,
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(recent.len(), 1);
    assert!(
        recent[0]
            .text
            .starts_with("Research notes on vector databases")
    );
    assert_eq!(recent[0].agent, "researcher");
    let other = memory
        .recent(mesh.internal(
            "globex",
            &["agent"],
            memory::RecentRequest {
                filter: None,
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(other.is_empty());

    // A second run recalls the first one's memory before the research task.
    let again = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            submit_spec(research_crew(), "vector databases"),
        ))
        .await
        .unwrap()
        .into_inner();
    let events = watch_all(&mesh, &key, &again.task_id).await;
    assert!(events.iter().map(label).any(|l| l == "memory_recalled"));

    // Another tenant cannot see the task.
    let stranger = mesh.create_key("globex", "developer").await;
    let status = mesh
        .orchestrator()
        .get_task(TestMesh::with_key(
            &stranger,
            pb::GetTaskRequest { task_id },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    mesh.stop().await;
}

#[tokio::test]
async fn the_example_crew_runs_with_mtls_between_every_service_and_the_gateway() {
    let mesh = TestMesh::start_with(|config| {
        config.tls.mode = amaos_mesh::tls::TlsMode::Rustls;
        amaos_mesh::tls::init_dev_pki(
            &config.tls,
            &config.data_dir.join("tls"),
            amaos_mesh::tls::PRINCIPALS,
        )
        .unwrap();
    })
    .await;
    // The CLI's certificate: keys from auth, a crew run through the
    // orchestrator, the router, an agents worker, tools and memory.
    let key = mesh.create_key("acme", "developer").await;
    let id = mesh
        .submit(&key, &research_crew(), "vector databases")
        .await;
    mesh.events(&key, &id).await;
    let task = mesh.task(&key, &id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");

    // The REST gateway calls the services with its own certificate.
    let got: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/tasks/{id}", mesh.config.gateway.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["task"]["state"], "TASK_STATE_SUCCEEDED", "{got}");

    // Plaintext is refused, and so is a mesh identity that may not call
    // the orchestrator (the router may not).
    let plain =
        amaos_mesh::client::channel(&mesh.config.orchestrator.url, &mesh.config.limits).unwrap();
    assert!(
        amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient::new(
            plain
        )
        .list_tasks(TestMesh::with_key(&key, pb::ListTasksRequest::default()))
        .await
        .is_err()
    );
    let as_router = amaos_mesh::client::Dialer::new(&mesh.config, "router")
        .unwrap()
        .channel("orchestrator", &mesh.config.orchestrator.url)
        .unwrap();
    let status =
        amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient::new(
            as_router,
        )
        .list_tasks(TestMesh::with_key(&key, pb::ListTasksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_team_that_requires_input_refuses_an_empty_one() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let required = format!("{}input: required\n", research_crew());
    for (spec, input) in [(required.clone(), ""), (required.clone(), "  \n")] {
        let status = mesh
            .orchestrator()
            .submit_task(TestMesh::with_key(&key, submit_spec(spec, input)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "input");
    }
    // A workflow step is a task like any other.
    let status = mesh
        .orchestrator()
        .submit_workflow(TestMesh::with_key(
            &key,
            pb::SubmitWorkflowRequest {
                tasks: vec![pb::WorkflowTask {
                    key: "a".into(),
                    team: Some(pb::TeamRef {
                        team: Some(pb::team_ref::Team::SpecYaml(required.clone())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // With an input it runs; a team that does not require one takes an empty input.
    let task = mesh.submit(&key, &required, "edge caching").await;
    assert!(!task.is_empty());
    let task = mesh.submit(&key, &research_crew(), "").await;
    assert!(!task.is_empty());
    mesh.stop().await;
}

#[tokio::test]
async fn a_malformed_spec_is_invalid_argument_naming_the_line() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let bad = research_crew().replace("      agent: writer\n", "      agent: editor\n");
    let line = bad
        .lines()
        .position(|l| l == "      agent: editor")
        .unwrap()
        + 1;
    let status = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(&key, submit_spec(bad.clone(), "x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&format!("line {line}")),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("crew.tasks[1].agent"),
        "{}",
        status.message()
    );
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "team.spec_yaml.crew.tasks[1].agent");

    // A YAML syntax error names its line too, through the agents service's ValidateTeam.
    let broken = "name: x\nagents: [\n";
    let mut agents = AgentsServiceClient::new(mesh.channel(&mesh.config.agents.url));
    let status = agents
        .validate_team(TestMesh::with_key(
            &key,
            agents::ValidateTeamRequest {
                spec_yaml: broken.into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("line "), "{}", status.message());
    // The violation names the field itself, not `spec_yaml.`.
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "spec_yaml");

    // And nothing was stored.
    let listed = mesh
        .orchestrator()
        .list_tasks(TestMesh::with_key(&key, pb::ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty());
    mesh.stop().await;
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_are_unauthenticated() {
    let mesh = TestMesh::start_with(|c| c.auth.key_cache_ttl = Duration::from_millis(1)).await;
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = orchestrator
        .list_tasks(TestMesh::with_key(
            "amaos_0123456789ab_wrong",
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A viewer may read but not submit.
    let viewer = mesh.create_key("acme", "viewer").await;
    orchestrator
        .list_tasks(TestMesh::with_key(&viewer, pb::ListTasksRequest::default()))
        .await
        .unwrap();
    let status = orchestrator
        .submit_task(TestMesh::with_key(
            &viewer,
            submit_spec(research_crew(), "x"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A revoked key stops working once the short verification cache expires.
    let keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                include_revoked: false,
                tenant: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    mesh.auth()
        .revoke_api_key(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::RevokeApiKeyRequest {
                key_id: keys[0].key_id.clone(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = orchestrator
        .list_tasks(TestMesh::with_key(&viewer, pb::ListTasksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    mesh.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let mesh = TestMesh::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let key = mesh.create_key("acme", "developer").await;
    let huge = "x".repeat(200 * 1024);
    let status = mesh
        .orchestrator()
        .max_encoding_message_size(1024 * 1024)
        .submit_task(TestMesh::with_key(
            &key,
            submit_spec(research_crew(), &huge),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn paths_outside_the_workspace_are_permission_denied() {
    let mesh = TestMesh::start().await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    for path in ["../../etc/passwd", "/etc/passwd", "notes/../../x"] {
        let args = serde_json::json!({ "path": path });
        let status = tools
            .invoke_tool(mesh.internal(
                "acme",
                &["agent"],
                tools::InvokeToolRequest {
                    tool: "file_read".into(),
                    arguments: Some(map_to_struct(args.as_object().unwrap())),
                    task_id: "t-1".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
    }
    // A role that may not use tools is refused too.
    let status = tools
        .invoke_tool(mesh.internal(
            "acme",
            &["viewer"],
            tools::InvokeToolRequest {
                tool: "file_list".into(),
                task_id: "t-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    mesh.stop().await;
}

#[tokio::test]
async fn a_retried_tool_call_replays_its_recorded_result() {
    let mesh = TestMesh::start().await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let call = |content: &str| {
        let args = serde_json::json!({ "path": "log.txt", "content": content, "append": true });
        mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "file_write".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-2".into(),
                idempotency_key: "call-1".into(),
                ..Default::default()
            },
        )
    };
    let first = tools
        .invoke_tool(call("once\n"))
        .await
        .unwrap()
        .into_inner();
    let again = tools
        .invoke_tool(call("once\n"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert!(again.replayed);
    let written =
        std::fs::read_to_string(mesh.config.workspace_dir().join("acme/t-2/log.txt")).unwrap();
    assert_eq!(written, "once\n");
    let status = tools.invoke_tool(call("different\n")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    mesh.stop().await;
}

#[tokio::test]
async fn an_unknown_team_is_not_found() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let status = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::Name("no-such-team".into())),
                }),
                input: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-team"));

    // The example team is served by name, too.
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::Name("research-crew".into())),
                }),
                input: "graph databases".into(),
                idempotency_key: "once".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // The same idempotency key gives the same task.
    let again = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::Name("research-crew".into())),
                }),
                input: "graph databases".into(),
                idempotency_key: "once".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.task_id, again.task_id);
    assert!(again.deduplicated);
    mesh.stop().await;
}

#[tokio::test]
async fn a_cancelled_task_stops_its_run() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    // Every model call of this crew takes ten seconds.
    let slow = research_crew().replace(
        "    memory: true\n",
        "    memory: true\n    replay_latency: 10s\n",
    );
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(&key, submit_spec(slow, "x")))
        .await
        .unwrap()
        .into_inner();
    // Wait until the run is under way on the worker.
    let mut stream = mesh
        .orchestrator()
        .watch_task(TestMesh::with_key(
            &key,
            pb::WatchTaskRequest {
                task_id: response.task_id.clone(),
                after_sequence: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = stream.message().await.unwrap() {
        if label(&r.event.unwrap()) == "task_started:research" {
            break;
        }
    }
    let cancelled = mesh
        .orchestrator()
        .cancel_task(TestMesh::with_key(
            &key,
            pb::CancelTaskRequest {
                task_id: response.task_id.clone(),
                reason: "changed my mind".into(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(cancelled.state, pb::TaskState::Cancelled as i32);
    assert_eq!(cancelled.error.unwrap().message, "changed my mind");
    let events = tokio::time::timeout(
        Duration::from_secs(5),
        watch_all(&mesh, &key, &response.task_id),
    )
    .await
    .unwrap();
    assert_eq!(label(events.last().unwrap()), "state:CANCELLED");
    // The worker let go of the run: nothing was written to the workspace.
    let workspace = mesh
        .config
        .workspace_dir()
        .join("acme")
        .join(&response.task_id);
    assert!(!workspace.join("notes.md").exists());
    mesh.stop().await;
}

#[tokio::test]
async fn the_audit_trail_is_verifiable_and_privileged_actions_fail_closed() {
    let mesh = TestMesh::start().await;
    for tenant in ["acme", "globex", "initech"] {
        mesh.create_key(tenant, "developer").await;
    }
    let trail = mesh.config.audit_file();
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_amaos"))
            .args(["audit", "verify", "--file"])
            .arg(&trail)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact, 3 records"));

    // Edit the second record: verification names it.
    let text = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let edited = lines[1].replace("globex", "hooli");
    std::fs::write(&trail, format!("{}\n{edited}\n{}\n", lines[0], lines[2])).unwrap();
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("broken at record 1"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    // Delete it instead: still named.
    std::fs::write(&trail, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    assert!(String::from_utf8_lossy(&verify().stderr).contains("broken at record 1"));
    std::fs::write(&trail, &text).unwrap();

    // Every service appends to the one chain: a crew run leaves its
    // submission and each tool call, and the chain still verifies.
    let key = mesh.create_key("acme", "developer").await;
    let id = mesh
        .submit(&key, &research_crew(), "vector databases")
        .await;
    mesh.events(&key, &id).await;
    let actions: Vec<String> = std::fs::read_to_string(&trail)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            format!(
                "{} {} {}",
                r["action"].as_str().unwrap(),
                r["tenant"].as_str().unwrap(),
                r["decision"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        actions.contains(&"task.submit acme allow".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"tool.invoke acme allow".to_owned()),
        "{actions:?}"
    );
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    mesh.stop().await;

    // With the trail unwritable, creating a key is refused and no key appears.
    let mesh =
        TestMesh::start_with(|c| c.auth.audit_file = Some("/nonexistent-dir/audit.jsonl".into()))
            .await;
    let status = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::CreateApiKeyRequest {
                name: "x".into(),
                tenant: "acme".into(),
                roles: vec!["developer".into()],
                ttl: None,
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"));
    let keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                include_revoked: true,
                tenant: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(keys.is_empty());
    // Nor is a task submitted.
    let status = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &mesh.admin_key,
            submit_spec(research_crew(), "anything"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn every_service_verifies_tokens_and_trusts_no_bare_headers() {
    let mesh = TestMesh::start().await;
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let recent = || memory::RecentRequest {
        filter: None,
        limit: 10,
    };

    // Identity headers without a token are not trusted any more.
    let mut forged = tonic::Request::new(recent());
    forged
        .metadata_mut()
        .insert("x-amaos-tenant", "acme".parse().unwrap());
    forged
        .metadata_mut()
        .insert("x-amaos-roles", "admin".parse().unwrap());
    assert_eq!(
        memory.recent(forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A valid token works; tampered, unsigned and foreign-key tokens do not.
    let token = mesh.token("acme", &["agent"]);
    memory
        .recent(TestMesh::with_key(&token, recent()))
        .await
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let unsigned = format!("eyJhbGciOiJub25lIiwia2lkIjoieCJ9.{}.", parts[1]);
    let mut bad_sig = parts[2].to_owned();
    bad_sig.replace_range(
        0..2,
        if bad_sig.starts_with("AA") {
            "BB"
        } else {
            "AA"
        },
    );
    for bad in [
        unsigned,
        format!("{}.{}.{}", parts[0], parts[1], bad_sig),
        "not-a-token".into(),
    ] {
        let status = memory
            .recent(TestMesh::with_key(&bad, recent()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}: {status:?}");
    }
    let foreign = amaos_mesh::token::sign(
        &amaos_mesh::token::claims_for("x", "acme", &["agent".into()], Duration::from_secs(60), ""),
        "made-up-key",
        &ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    );
    assert_eq!(
        memory
            .recent(TestMesh::with_key(&foreign, recent()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // The tenant comes from the token: tenant B's token sees nothing of A's.
    memory
        .remember(mesh.internal(
            "acme",
            &["agent"],
            memory::RememberRequest {
                text: "acme's secret plan".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let theirs = memory
        .recent(mesh.internal("globex", &["agent"], recent()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(theirs.is_empty());

    // The token Authenticate returns is accepted by the orchestrator, verified locally.
    let key = mesh.create_key("acme", "viewer").await;
    let issued = mesh
        .auth()
        .authenticate(amaos_proto::auth::v1::AuthenticateRequest {
            api_key: key,
            audience: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(issued.expires_at.is_some());
    mesh.orchestrator()
        .list_tasks(TestMesh::with_key(
            &issued.token,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap();
    let mut tampered = issued.token.clone();
    tampered.pop();
    tampered.push(if issued.token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let status = mesh
        .orchestrator()
        .list_tasks(TestMesh::with_key(
            &tampered,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Tokens for others: a developer may not obtain them, a tenant's admin only
    // for its own tenant, and nobody may delegate more than `agent` or `viewer`.
    let issue = |key: String, tenant: &str, role: &str| {
        TestMesh::with_key(
            &key,
            amaos_proto::auth::v1::IssueTokenRequest {
                tenant: tenant.into(),
                subject: "x".into(),
                roles: vec![role.into()],
                ..Default::default()
            },
        )
    };
    let developer = mesh.create_key("acme", "developer").await;
    let acme_admin = mesh.create_key("acme", "admin").await;
    for (request, code) in [
        (issue(developer, "acme", "agent"), Code::PermissionDenied),
        (
            issue(acme_admin.clone(), "globex", "agent"),
            Code::PermissionDenied,
        ),
        (
            issue(acme_admin.clone(), "acme", "admin"),
            Code::PermissionDenied,
        ),
    ] {
        assert_eq!(
            mesh.auth().issue_token(request).await.unwrap_err().code(),
            code
        );
    }
    mesh.auth()
        .issue_token(issue(acme_admin, "acme", "agent"))
        .await
        .unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn semantic_recall_through_the_service_never_crosses_tenants_and_forget_empties_a_session() {
    let mesh = TestMesh::start().await;
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let remember = |text: &str, session: &str| memory::RememberRequest {
        team: "crew".into(),
        agent: "researcher".into(),
        session_id: session.into(),
        kind: memory::MemoryKind::Fact as i32,
        text: text.into(),
        ..Default::default()
    };
    for (tenant, text) in [
        ("acme", "Our cafeteria serves lasagne on Thursdays."),
        ("globex", "The launch code for project X is 7731."),
        (
            "globex",
            "Globex's quarterly revenue grew by twelve percent.",
        ),
    ] {
        memory
            .remember(mesh.internal(tenant, &["agent"], remember(text, "s1")))
            .await
            .unwrap();
    }
    let recall = |query: &str| memory::RecallRequest {
        query: query.into(),
        top_k: 10,
        ..Default::default()
    };
    let acme = memory
        .recall(mesh.internal(
            "acme",
            &["agent"],
            recall("What is the secret launch code?"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.mode, memory::RecallMode::Hybrid as i32);
    let texts: Vec<String> = acme
        .memories
        .iter()
        .map(|m| m.item.as_ref().unwrap().text.clone())
        .collect();
    assert_eq!(
        texts,
        ["Our cafeteria serves lasagne on Thursdays."],
        "acme sees only its own"
    );
    let globex = memory
        .recall(mesh.internal(
            "globex",
            &["agent"],
            recall("What is the secret launch code?"),
        ))
        .await
        .unwrap()
        .into_inner();
    let best = globex.memories[0].item.as_ref().unwrap();
    assert_eq!(
        best.text, "The launch code for project X is 7731.",
        "semantic ranking"
    );
    // An empty query is refused with the field named.
    let status = memory
        .recall(mesh.internal("acme", &["agent"], recall("  ")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Forgetting globex's session leaves acme untouched.
    assert_eq!(forget_session(&mesh, &mut memory, "globex", "s1").await, 2);
    let left = memory
        .recall(mesh.internal("acme", &["agent"], recall("lasagne")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.memories.len(), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn the_shell_tool_runs_sandboxed_in_the_task_workspace_once_per_key() {
    let mesh = TestMesh::start_with(|c| {
        c.tools.max_sandboxes_per_tenant = 1;
        c.tools
            .role_tools
            .insert("developer".into(), vec!["file_read".into()]);
    })
    .await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let listed = tools
        .list_tools(mesh.internal("acme", &["agent"], tools::ListToolsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(listed.iter().any(|t| t.name == "shell" && t.side_effects));
    let shell = |roles: &[&str], args: serde_json::Value, key: &str| {
        mesh.internal(
            "acme",
            roles,
            tools::InvokeToolRequest {
                tool: "shell".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-sh".into(),
                idempotency_key: key.into(),
                ..Default::default()
            },
        )
    };
    let command = serde_json::json!({ "command": "echo ran >> log.txt; id -u; cat log.txt" });
    let first = tools
        .invoke_tool(shell(&["agent"], command.clone(), "k-1"))
        .await
        .unwrap()
        .into_inner();
    let again = tools
        .invoke_tool(shell(&["agent"], command, "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed && again.replayed);
    let result = amaos_proto::json::value_to_json(first.result.as_ref().unwrap());
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout"], "1000\nran\n", "{result}");
    let log =
        std::fs::read_to_string(mesh.config.workspace_dir().join("acme/t-sh/log.txt")).unwrap();
    assert_eq!(log, "ran\n", "the retried call did not run again");
    // A non-zero exit is a result for the model, not an error.
    let failed = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "exit 3" }),
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    let result = amaos_proto::json::value_to_json(failed.result.as_ref().unwrap());
    assert_eq!(result["exit_code"], 3);
    // Bad arguments name the field; a role without `shell` is denied.
    let status = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "", "x": 1 }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("arguments."), "{status:?}");
    let status = tools
        .invoke_tool(shell(
            &["developer"],
            serde_json::json!({ "command": "true" }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // One sandbox per tenant at a time: a second concurrent call is refused.
    let mut slow = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let running = tokio::spawn({
        let request = shell(&["agent"], serde_json::json!({ "command": "sleep 2" }), "");
        async move { slow.invoke_tool(request).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "true" }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(running.await.unwrap().is_ok());
    mesh.stop().await;
}

#[tokio::test]
async fn mcp_tools_are_namespaced_checked_and_registered_only_by_operators() {
    let demo = common::procs::bin("amaos-mcp-demo");
    let mesh = TestMesh::start_with(|c| {
        c.tools.mcp_servers.insert(
            "demo".into(),
            amaos_mesh::config::McpServerConfig {
                command: vec![demo.display().to_string()],
                read_only_paths: vec![demo.clone()],
                ..Default::default()
            },
        );
    })
    .await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let listed = tools
        .list_tools(mesh.internal("acme", &["agent"], tools::ListToolsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tools;
    let add = listed.iter().find(|t| t.name == "demo.add").unwrap();
    assert_eq!(add.source, "mcp:demo");
    assert!(add.input_schema.is_some());
    let call = |args: serde_json::Value| {
        mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "demo.add".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-mcp".into(),
                ..Default::default()
            },
        )
    };
    let sum = tools
        .invoke_tool(call(serde_json::json!({"a": 20, "b": 22})))
        .await
        .unwrap()
        .into_inner();
    let result = amaos_proto::json::value_to_json(sum.result.as_ref().unwrap());
    assert_eq!(result["content"][0]["text"], "42", "{result}");
    let status = tools
        .invoke_tool(call(serde_json::json!({"a": "x", "b": 1})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_details_bad_request().unwrap();
    assert_eq!(details.field_violations[0].field, "arguments.a");
    // Registering servers is for operators and admins.
    let status = tools
        .register_tool_server(mesh.internal(
            "acme",
            &["developer"],
            tools::RegisterToolServerRequest {
                name: "other".into(),
                transport: Some(tools::register_tool_server_request::Transport::Stdio(
                    tools::StdioServer {
                        command: "/bin/true".into(),
                        ..Default::default()
                    },
                )),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    mesh.stop().await;
}

#[tokio::test]
async fn another_tenants_token_is_denied_on_tasks_memory_and_keys_everywhere() {
    let mesh = TestMesh::start().await;
    let acme_key = mesh.create_key("acme", "developer").await;
    let id = mesh
        .submit(&acme_key, &research_crew(), "vector databases")
        .await;
    mesh.events(&acme_key, &id).await;
    // Globex's strongest credentials: an admin key and an admin token.
    let globex_admin = mesh.create_key("globex", "admin").await;
    let globex_token = mesh.token("globex", &["admin"]);

    for credential in [&globex_admin, &globex_token] {
        let mut orchestrator = mesh.orchestrator();
        // Tasks: another tenant's task does not exist for them.
        let status = orchestrator
            .get_task(TestMesh::with_key(
                credential,
                pb::GetTaskRequest {
                    task_id: id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = orchestrator
            .cancel_task(TestMesh::with_key(
                credential,
                pb::CancelTaskRequest {
                    task_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let watched = orchestrator
            .watch_task(TestMesh::with_key(
                credential,
                pb::WatchTaskRequest {
                    task_id: id.clone(),
                    after_sequence: 0,
                },
            ))
            .await;
        let code = match watched {
            Err(status) => status.code(),
            Ok(stream) => stream.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::NotFound);
        let listed = orchestrator
            .list_tasks(TestMesh::with_key(
                credential,
                pb::ListTasksRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(listed.iter().all(|t| t.task_id != id), "{listed:?}");

        // Keys: naming another tenant is refused; its keys cannot be revoked.
        let mut auth = mesh.auth();
        let status = auth
            .list_api_keys(TestMesh::with_key(
                credential,
                amaos_proto::auth::v1::ListApiKeysRequest {
                    tenant: "acme".into(),
                    include_revoked: true,
                },
            ))
            .await
            .unwrap_err();
        // Auth manages keys with API keys only: a token is not even a login there.
        let expected = if credential.starts_with("amaos_") {
            Code::PermissionDenied
        } else {
            Code::Unauthenticated
        };
        assert_eq!(status.code(), expected, "{status:?}");
    }
    let acme_keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                tenant: "acme".into(),
                include_revoked: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let acme_key_id = acme_keys[0].key_id.clone();
    let status = mesh
        .auth()
        .revoke_api_key(TestMesh::with_key(
            &globex_admin,
            amaos_proto::auth::v1::RevokeApiKeyRequest {
                key_id: acme_key_id,
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::NotFound | Code::PermissionDenied),
        "{status:?}"
    );
    // Acme's key still works.
    mesh.task(&acme_key, &id).await;

    // Memory: globex recalls nothing of acme's and forgets none of it.
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    memory
        .remember(mesh.internal(
            "acme",
            &["agent"],
            memory::RememberRequest {
                session_id: "s1".into(),
                text: "acme's launch date is the 3rd of March".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let recall = |tenant: &str| {
        mesh.internal(
            tenant,
            &["agent"],
            memory::RecallRequest {
                query: "when is the launch".into(),
                top_k: 5,
                ..Default::default()
            },
        )
    };
    let theirs = memory.recall(recall("globex")).await.unwrap().into_inner();
    assert!(
        !format!("{theirs:?}").contains("3rd of March"),
        "{theirs:?}"
    );
    assert_eq!(forget_session(&mesh, &mut memory, "globex", "s1").await, 0);
    let ours = memory.recall(recall("acme")).await.unwrap().into_inner();
    assert!(format!("{ours:?}").contains("3rd of March"), "{ours:?}");
    mesh.stop().await;
}

/// HMAC-SHA256, for forging an HS256 token keyed with the public key.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test]
async fn forged_expired_early_misaddressed_and_confused_tokens_are_refused_by_every_service() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let mesh = TestMesh::start().await;
    let (kid, key) = mesh.signing_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = amaos_mesh::token::claims_for(
        "mallory",
        "acme",
        &["admin".into()],
        Duration::from_secs(300),
        "",
    );
    let with = |change: &dyn Fn(&mut amaos_mesh::token::Claims)| {
        let mut claims = good.clone();
        change(&mut claims);
        amaos_mesh::token::sign(&claims, &kid, &key)
    };
    let payload = B64.encode(serde_json::to_vec(&good).unwrap());
    let confused = {
        let header = B64.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
        let public = key.verifying_key().to_bytes();
        let mac = hmac_sha256(&public, format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", B64.encode(mac))
    };
    let unsigned = format!(
        "{}.{payload}.",
        B64.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#))
    );
    let forged: Vec<(&str, String)> = vec![
        ("alg none", unsigned),
        ("HS256 keyed with the public key", confused),
        (
            "expired",
            with(&|c| {
                c.iat = now - 3600;
                c.nbf = now - 3600;
                c.exp = now - 600;
            }),
        ),
        ("not yet valid", with(&|c| c.nbf = now + 600)),
        ("another audience", with(&|c| c.aud = "someone-else".into())),
        ("another issuer", with(&|c| c.iss = "someone-else".into())),
        (
            "a key id auth never published",
            amaos_mesh::token::sign(&good, "kid-that-does-not-exist", &key),
        ),
    ];
    // The control: the same claims, properly signed, pass everywhere.
    let valid = amaos_mesh::token::sign(&good, &kid, &key);
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let mut orchestrator = mesh.orchestrator();
    let recent = || memory::RecentRequest {
        filter: None,
        limit: 1,
    };
    memory
        .recent(TestMesh::with_key(&valid, recent()))
        .await
        .unwrap();
    tools
        .list_tools(TestMesh::with_key(
            &valid,
            tools::ListToolsRequest::default(),
        ))
        .await
        .unwrap();
    orchestrator
        .list_tasks(TestMesh::with_key(&valid, pb::ListTasksRequest::default()))
        .await
        .unwrap();
    for (what, token) in forged {
        let codes = [
            memory
                .recent(TestMesh::with_key(&token, recent()))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            tools
                .list_tools(TestMesh::with_key(
                    &token,
                    tools::ListToolsRequest::default(),
                ))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            orchestrator
                .list_tasks(TestMesh::with_key(&token, pb::ListTasksRequest::default()))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
        ];
        assert_eq!(codes, [Code::Unauthenticated; 3], "{what}");
    }
    mesh.stop().await;
}
