//! A crew end to end, in plaintext and under mTLS; specs and teams that cannot run; cancellation.

use super::*;

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
