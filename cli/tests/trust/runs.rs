//! Runs start only from the orchestrator with their own run token; a run token reaches only its run's memory, and only while its attempt runs.

use super::*;

#[tokio::test]
async fn runs_start_only_from_the_orchestrator_with_their_own_run_token() {
    let mesh = TestMesh::start().await;
    let mut agents = AgentsServiceClient::new(mesh.channel(&mesh.config.agents.url));
    let service_key = std::fs::read_to_string(mesh.config.service_key_file()).unwrap();
    let service_key = service_key.trim();
    let orchestrator = token_of(&mesh, service_key).await;
    let run_token = |task: &'static str, attempt: u32| {
        let mut auth = mesh.auth();
        async move {
            auth.issue_token(TestMesh::with_key(
                service_key,
                auth::IssueTokenRequest {
                    tenant: "acme".into(),
                    subject: "someone".into(),
                    roles: vec!["agent".into()],
                    task_id: task.into(),
                    attempt,
                    ttl: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token
        }
    };
    let run = |run_id: &str, attempt: u32| agents::RunTeamRequest {
        run_id: run_id.into(),
        attempt,
        team: Some(agents::run_team_request::Team::TeamName(
            "research-crew".into(),
        )),
        input: "direct".into(),
        ..Default::default()
    };

    // A viewer's key or token runs nothing directly: not without the
    // orchestrator's identity, and not with it either.
    let viewer = mesh.create_key("acme", "viewer").await;
    let viewer_token = token_of(&mesh, &viewer).await;
    for bearer in [&viewer, &viewer_token] {
        let status = agents
            .run_team(TestMesh::with_key(bearer, run("t-1", 1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = agents
            .run_team(as_service(&orchestrator, Some(bearer), run("t-1", 1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // A run token of another task, or another attempt, does not start this one.
    let other_task = run_token("t-2", 1).await;
    let other_attempt = run_token("t-1", 2).await;
    for bearer in [&other_task, &other_attempt] {
        let status = agents
            .run_team(as_service(&orchestrator, Some(bearer), run("t-1", 1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // The right run token without the orchestrator's identity: refused.
    let mine = run_token("t-1", 1).await;
    let status = agents
        .run_team(TestMesh::with_key(&mine, run("t-1", 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A worker's identity is not the orchestrator's.
    let worker_key = std::fs::read_to_string(mesh.config.worker_key_file()).unwrap();
    let worker = token_of(&mesh, worker_key.trim()).await;
    let status = agents
        .run_team(as_service(&worker, Some(&mine), run("t-1", 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Validating or listing teams needs a credential too.
    assert_eq!(
        agents
            .validate_team(agents::ValidateTeamRequest {
                spec_yaml: common::research_crew(),
            })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    agents
        .validate_team(TestMesh::with_key(
            &viewer,
            agents::ValidateTeamRequest {
                spec_yaml: common::research_crew(),
            },
        ))
        .await
        .unwrap();

    // Memory and tools take the API key a user holds, as the orchestrator
    // does (they used to answer it with "malformed token").
    let developer = mesh.create_key("acme", "developer").await;
    MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url))
        .recent(TestMesh::with_key(
            &developer,
            memory::RecentRequest {
                filter: None,
                limit: 5,
            },
        ))
        .await
        .unwrap();
    ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url))
        .list_tools(TestMesh::with_key(&developer, tools::ListToolsRequest {}))
        .await
        .unwrap();

    // Absurd times are INVALID_ARGUMENT naming the field, not a panic (a
    // key's TTL of i64::MAX seconds used to panic after its audit record).
    let status = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &mesh.admin_key,
            auth::CreateApiKeyRequest {
                name: "forever".into(),
                ttl: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ttl"), "{status:?}");
    let status = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url))
        .recent(TestMesh::with_key(
            &developer,
            memory::RecentRequest {
                filter: Some(memory::MemoryFilter {
                    after: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                limit: 5,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("filter.after"), "{status:?}");

    // A run token reaches no other task's workspace, and its own only while
    // its attempt runs (task `t-1` never ran: see the test below for one
    // that does).
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let write = |task: &str| tools::InvokeToolRequest {
        tool: "file_write".into(),
        arguments: Some(amaos_proto::json::map_to_struct(
            serde_json::json!({ "path": "note.txt", "content": "hello" })
                .as_object()
                .unwrap(),
        )),
        task_id: task.into(),
        ..Default::default()
    };
    let status = tools
        .invoke_tool(TestMesh::with_key(&mine, write("t-1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("no longer runs"), "{status:?}");
    let status = tools
        .invoke_tool(TestMesh::with_key(&mine, write("t-2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("scoped to task"), "{status:?}");

    // Run tokens carry their task and attempt, and live at most a day.
    let claims =
        amaos_mesh::token::verify_with(&mine, |_| Some(mesh.signing_key().1.verifying_key()))
            .unwrap();
    assert_eq!((claims.task.as_str(), claims.attempt), ("t-1", 1));
    let status = mesh
        .auth()
        .issue_token(TestMesh::with_key(
            service_key,
            auth::IssueTokenRequest {
                tenant: "acme".into(),
                subject: "someone".into(),
                roles: vec!["agent".into()],
                task_id: "t-3".into(),
                attempt: 1,
                ttl: Some(prost_types::Duration {
                    seconds: 2 * 24 * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    mesh.stop().await;
}

/// A run token reaches only its run's memory — the team its attempt runs, in
/// its task's session — labels what it writes with its task, and is refused
/// by tools and memory once its attempt no longer runs (before, a token
/// captured from one run read every memory of the tenant for an hour).
#[tokio::test]
async fn a_run_token_reaches_only_its_runs_memory_and_only_while_its_attempt_runs() {
    let mesh = TestMesh::start().await;
    let developer = mesh.create_key("acme", "developer").await;
    // Every model call takes ten seconds: the task is caught running.
    let slow = common::research_crew().replace(
        "    memory: true\n",
        "    memory: true\n    replay_latency: 10s\n",
    );
    let id = mesh.submit(&developer, &slow, "scoped").await;
    let running = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let task = mesh.task(&developer, &id).await;
            if task.state == pb::TaskState::Running as i32 {
                return task;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the task started");
    let service_key = std::fs::read_to_string(mesh.config.service_key_file()).unwrap();
    let issue = |attempt: u32| {
        let mut auth = mesh.auth();
        let request = TestMesh::with_key(
            service_key.trim(),
            auth::IssueTokenRequest {
                tenant: "acme".into(),
                subject: "someone".into(),
                roles: vec!["agent".into()],
                task_id: id.clone(),
                attempt,
                team: "research-crew".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                ..Default::default()
            },
        );
        async move { auth.issue_token(request).await.unwrap().into_inner().token }
    };
    let token = issue(running.attempt).await;
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let recent = |team: &str, session: &str| memory::RecentRequest {
        filter: Some(memory::MemoryFilter {
            team: team.into(),
            session_id: session.into(),
            ..Default::default()
        }),
        limit: 10,
    };

    // Its own team's memory, yes; another team's or session's, no.
    memory
        .recent(TestMesh::with_key(&token, recent("research-crew", "")))
        .await
        .unwrap();
    for (team, session) in [("other-crew", ""), ("", "someone-elses-session")] {
        let status = memory
            .recent(TestMesh::with_key(&token, recent(team, session)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let status = memory
        .remember(TestMesh::with_key(
            &token,
            memory::RememberRequest {
                team: "other-crew".into(),
                text: "planted".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A write with no team lands in its run's team, labelled with its task.
    memory
        .remember(TestMesh::with_key(
            &token,
            memory::RememberRequest {
                text: "what the run learned".into(),
                metadata: [("task_id".to_owned(), "forged".to_owned())].into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let items = memory
        .recent(TestMesh::with_key(&developer, recent("research-crew", "")))
        .await
        .unwrap()
        .into_inner()
        .items;
    let written = items
        .iter()
        .find(|i| i.text == "what the run learned")
        .expect("the write is in the run's team");
    assert_eq!(written.metadata["task_id"], id);

    // Its task's workspace while the attempt runs.
    let write = tools::InvokeToolRequest {
        tool: "file_write".into(),
        arguments: Some(amaos_proto::json::map_to_struct(
            serde_json::json!({ "path": "note.txt", "content": "hello" })
                .as_object()
                .unwrap(),
        )),
        task_id: id.clone(),
        ..Default::default()
    };
    tools
        .invoke_tool(TestMesh::with_key(&token, write.clone()))
        .await
        .unwrap();
    // A token for another attempt of the same task is refused at once.
    let other = issue(running.attempt + 1).await;
    let status = tools
        .invoke_tool(TestMesh::with_key(&other, write.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Once the task is over, the token is refused everywhere.
    mesh.orchestrator()
        .cancel_task(TestMesh::with_key(
            &developer,
            pb::CancelTaskRequest {
                task_id: id.clone(),
                reason: "done with it".into(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap();
    // Tools keep an attempt's liveness for `LIVE_FOR`: the token is refused
    // once that has lapsed, and never later than a few times that.
    let status = tokio::time::timeout(amaos_mesh::live::LIVE_FOR * 10, async {
        loop {
            match tools
                .invoke_tool(TestMesh::with_key(&token, write.clone()))
                .await
            {
                Err(status) => return status,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the token of a cancelled task is refused within ten times LIVE_FOR");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("no longer runs"), "{status:?}");
    let status = memory
        .recent(TestMesh::with_key(&token, recent("research-crew", "")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // It may read its own task, and no other.
    mesh.orchestrator()
        .get_task(TestMesh::with_key(
            &token,
            pb::GetTaskRequest {
                task_id: id.clone(),
            },
        ))
        .await
        .unwrap();
    let status = mesh
        .orchestrator()
        .list_tasks(TestMesh::with_key(&token, pb::ListTasksRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    mesh.stop().await;
}
