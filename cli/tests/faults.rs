//! Fault tests across processes on the Redis backend: a worker or an
//! orchestrator replica killed with SIGKILL mid-task, and Redis restarted with
//! AOF; no acknowledged task is lost, and no two attempts overlap. The batch
//! variants (200 side-effecting tasks per fault) are in `chaos.rs`.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amaos_mesh::caller;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use common::procs::{Processes, env_for, free_port, spawn, wait_until_serving};
use tonic::transport::{Channel, Endpoint};

/// One agent, three model calls of 700 ms each: long enough to kill mid-run.
const SLOW_CREW: &str = r#"name: slow-crew
agents:
  - name: a
    role: r
    goal: g
    replay_latency: 700ms
    replay:
      - say: "step one of {input}"
      - say: "step two of {input}"
      - say: "done with {input}"
crew:
  tasks:
    - { name: one, description: "one {input}", agent: a }
    - { name: two, description: "two {input}", agent: a, context: [one] }
    - { name: three, description: "three {input}", agent: a, context: [two] }
"#;

fn fault_env(dir: &std::path::Path, redis_url: &str) -> HashMap<String, String> {
    let mut env = env_for(dir);
    let prefix = format!("amaos-fault-{}", amaos_mesh::new_id());
    for (k, v) in [
        ("AMAOS_ROUTER__BACKEND", "redis".to_owned()),
        ("AMAOS_ROUTER__REDIS_URL", redis_url.to_owned()),
        ("AMAOS_ROUTER__REDIS_PREFIX", prefix.clone()),
        ("AMAOS_ORCHESTRATOR__BACKEND", "redis".to_owned()),
        ("AMAOS_ORCHESTRATOR__REDIS_URL", redis_url.to_owned()),
        (
            "AMAOS_ORCHESTRATOR__REDIS_PREFIX",
            format!("amaos-fault-{}", amaos_mesh::new_id()),
        ),
        ("AMAOS_ORCHESTRATOR__LEASE", "1s".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_MAX_ATTEMPTS", "10".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_INITIAL_BACKOFF", "100ms".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_MAX_BACKOFF", "500ms".into()),
        ("AMAOS_ROUTER__HEARTBEAT_INTERVAL", "200ms".into()),
        ("AMAOS_ROUTER__WORKER_TTL", "1s".into()),
        ("AMAOS_LIMITS__DRAIN_TIMEOUT", "1s".into()),
    ] {
        env.insert(k.into(), v);
    }
    env
}

fn client(url: &str) -> OrchestratorServiceClient<Channel> {
    OrchestratorServiceClient::new(
        Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect_lazy(),
    )
}

fn with_key<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    caller::set_bearer(request.metadata_mut(), key).unwrap();
    request
}

async fn submit(
    orchestrator: &mut OrchestratorServiceClient<Channel>,
    key: &str,
    input: &str,
) -> String {
    orchestrator
        .submit_task(with_key(
            key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml(SLOW_CREW.into())),
                }),
                input: input.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Watches until the run has started on a worker.
