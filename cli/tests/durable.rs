//! The orchestrator's durable behaviour through the real mesh: workflows,
//! retries and fallbacks, rate limits, and the Redis backend end to end.

mod common;

use std::time::Duration;

use amaos_mesh::config::StoreBackend;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use common::{TestMesh, research_crew};
use tonic::Code;
use tonic_types::StatusExt;

fn named(team: &str) -> Option<pb::TeamRef> {
    Some(pb::TeamRef {
        team: Some(pb::team_ref::Team::Name(team.into())),
    })
}

fn inline(spec: String) -> Option<pb::TeamRef> {
    Some(pb::TeamRef {
        team: Some(pb::team_ref::Team::SpecYaml(spec)),
    })
}

async fn finished(mesh: &TestMesh, key: &str, task_id: &str) -> (pb::Task, Vec<pb::TaskEvent>) {
    let events = mesh.events(key, task_id).await;
    (mesh.task(key, task_id).await, events)
}

/// A crew whose only agent calls a tool once and then answers: with a budget
/// of one model call it always fails with class `budget`, which is not retried.
fn over_budget_spec() -> String {
    r#"name: over-budget
agents:
  - name: a
    role: r
    goal: g
    tools: [file_list]
    replay:
      - tool: { name: file_list }
      - say: "never reached"
crew:
  tasks:
    - { name: t, description: "do {input}", agent: a }
budget:
  max_steps: 1
"#
    .into()
}

