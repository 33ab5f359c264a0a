//! Trust between services, probed as an attacker with network access to the
//! mesh or a tenant's low-privilege key would: the router serves each call
//! only to the identity it is for, runs start only from the orchestrator
//! with the run token of that very task and attempt, and a run token reaches
//! no other task.

mod common;

use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::auth::v1 as auth;
use amaos_proto::memory::v1 as memory;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use common::TestMesh;
use tonic::Code;

/// A request carrying `service_token` as the calling service's identity and,
/// when given, `bearer` as the credential it acts with.
fn as_service<T>(service_token: &str, bearer: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = match bearer {
        Some(key) => TestMesh::with_key(key, message),
        None => tonic::Request::new(message),
    };
    request.metadata_mut().insert(
        amaos_mesh::identity::SERVICE_HEADER,
        format!("Bearer {service_token}").parse().unwrap(),
    );
    request
}

/// The token auth gives for `key`.
async fn token_of(mesh: &TestMesh, key: &str) -> String {
    mesh.auth()
        .authenticate(auth::AuthenticateRequest {
            api_key: key.into(),
            audience: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn registration(worker_id: &str, address: &str) -> router::RegisterWorkerRequest {
    router::RegisterWorkerRequest {
        worker_id: worker_id.into(),
        address: address.into(),
        teams: vec!["research-crew".into(), "*".into()],
        capacity: 100,
        ..Default::default()
    }
}

async fn workers(mesh: &TestMesh) -> Vec<router::Worker> {
    RouterServiceClient::new(mesh.channel(&mesh.config.router.url))
        .list_workers(TestMesh::with_key(
            &mesh.admin_key,
            router::ListWorkersRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .workers
}

#[tokio::test]
async fn the_router_serves_each_call_only_to_the_identity_it_is_for() {
    let mesh = TestMesh::start_with(|c| c.router.max_workers_per_identity = 3).await;
    let mut router = RouterServiceClient::new(mesh.channel(&mesh.config.router.url));
    let live = workers(&mesh).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let live = &live[0];

    // No credentials, or a user's key without a service identity.
    let status = router
        .register_worker(registration("", "http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = router
        .register_worker(TestMesh::with_key(
            &mesh.admin_key,
            registration("", "http://127.0.0.1:1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A service identity that is not a worker's: the platform admin's own
    // token, and a `worker` key made by a tenant's admin in that tenant.
    let admin_token = token_of(&mesh, &mesh.admin_key).await;
    let acme_admin = mesh.create_key("acme", "admin").await;
    let acme_worker = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &acme_admin,
            auth::CreateApiKeyRequest {
                name: "rogue".into(),
                roles: vec!["worker".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let acme_worker_token = token_of(&mesh, &acme_worker).await;
    for token in [&admin_token, &acme_worker_token] {
        let status = router
            .register_worker(as_service(
                token,
                None,
                registration("", "http://127.0.0.1:1"),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    // The workers' own key may register, but only at addresses inside
    // router.worker_networks (loopback here): not a private or a metadata
    // address, nor a name that resolves outside.
    let worker_key = std::fs::read_to_string(mesh.config.worker_key_file()).unwrap();
    let worker_token = token_of(&mesh, worker_key.trim()).await;
    for address in [
        "http://10.1.2.3:50053",
        "http://169.254.169.254",
        "http://[fd00::1]:80",
        "http://example.invalid:80",
    ] {
        let status = router
            .register_worker(as_service(&worker_token, None, registration("", address)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{address}: {status:?}"
        );
    }

    // Another worker identity (a platform admin made it) can neither take
    // over the live worker's id — and with it the traffic — nor drain it.
    let other_worker = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &mesh.admin_key,
            auth::CreateApiKeyRequest {
                name: "second-worker-identity".into(),
                roles: vec!["worker".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let other_token = token_of(&mesh, &other_worker).await;
    let status = router
        .register_worker(as_service(
            &other_token,
            None,
            registration(&live.worker_id, "http://127.0.0.2:1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = router
        .heartbeat(as_service(
            &other_token,
            None,
            router::HeartbeatRequest {
                worker_id: live.worker_id.clone(),
                in_flight: 0,
                draining: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let now = workers(&mesh).await;
    let still = now.iter().find(|w| w.worker_id == live.worker_id).unwrap();
    assert_eq!(still.address, live.address);
    assert_eq!(still.state, router::WorkerState::Live as i32);

    // Registrations are bounded per identity.
    for n in 0..3 {
        router
            .register_worker(as_service(
                &other_token,
                None,
                registration("", &format!("http://127.0.0.3:{}", 1000 + n)),
            ))
            .await
            .unwrap();
    }
    let status = router
        .register_worker(as_service(
            &other_token,
            None,
            registration("", "http://127.0.0.3:2000"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Routing and outcomes are the orchestrator's alone.
    let route = || router::RouteRequest {
        team: "research-crew".into(),
        ..Default::default()
    };
    let outcome = || router::ReportOutcomeRequest {
        worker_id: live.worker_id.clone(),
        team: "research-crew".into(),
        success: false,
        error: "forged".into(),
        scope: router::FailureScope::Unreachable as i32,
    };
    assert_eq!(
        router.route(route()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        router.report_outcome(outcome()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        router
            .route(as_service(&worker_token, None, route()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        router
            .report_outcome(as_service(&worker_token, None, outcome()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let breakers = workers(&mesh).await;
    let still = breakers
        .iter()
        .find(|w| w.worker_id == live.worker_id)
        .unwrap();
    assert_eq!(still.breaker, router::BreakerState::Closed as i32);

    // Workers' addresses are for operators and admins.
    assert_eq!(
        router
            .list_workers(router::ListWorkersRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    for role in ["viewer", "developer"] {
        let key = mesh.create_key("acme", role).await;
        assert_eq!(
            router
                .list_workers(TestMesh::with_key(
                    &key,
                    router::ListWorkersRequest::default()
                ))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied,
            "{role}"
        );
    }
    let operator = mesh.create_key("acme", "operator").await;
    router
        .list_workers(TestMesh::with_key(
            &operator,
            router::ListWorkersRequest::default(),
        ))
        .await
        .unwrap();

    // The mesh still runs its work through the real worker.
    let id = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &mesh.admin_key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::Name("research-crew".into())),
                }),
                input: "trust".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let events = mesh.events(&mesh.admin_key, &id).await;
    let task = mesh
        .orchestrator()
        .get_task(TestMesh::with_key(
            &mesh.admin_key,
            pb::GetTaskRequest { task_id: id },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{events:?}");
    mesh.stop().await;
}

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
    tokio::time::sleep(amaos_mesh::live::LIVE_FOR + std::time::Duration::from_millis(200)).await;
    let status = tools
        .invoke_tool(TestMesh::with_key(&token, write))
        .await
        .unwrap_err();
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

/// A request refused after its permission check — bad input, another
/// tenant's task, a cyclic workflow — is recorded as denied, never as
/// allowed (the orchestrator used to record `allow` first and refuse after).
#[tokio::test]
async fn refusals_after_the_permission_check_are_recorded_as_denials() {
    let mesh = TestMesh::start().await;
    let theirs = mesh.create_key("acme", "developer").await;
    let their_task = mesh
        .submit(&theirs, &common::research_crew(), "theirs")
        .await;
    let mine = mesh.create_key("hooli", "developer").await;
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .submit_task(TestMesh::with_key(
            &mine,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml("name: [unclosed".into())),
                }),
                input: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = orchestrator
        .cancel_task(TestMesh::with_key(
            &mine,
            pb::CancelTaskRequest {
                task_id: their_task.clone(),
                reason: String::new(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let step = |key: &str, after: &str| pb::WorkflowTask {
        key: key.into(),
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::Name("research-crew".into())),
        }),
        input: "x".into(),
        depends_on: vec![after.into()],
        ..Default::default()
    };
    let status = orchestrator
        .submit_workflow(TestMesh::with_key(
            &mine,
            pb::SubmitWorkflowRequest {
                name: "loop".into(),
                tasks: vec![step("a", "b"), step("b", "a")],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let decisions: Vec<String> = std::fs::read_to_string(mesh.config.audit_file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["tenant"] == "hooli" && r["action"] != "keys.create")
        .map(|r| format!("{} {} {}", r["action"], r["object"], r["decision"]))
        .collect();
    assert_eq!(
        decisions,
        [
            r#""task.submit" "tasks" "deny""#.to_owned(),
            format!(r#""task.cancel" "{their_task}" "deny""#),
            r#""workflow.submit" "workflows" "deny""#.to_owned(),
        ],
        "{decisions:?}"
    );
    mesh.stop().await;
}

/// Run tokens are signed in the orchestrator with a key auth delegated to it
/// (no call to auth per attempt). Only the platform's service key obtains a
/// delegation, and a delegated key signs nothing but run tokens: a token it
/// signs for the `admin` role, or for no task, is refused like a forgery.
#[tokio::test]
async fn only_the_platform_service_obtains_a_delegation_and_it_signs_only_run_tokens() {
    let mesh = TestMesh::start().await;
    let delegate = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let ask = |key: &str, public_key: Vec<u8>| {
        TestMesh::with_key(key, auth::DelegateRunSigningRequest { public_key })
    };
    let public = delegate.verifying_key().to_bytes().to_vec();
    // A tenant's admin, and a developer who may not even issue tokens.
    for role in ["admin", "developer"] {
        let key = mesh.create_key("acme", role).await;
        let status = mesh
            .auth()
            .delegate_run_signing(ask(&key, public.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let service_key = std::fs::read_to_string(mesh.config.service_key_file()).unwrap();
    let service_key = service_key.trim();
    let status = mesh
        .auth()
        .delegate_run_signing(ask(service_key, vec![7; 5]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let delegation = mesh
        .auth()
        .delegate_run_signing(ask(service_key, public))
        .await
        .unwrap()
        .into_inner()
        .delegation;

    // Presented as a credential, the delegation itself is refused.
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .list_tasks(TestMesh::with_key(
            &delegation,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // An admin token and a token for no task, signed with the delegated key.
    let mut forged = amaos_mesh::token::claims_for(
        "mallory",
        "acme",
        &["admin".into()],
        std::time::Duration::from_secs(60),
        "",
    );
    for (roles, task) in [(vec!["admin".to_owned()], ""), (vec!["agent".into()], "")] {
        forged.roles = roles;
        forged.task = task.into();
        let token = amaos_mesh::token::sign_delegated(&forged, &delegation, &delegate);
        let status = orchestrator
            .list_tasks(TestMesh::with_key(&token, pb::ListTasksRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // A real run is signed under a delegation and runs to its end.
    let key = mesh.create_key("acme", "developer").await;
    let task = mesh
        .submit(&key, &common::research_crew(), "delegated signing")
        .await;
    let events = mesh.events(&key, &task).await;
    assert_eq!(
        mesh.task(&key, &task).await.state,
        pb::TaskState::Succeeded as i32,
        "{events:?}"
    );
    let decisions = std::fs::read_to_string(mesh.config.audit_file()).unwrap();
    let delegations: Vec<serde_json::Value> = decisions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "tokens.delegate")
        .collect();
    assert_eq!(
        delegations
            .iter()
            .map(|r| r["decision"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["deny", "deny", "allow", "allow"],
        "the test's two refused and one granted delegations, then the orchestrator's"
    );
    mesh.stop().await;
}

/// A delegation that no longer covers the run token an attempt needs is
/// renewed, rather than every attempt falling back to a call to auth (with
/// the defaults — 15 min delegations, 10 min tasks — that fell back for more
/// than half of each delegation's life).
#[tokio::test]
async fn a_delegation_that_no_longer_covers_a_run_is_renewed() {
    let mesh = TestMesh::start_with(|config| {
        config.auth.token_ttl = std::time::Duration::from_secs(40);
        config.orchestrator.task_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let delegations = || {
        std::fs::read_to_string(mesh.config.audit_file())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["action"] == "tokens.delegate" && r["decision"] == "allow")
            .count()
    };
    // Each run token lives 35 s (the task's 5 s plus the margin); the first
    // delegation covers 40 s, so 11 s later a run needs a new one.
    for (pause, expected) in [(0, 1), (11, 2)] {
        tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
        let task = mesh.submit(&key, &common::research_crew(), "renewal").await;
        let events = mesh.events(&key, &task).await;
        assert_eq!(
            mesh.task(&key, &task).await.state,
            pb::TaskState::Succeeded as i32,
            "{events:?}"
        );
        assert_eq!(delegations(), expected);
    }
    mesh.stop().await;
}