async fn wait_until_running(
    orchestrator: &mut OrchestratorServiceClient<Channel>,
    key: &str,
    id: &str,
) {
    let mut stream = orchestrator
        .watch_task(with_key(
            key,
            pb::WatchTaskRequest {
                task_id: id.into(),
                after_sequence: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = stream.message().await.unwrap() {
            if let Some(Kind::RunEvent(run)) = r.event.and_then(|e| e.kind)
                && matches!(run.payload, Some(Payload::Message(_)))
            {
                return;
            }
        }
        panic!("the task finished before it was seen running");
    })
    .await
    .expect("the run started");
}

/// Polls until the task finishes (any replica may answer), then returns it and its events.
async fn wait_finished(url: &str, key: &str, id: &str) -> (pb::Task, Vec<pb::TaskEvent>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut orchestrator = client(url);
        if let Ok(response) = orchestrator
            .get_task(with_key(key, pb::GetTaskRequest { task_id: id.into() }))
            .await
        {
            let task = response.into_inner().task.unwrap();
            let state = pb::TaskState::try_from(task.state).unwrap();
            if matches!(
                state,
                pb::TaskState::Succeeded
                    | pb::TaskState::Failed
                    | pb::TaskState::Cancelled
                    | pb::TaskState::TimedOut
            ) {
                let mut stream = orchestrator
                    .watch_task(with_key(
                        key,
                        pb::WatchTaskRequest {
                            task_id: id.into(),
                            after_sequence: 0,
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                let mut events = Vec::new();
                while let Some(r) = stream.message().await.unwrap() {
                    events.push(r.event.unwrap());
                }
                return (task, events);
            }
        }
        assert!(Instant::now() < deadline, "task {id} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After the first run event of a newer attempt, none of an older one follows,
/// and sequence numbers have no gaps.
fn assert_attempts_never_overlap(events: &[pb::TaskEvent]) {
    let mut newest = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        if let Some(Kind::RunEvent(run)) = &e.kind {
            assert!(
                run.attempt >= newest,
                "attempt {} wrote after attempt {newest} took over",
                run.attempt
            );
            newest = run.attempt;
        }
    }
}

fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The current state of task `id`.
async fn task_now(
    orchestrator: &mut OrchestratorServiceClient<Channel>,
    key: &str,
    id: &str,
) -> pb::Task {
    orchestrator
        .get_task(with_key(key, pb::GetTaskRequest { task_id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

/// `env` for one more agents worker, on ports of its own.
fn another_worker(env: &HashMap<String, String>) -> HashMap<String, String> {
    let mut second = env.clone();
    let port = free_port();
    second.insert("AMAOS_AGENTS__LISTEN".into(), format!("127.0.0.1:{port}"));
    second.insert(
        "AMAOS_AGENTS__URL".into(),
        format!("http://127.0.0.1:{port}"),
    );
    second.insert(
        "AMAOS_AGENTS__ADMIN_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    second
}

/// The six services as processes on `env`, once they all serve.
async fn start_services(env: &HashMap<String, String>) -> Processes {
    let mut processes = Processes(Vec::new());
    for service in [
        "auth",
        "router",
        "memory",
        "tools",
        "agents",
        "orchestrator",
    ] {
        processes.0.push((service, spawn(service, env)));
    }
    wait_until_serving(env).await;
    processes
}

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn admin_key(dir: &std::path::Path) -> String {
    let path = dir.join("admin.key");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "auth wrote no admin key");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// The six services as processes on `env`, plus a second agents worker on
/// its own port; returns them, the second worker's environment and a router
/// client, once both workers are registered.
async fn start_with_two_workers(
    dir: &std::path::Path,
    env: &HashMap<String, String>,
) -> (
    Processes,
    HashMap<String, String>,
    RouterServiceClient<Channel>,
) {
    let mut processes = Processes(Vec::new());
    for service in [
        "auth",
        "router",
        "memory",
        "tools",
        "orchestrator",
        "agents",
    ] {
        processes.0.push((service, spawn(service, env)));
    }
    let second = another_worker(env);
    processes.0.push(("agents-2", spawn("agents", &second)));
    wait_until_serving(env).await;
    let mut router = RouterServiceClient::new(
        Endpoint::from_shared(env["AMAOS_ROUTER__URL"].clone())
            .unwrap()
            .connect_lazy(),
    );
    // Generous: on a loaded two-core CI machine seven debug binaries start
    // at once, one of them loading the embedding model.
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = admin_key(dir);
    while router
        .list_workers(with_key(&key, router::ListWorkersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .workers
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "two workers did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (processes, second, router)
}

#[tokio::test]
async fn a_task_survives_the_kill_of_its_agents_worker() {
    let dir = tempfile::tempdir().unwrap();
    let env = fault_env(dir.path(), &redis_url());
    let (mut processes, second, mut router) = start_with_two_workers(dir.path(), &env).await;
    let key = admin_key(dir.path());
    let url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut orchestrator = client(&url);
    let id = submit(&mut orchestrator, &key, "resilience").await;
    wait_until_running(&mut orchestrator, &key, &id).await;

    // Kill the worker running it.
    let task = task_now(&mut orchestrator, &key, &id).await;
    let workers = router
        .list_workers(with_key(
            &admin_key(dir.path()),
            router::ListWorkersRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .workers;
    let address = workers
        .iter()
        .find(|w| w.worker_id == task.worker_id)
        .unwrap()
        .address
        .clone();
    let victim = if address == second["AMAOS_AGENTS__URL"] {
        "agents-2"
    } else {
        "agents"
    };
    let (_, child) = processes
        .0
        .iter_mut()
        .find(|(name, _)| *name == victim)
        .unwrap();
    kill9(child);

    let (task, events) = wait_finished(&url, &key, &id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.output, "done with resilience");
    assert!(task.attempt >= 2, "{task:?}");
    assert_ne!(
        task.worker_id,
        workers
            .iter()
            .find(|w| w.address == address)
            .unwrap()
            .worker_id
    );
    assert_attempts_never_overlap(&events);
}

#[tokio::test]
async fn a_task_survives_the_kill_of_its_orchestrator_replica() {
    let dir = tempfile::tempdir().unwrap();
    let env = fault_env(dir.path(), &redis_url());
    let mut processes = start_services(&env).await;
    let key = admin_key(dir.path());
    let first_url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut first = client(&first_url);
    let id = submit(&mut first, &key, "failover").await;
    wait_until_running(&mut first, &key, &id).await;

    // A second replica over the same Redis, then the first dies mid-dispatch.
    let mut replica = env.clone();
    let port = free_port();
    replica.insert(
        "AMAOS_ORCHESTRATOR__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    );
    replica.insert(
        "AMAOS_ORCHESTRATOR__ADMIN_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    processes
        .0
        .push(("orchestrator-2", spawn("orchestrator", &replica)));
    let (_, child) = processes
        .0
        .iter_mut()
        .find(|(name, _)| *name == "orchestrator")
        .unwrap();
    kill9(child);

    let second_url = format!("http://127.0.0.1:{port}");
    let (task, events) = wait_finished(&second_url, &key, &id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.output, "done with failover");
    assert!(task.attempt >= 2, "{task:?}");
    let took_over = events.iter().any(|e| match &e.kind {
        Some(Kind::StateChanged(s)) => s.reason.contains("stalled"),
        _ => false,
    });
    assert!(
        took_over,
        "the second replica took over the stalled attempt"
    );
    assert_attempts_never_overlap(&events);
}

#[tokio::test]
async fn no_acknowledged_task_is_lost_when_redis_restarts() {
    let Ok(status) = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    else {
        panic!("redis-server is needed for this test (scripts/test installs it)");
    };
    assert!(status.success());
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis_port = free_port();
    let start_redis = || {
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&redis_dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut redis = start_redis();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let env = fault_env(dir.path(), &redis_url);
    let processes = start_services(&env).await;
    let key = admin_key(dir.path());
    let url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut orchestrator = client(&url);
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        acknowledged.push(submit(&mut orchestrator, &key, &format!("job {i}")).await);
    }
    // A clean restart: Redis writes its AOF and comes back from it.
    let _ = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "shutdown"])
        .status();
    let _ = redis.wait();
    redis = start_redis();
    for id in &acknowledged {
        let (task, events) = wait_finished(&url, &key, id).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
        assert_attempts_never_overlap(&events);
    }
    drop(processes);
    let _ = redis.kill();
    let _ = redis.wait();
}

#[tokio::test]
async fn a_draining_replica_finishes_its_attempts_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = fault_env(dir.path(), &redis_url());
    // A long lease, so only the drain (not a takeover) can finish the task.
    env.insert("AMAOS_ORCHESTRATOR__LEASE".into(), "60s".into());
    env.insert("AMAOS_LIMITS__DRAIN_TIMEOUT".into(), "15s".into());
    let mut processes = start_services(&env).await;
    let key = admin_key(dir.path());
    let url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut orchestrator = client(&url);
    let id = submit(&mut orchestrator, &key, "drain").await;
    wait_until_running(&mut orchestrator, &key, &id).await;

    let (_, child) = processes
        .0
        .iter_mut()
        .find(|(name, _)| *name == "orchestrator")
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not exit within its drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exited with {status}");

    // Another replica reads the task from the shared store: finished, by attempt 1.
    let mut replica = env.clone();
    let port = free_port();
    replica.insert(
        "AMAOS_ORCHESTRATOR__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    );
    replica.insert(
        "AMAOS_ORCHESTRATOR__ADMIN_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    processes
        .0
        .push(("orchestrator-2", spawn("orchestrator", &replica)));
    let (task, events) = wait_finished(&format!("http://127.0.0.1:{port}"), &key, &id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.attempt, 1, "the draining replica finished it itself");
    assert_attempts_never_overlap(&events);
}

/// A crew whose second agent's call waits for a person: the first agent
/// appends to `log.txt`, the gated one to `pay.txt`, so each file counts how
/// often its call really ran.
const GATED_CREW: &str = r#"name: gated-crew
on_rejection: fail
agents:
  - name: logger
    role: r
    goal: g
    tools: [file_write]
    replay:
      - tool: { name: file_write, args: { path: log.txt, content: "start {input}\n", append: true } }
      - say: "logged"
  - name: payer
    role: r
    goal: g
    tools: [file_write]
    approval: required
    replay:
      - tool: { name: file_write, args: { path: pay.txt, content: "pay {input}\n", append: true } }
      - say: "paid {input}"
crew:
  tasks:
    - { name: log, description: "log {input}", agent: logger }
    - { name: pay, description: "pay {input}", agent: payer }
"#;

#[tokio::test]
async fn an_approval_outlives_the_kill_of_its_worker_and_its_call_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = fault_env(dir.path(), &redis_url());
    let mut processes = start_services(&env).await;
    let key = admin_key(dir.path());
    let url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut orchestrator = client(&url);
    let id = orchestrator
        .submit_task(with_key(
            &key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml(GATED_CREW.into())),
                }),
                input: "invoice 7".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;

    // The run stops before the gated call; the task waits holding no worker.
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let task = task_now(&mut orchestrator, &key, &id).await;
        if task.state == pb::TaskState::InputRequired as i32 {
            break task;
        }
        assert!(Instant::now() < deadline, "never INPUT_REQUIRED: {task:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let workspace = dir
        .path()
        .join("workspaces")
        .join(&waiting.tenant)
        .join(&id);
    assert_eq!(
        std::fs::read_to_string(workspace.join("log.txt")).unwrap(),
        "start invoice 7\n"
    );
    assert!(!workspace.join("pay.txt").exists(), "the gated call ran");

    // The only worker dies while the person thinks; a new one, elsewhere,
    // takes its place (the dead one's registration lingers until its TTL:
    // a route to it finds nobody and the attempt goes to the new one).
    let (_, child) = processes
        .0
        .iter_mut()
        .find(|(name, _)| *name == "agents")
        .unwrap();
    kill9(child);
    let second = another_worker(&env);
    processes.0.push(("agents-2", spawn("agents", &second)));

    let approvals = orchestrator
        .list_approvals(with_key(
            &key,
            pb::ListApprovalsRequest {
                task_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0].tool, "file_write");
    orchestrator
        .decide_approval(with_key(
            &key,
            pb::DecideApprovalRequest {
                task_id: id.clone(),
                approval_id: approvals[0].approval_id.clone(),
                decision: pb::Decision::Approve as i32,
                comment: "checked".into(),
            },
        ))
        .await
        .unwrap();

    let (task, events) = wait_finished(&url, &key, &id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.output, "paid invoice 7");
    assert_ne!(task.worker_id, waiting.worker_id, "a new worker resumed it");
    // The logger's call replayed from the Redis journal; the approved call ran once.
    assert_eq!(
        std::fs::read_to_string(workspace.join("log.txt")).unwrap(),
        "start invoice 7\n"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("pay.txt")).unwrap(),
        "pay invoice 7\n"
    );
    assert_attempts_never_overlap(&events);
}