#[tokio::test]
async fn a_workflow_runs_its_dag_and_passes_outputs_on() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let task = |key: &str, input: &str, deps: &[&str]| pb::WorkflowTask {
        key: key.into(),
        team: named("research-crew"),
        input: input.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    };
    let response = mesh
        .orchestrator()
        .submit_workflow(TestMesh::with_key(
            &key,
            pb::SubmitWorkflowRequest {
                name: "report".into(),
                tasks: vec![
                    task("intro", "caching", &[]),
                    task("detail", "eviction", &["intro"]),
                    task("summary", "both", &["intro", "detail"]),
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.task_ids.len(), 3);
    let (summary, _) = finished(&mesh, &key, &response.task_ids["summary"]).await;
    assert_eq!(
        summary.state,
        pb::TaskState::Succeeded as i32,
        "{summary:?}"
    );
    let mut finish_times = Vec::new();
    for k in ["intro", "detail", "summary"] {
        let (t, _) = finished(&mesh, &key, &response.task_ids[k]).await;
        assert_eq!(t.state, pb::TaskState::Succeeded as i32);
        assert_eq!(t.workflow_id, response.workflow_id);
        finish_times.push((t.started_at.unwrap().seconds, t.started_at.unwrap().nanos));
    }
    let (detail, detail_events) = finished(&mesh, &key, &response.task_ids["detail"]).await;
    let intro = finished(&mesh, &key, &response.task_ids["intro"]).await.0;
    // The dependency's output reached the dependent's agents as context.
    let prompted_with_intro = detail_events.iter().any(|e| match &e.kind {
        Some(Kind::RunEvent(r)) => matches!(
            &r.payload,
            Some(amaos_proto::agents::v1::run_event::Payload::Message(m))
                if m.role == "user" && m.content.contains("Context from `intro`") && m.content.contains(&intro.output)
        ),
        _ => false,
    });
    assert!(
        prompted_with_intro,
        "the detail task saw the intro's output"
    );
    assert!(
        (
            detail.started_at.unwrap().seconds,
            detail.started_at.unwrap().nanos
        ) >= (
            intro.finished_at.unwrap().seconds,
            intro.finished_at.unwrap().nanos
        ),
        "a task starts only after its dependency finished"
    );

    // A cycle or an unknown reference is refused, naming the task.
    for (tasks, named_task) in [
        (
            vec![task("a", "x", &["b"]), task("b", "x", &["a"])],
            "is part of a dependency cycle",
        ),
        (vec![task("a", "x", &["ghost"])], "`ghost`"),
    ] {
        let status = mesh
            .orchestrator()
            .submit_workflow(TestMesh::with_key(
                &key,
                pb::SubmitWorkflowRequest {
                    tasks,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(named_task),
            "{}",
            status.message()
        );
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_failed_dependency_fails_its_dependents() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let response = mesh
        .orchestrator()
        .submit_workflow(TestMesh::with_key(
            &key,
            pb::SubmitWorkflowRequest {
                tasks: vec![
                    pb::WorkflowTask {
                        key: "first".into(),
                        team: inline(over_budget_spec()),
                        input: "x".into(),
                        ..Default::default()
                    },
                    pb::WorkflowTask {
                        key: "second".into(),
                        team: named("research-crew"),
                        input: "y".into(),
                        depends_on: vec!["first".into()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (second, _) = finished(&mesh, &key, &response.task_ids["second"]).await;
    assert_eq!(second.state, pb::TaskState::Failed as i32);
    let message = second.error.unwrap().message;
    assert!(message.contains("dependency `first`"), "{message}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_fallback_team_runs_when_the_main_team_fails() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: inline(over_budget_spec()),
                input: "search engines".into(),
                fallbacks: vec![pb::Fallback {
                    target: Some(pb::fallback::Target::TeamName("research-crew".into())),
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (task, events) = finished(&mesh, &key, &response.task_id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert!(task.output.starts_with("Brief: search engines"));
    assert_eq!(task.attempt, 2);
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StateChanged(s)) => Some(s.reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("attempt 1 failed")),
        "{reasons:?}"
    );

    // Without a fallback the same failure is final, and not retried.
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: inline(over_budget_spec()),
                input: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (task, _) = finished(&mesh, &key, &response.task_id).await;
    assert_eq!(task.state, pb::TaskState::Failed as i32);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.error.unwrap().class, pb::ErrorClass::Budget as i32);
    mesh.stop().await;
}

#[tokio::test]
async fn submissions_over_the_tenant_rate_are_refused_with_a_retry_time() {
    let mesh = TestMesh::start_with(|c| {
        c.orchestrator.tenant_rate = 0.5;
        c.orchestrator.tenant_burst = 1;
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let submit = || {
        TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: named("research-crew"),
                input: "x".into(),
                ..Default::default()
            },
        )
    };
    mesh.orchestrator().submit_task(submit()).await.unwrap();
    let status = mesh.orchestrator().submit_task(submit()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        retry > Duration::from_millis(500) && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    // Another tenant has its own budget.
    let other = mesh.create_key("globex", "developer").await;
    mesh.orchestrator()
        .submit_task(TestMesh::with_key(
            &other,
            pb::SubmitTaskRequest {
                team: named("research-crew"),
                input: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn the_example_crew_runs_with_tasks_and_api_keys_in_redis() {
    let prefix = format!("amaos-e2e-{}", amaos_mesh::new_id());
    let mesh = TestMesh::start_with(|c| {
        let url = std::env::var("AMAOS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        c.orchestrator.backend = StoreBackend::Redis;
        c.orchestrator.redis_url = url.clone();
        c.orchestrator.redis_prefix = prefix.clone();
        // The bootstrap admin key, the orchestrator's service key and the
        // key made below all live in Redis.
        c.auth.key_store = amaos_mesh::config::KeyStoreBackend::Redis;
        c.auth.redis_url = url;
        c.auth.redis_prefix = prefix;
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: inline(research_crew()),
                input: "queues".into(),
                idempotency_key: "redis-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (task, events) = finished(&mesh, &key, &response.task_id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(
        task.output,
        "Brief: queues — what it is, who uses it, and the trade-offs to weigh."
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
    }
    assert!(!task.worker_id.is_empty());
    let again = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: inline(research_crew()),
                input: "queues".into(),
                idempotency_key: "redis-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.task_id, response.task_id);
    mesh.stop().await;
}

#[tokio::test]
async fn a_task_past_its_deadline_ends_timed_out_and_its_run_stops() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let slow = research_crew().replace(
        "    memory: true\n",
        "    memory: true\n    replay_latency: 5s\n",
    );
    let response = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                team: inline(slow),
                input: "x".into(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    let (task, _) = finished(&mesh, &key, &response.task_id).await;
    assert_eq!(task.state, pb::TaskState::TimedOut as i32, "{task:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "ended at the deadline, not after the run"
    );
    let workspace = mesh
        .config
        .workspace_dir()
        .join("acme")
        .join(&response.task_id);
    assert!(
        !workspace.join("notes.md").exists(),
        "the run stopped before its first tool call"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_worker_at_capacity_delays_tasks_without_spending_their_attempts() {
    // One run at a time on the only worker, and no retries: a refusal that
    // counted as an attempt would fail the tasks that find the worker busy.
    let mesh = TestMesh::start_with(|c| {
        c.agents.capacity = 1;
        c.orchestrator.retry_max_attempts = 1;
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let spec = r#"name: one-at-a-time
agents:
  - name: a
    role: r
    goal: g
    replay_latency: 300ms
    replay:
      - say: "done with {input}"
crew:
  tasks:
    - { name: t, description: "do {input}", agent: a }
"#;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(mesh.submit(&key, spec, &format!("job {i}")).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let (task, _) = finished(&mesh, &key, id).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
        assert_eq!(task.attempt, 1, "{task:?}");
        assert!(task.output.contains(&format!("job {i}")), "{task:?}");
    }
    mesh.stop().await;
}

/// The router's registry lost (Redis flushed or restarted empty): until the
/// workers heartbeat and register again, routing finds no worker for any
/// team. A task dispatched in that window waits for one within its
/// deadline; it used to fail at once as if its team did not exist.
#[tokio::test]
async fn a_task_waits_for_workers_to_register_again_after_the_registry_is_lost() {
    let prefix = format!("amaos-e2e-{}", amaos_mesh::new_id());
    let url =
        std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mesh = TestMesh::start_with(|c| {
        c.router.backend = StoreBackend::Redis;
        c.router.redis_url = url.clone();
        c.router.redis_prefix = prefix.clone();
    })
    .await;
    let key = mesh.admin_key.clone();
    let first = mesh.submit(&key, &research_crew(), "before").await;
    mesh.events(&key, &first).await;
    assert_eq!(
        mesh.task(&key, &first).await.state,
        pb::TaskState::Succeeded as i32
    );

    // Wipe every key of the router, as an empty Redis would be.
    let wipe = std::process::Command::new("redis-cli")
        .args(["-u", &url, "EVAL"])
        .arg("local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n")
        .args(["0", &format!("{prefix}*")])
        .output()
        .expect("redis-cli runs");
    assert!(wipe.status.success(), "{wipe:?}");
    let deleted: u64 = String::from_utf8_lossy(&wipe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(deleted > 0, "the router kept its registry under {prefix}");

    let second = mesh.submit(&key, &research_crew(), "after").await;
    mesh.events(&key, &second).await;
    let task = mesh.task(&key, &second).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    mesh.stop().await;
}

/// ListTasks holds both task stores to one rule: a page token is one it
/// handed out, and anything else is INVALID_ARGUMENT naming `page_token`,
/// never the first page again.
#[tokio::test]
async fn a_malformed_page_token_is_refused_alike_in_memory_and_in_redis() {
    let prefix = format!("amaos-e2e-{}", amaos_mesh::new_id());
    for redis in [false, true] {
        let mesh = TestMesh::start_with(|c| {
            if redis {
                c.orchestrator.backend = StoreBackend::Redis;
                c.orchestrator.redis_url = std::env::var("AMAOS_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                c.orchestrator.redis_prefix = prefix.clone();
            }
        })
        .await;
        let key = mesh.create_key("acme", "developer").await;
        for input in ["one", "two"] {
            mesh.submit(&key, &research_crew(), input).await;
        }
        let list = |page_token: &str| {
            let mut orchestrator = mesh.orchestrator();
            let request = TestMesh::with_key(
                &key,
                pb::ListTasksRequest {
                    page_size: 1,
                    page_token: page_token.into(),
                    ..Default::default()
                },
            );
            async move { orchestrator.list_tasks(request).await }
        };
        let first = list("").await.unwrap().into_inner();
        assert_eq!(first.tasks.len(), 1);
        let second = list(&first.next_page_token).await.unwrap().into_inner();
        assert_eq!(second.tasks.len(), 1);
        assert_ne!(second.tasks[0].task_id, first.tasks[0].task_id);
        for bad in ["garbage", "zzzz", &first.next_page_token.to_uppercase()] {
            let status = list(bad).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{bad} (redis: {redis})"
            );
            let violations = status.get_details_bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, "page_token");
        }
        mesh.stop().await;
    }
}
