//! The suite every [`TaskBackend`] passes: one scenario per async function,
//! each on a fresh backend, so the in-process and Redis backends are held to
//! the same behaviour. `tests/conformance.rs` runs each scenario as its own
//! test on each backend; the rate limiters have their own scenario.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_orchestrator::backend::{
    Applied, Claim, Claimed, Lease, Outcome, RateLimiter, Record, Swept, TaskBackend,
};
use amaos_orchestrator::task::{ErrorClass, Task, TaskError, TaskState};
use amaos_proto::agents::v1 as agents;
use amaos_proto::orchestrator::v1 as pb;

use super::fixtures::sample;

fn run_event(id: &str, attempt: u32) -> agents::RunEvent {
    agents::RunEvent {
        sequence: 1,
        run_id: id.into(),
        attempt,
        at: None,
        agent: "a".into(),
        payload: Some(agents::run_event::Payload::Message(agents::Message {
            role: "assistant".into(),
            content: "hi".into(),
        })),
    }
}

fn states(events: &[pb::TaskEvent]) -> Vec<TaskState> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::task_event::Kind::StateChanged(s)) => TaskState::from_proto(s.to),
            _ => None,
        })
        .collect()
}

const LEASE: Duration = Duration::from_secs(30);

async fn claim(backend: &dyn TaskBackend) -> Option<Claim> {
    for _ in 0..20 {
        if let Claimed::Attempt(claim) = backend.claim("c1", LEASE).await.unwrap() {
            return Some(*claim);
        }
    }
    None
}

fn failed(message: &str) -> TaskError {
    TaskError {
        class: ErrorClass::Transient,
        message: message.into(),
    }
}

/// Sweeps until a pass over a small store is surely complete.
async fn sweep(b: &dyn TaskBackend) -> Swept {
    let mut total = Swept::default();
    for _ in 0..3 {
        let s = b.sweep(LEASE, 10_000).await.unwrap();
        total.examined += s.examined;
        total.requeued += s.requeued;
        total.timed_out += s.timed_out;
        total.ended += s.ended;
        total.consumers_removed += s.consumers_removed;
    }
    total
}

/// Stores, reads, lists newest first, and deduplicates by idempotency key.
pub async fn create_get_list_and_idempotency(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let first = sample(&tenant);
    let second = sample(&tenant);
    assert_eq!(
        b.create(&tenant, &first.id, vec![first.clone()], Some("k"))
            .await
            .unwrap(),
        None
    );
    let again = sample(&tenant);
    assert_eq!(
        b.create(&tenant, &again.id, vec![again.clone()], Some("k"))
            .await
            .unwrap(),
        Some(first.id.clone())
    );
    assert!(b.get(&tenant, &again.id).await.unwrap().is_none());
    b.create(&tenant, &second.id, vec![second.clone()], None)
        .await
        .unwrap();
    let got = b.get(&tenant, &first.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Queued);
    let listed = b.list(&tenant, None, None, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [&second.id, &first.id]
    );
    let page = b
        .list(&tenant, Some(&second.id), None, None, 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let none = b
        .list(&tenant, None, Some(TaskState::Succeeded), None, 10)
        .await
        .unwrap();
    assert!(none.is_empty());
    let events = b
        .events(&tenant, &first.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        states(&events.events),
        [TaskState::Pending, TaskState::Queued]
    );
    assert_eq!(
        events.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
}

/// Claim → worker → run event → success: states, fencing token and log.
pub async fn an_attempt_runs_to_success(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.expect("a claim");
    assert_eq!(c.task.id, task.id);
    assert_eq!(c.attempt(), 1);
    assert_eq!(
        b.record(&task.id, 1, Record::Worker("w1".into()))
            .await
            .unwrap(),
        Applied::Recorded
    );
    assert_eq!(
        b.record(&task.id, 1, Record::Run(vec![run_event(&task.id, 1)]))
            .await
            .unwrap(),
        Applied::Recorded
    );
    assert_eq!(b.renew(&c, LEASE).await.unwrap(), Lease::Held);
    let done = b
        .finish(
            &c,
            Outcome::Succeeded {
                output: "out".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done, Applied::Recorded);
    let got = b.get(&tenant, &task.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Succeeded);
    assert_eq!(got.output.as_deref(), Some("out"));
    assert_eq!(got.worker_id, "w1");
    assert_eq!(b.renew(&c, LEASE).await.unwrap(), Lease::Finished);
    let page = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(page.finished);
    assert_eq!(
        states(&page.events),
        [
            TaskState::Pending,
            TaskState::Queued,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
    let seqs: Vec<u64> = page.events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Finished tasks accept no more events.
    assert_eq!(
        b.record(&task.id, 1, Record::Run(vec![run_event(&task.id, 1)]))
            .await
            .unwrap(),
        Applied::Stale
    );
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
}

/// A takeover after the lease expires fences out the stalled attempt.
pub async fn a_stale_attempt_is_fenced_out(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let short = Duration::from_millis(100);
    let stalled = loop {
        if let Claimed::Attempt(c) = b.claim("c1", short).await.unwrap() {
            break *c;
        }
    };
    assert!(
        b.reclaim("c2", short, 10).await.unwrap().is_empty(),
        "the lease still holds"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut taken = b.reclaim("c2", short, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    let newer = taken.remove(0);
    assert_eq!(newer.attempt(), 2);
    assert_eq!(b.renew(&stalled, LEASE).await.unwrap(), Lease::Lost);
    assert_eq!(
        b.record(&task.id, 1, Record::Run(vec![run_event(&task.id, 1)]))
            .await
            .unwrap(),
        Applied::Stale
    );
    assert_eq!(
        b.finish(
            &stalled,
            Outcome::Succeeded {
                output: "stale".into()
            }
        )
        .await
        .unwrap(),
        Applied::Stale
    );
    assert_eq!(
        b.finish(
            &newer,
            Outcome::Succeeded {
                output: "fresh".into()
            }
        )
        .await
        .unwrap(),
        Applied::Recorded
    );
    let got = b.get(&tenant, &task.id).await.unwrap().unwrap();
    assert_eq!(got.output.as_deref(), Some("fresh"));
    assert_eq!(got.attempt, 2);
}

/// A retry waits in the delayed set, then is queued and claimed again.
pub async fn a_retry_waits_then_runs_again(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.unwrap();
    let retry = Outcome::Retry {
        after: Duration::from_millis(300),
        error: failed("boom"),
        next_stage: false,
    };
    b.finish(&c, retry).await.unwrap();
    assert_eq!(
        b.get(&tenant, &task.id).await.unwrap().unwrap().state,
        TaskState::Pending
    );
    b.promote().await.unwrap();
    assert!(
        matches!(b.claim("c1", LEASE).await.unwrap(), Claimed::Empty),
        "not before its time"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(b.promote().await.unwrap() >= 1);
    let again = claim(b.as_ref()).await.expect("claimed again");
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.task.stage_attempts, 2);
    b.finish(
        &again,
        Outcome::Finished {
            state: TaskState::Failed,
            error: failed("still broken"),
        },
    )
    .await
    .unwrap();
    let got = b.get(&tenant, &task.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Failed);
    assert_eq!(got.error.unwrap().message, "still broken");
}

fn workflow(tenant: &str, edges: &[(&str, &[&str])]) -> Vec<Task> {
    let wf = amaos_mesh::new_id();
    let mut tasks: Vec<Task> = edges
        .iter()
        .map(|(key, _)| {
            let mut t = sample(tenant);
            t.workflow_id = wf.clone();
            t.workflow_key = (*key).into();
            t
        })
        .collect();
    let id_of = |tasks: &[Task], key: &str| {
        tasks
            .iter()
            .find(|t| t.workflow_key == key)
            .unwrap()
            .id
            .clone()
    };
    for (i, (_, deps)) in edges.iter().enumerate() {
        let ids: Vec<String> = deps.iter().map(|d| id_of(&tasks, d)).collect();
        for dep in &ids {
            let j = tasks.iter().position(|t| &t.id == dep).unwrap();
            let me = tasks[i].id.clone();
            tasks[j].dependents.push(me);
        }
        tasks[i].depends_on = ids;
    }
    tasks
}

/// a → (b, c) → d: d is queued only when both b and c succeeded.
pub async fn a_workflow_runs_in_dependency_order(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let tasks = workflow(
        &tenant,
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
    );
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let members = b.workflow(&tenant, &wf).await.unwrap().unwrap();
    assert_eq!(members.len(), 4);
    let key_of = |c: &Claim| c.task.workflow_key.clone();
    let a = claim(b.as_ref()).await.unwrap();
    assert_eq!(key_of(&a), "a");
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
    b.finish(&a, Outcome::Succeeded { output: "A".into() })
        .await
        .unwrap();
    let first = claim(b.as_ref()).await.unwrap();
    let second = claim(b.as_ref()).await.unwrap();
    let mut keys = vec![key_of(&first), key_of(&second)];
    keys.sort();
    assert_eq!(keys, ["b", "c"]);
    b.finish(&first, Outcome::Succeeded { output: "1".into() })
        .await
        .unwrap();
    assert!(
        matches!(b.claim("c1", LEASE).await.unwrap(), Claimed::Empty),
        "d waits for both"
    );
    b.finish(&second, Outcome::Succeeded { output: "2".into() })
        .await
        .unwrap();
    let d = claim(b.as_ref()).await.unwrap();
    assert_eq!(key_of(&d), "d");
}

/// A final failure fails every dependent, transitively, naming the cause.
pub async fn a_failure_fails_the_dependents(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let tasks = workflow(&tenant, &[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let a = claim(b.as_ref()).await.unwrap();
    b.finish(
        &a,
        Outcome::Finished {
            state: TaskState::Failed,
            error: failed("no"),
        },
    )
    .await
    .unwrap();
    for t in &tasks[1..] {
        let got = b.get(&tenant, &t.id).await.unwrap().unwrap();
        assert_eq!(got.state, TaskState::Failed, "{}", got.workflow_key);
        assert!(got.error.unwrap().message.contains("did not succeed"));
    }
}

/// A cancelled queued task is never claimed; a running one loses its lease.
pub async fn cancellation_stops_queued_and_running_tasks(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let queued = sample(&tenant);
    b.create(&tenant, &queued.id, vec![queued.clone()], None)
        .await
        .unwrap();
    let task = b
        .cancel(&tenant, &queued.id, "no longer needed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.state, TaskState::Cancelled);
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));

    let running = sample(&tenant);
    b.create(&tenant, &running.id, vec![running.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.unwrap();
    b.cancel(&tenant, &running.id, "stop").await.unwrap();
    assert_eq!(b.renew(&c, LEASE).await.unwrap(), Lease::Finished);
    assert_eq!(
        b.finish(
            &c,
            Outcome::Succeeded {
                output: "late".into()
            }
        )
        .await
        .unwrap(),
        Applied::Stale
    );
    let got = b.get(&tenant, &running.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Cancelled);
    assert_eq!(got.output, None);
    // Cancelling a finished task changes nothing.
    let again = b
        .cancel(&tenant, &running.id, "again")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.error.unwrap().message, "stop");
}

/// A watcher waiting for events wakes when one is recorded.
pub async fn watchers_wake_on_new_events(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.unwrap();
    let seen = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap()
        .events
        .len() as u64;
    let writer = {
        let b = b.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.record(&id, 1, Record::Run(vec![run_event(&id, 1)]))
                .await
                .unwrap();
        })
    };
    let started = std::time::Instant::now();
    let page = b
        .events(&tenant, &task.id, seen, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].sequence, seen + 1);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "woke on the event, not the timeout"
    );
    assert!(!page.finished);
    writer.await.unwrap();
    b.finish(&c, Outcome::Succeeded { output: "x".into() })
        .await
        .unwrap();
}

/// A task silent for longer than the store's response timeout (Redis
/// clients give up on an answer after 0.5 s) keeps its watcher: a long-poll
/// with nothing new ends empty, not in an error, and the next one still wakes
/// on an event recorded seconds later.
pub async fn a_quiet_task_keeps_its_watcher(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.unwrap();
    let seen = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap()
        .events
        .len() as u64;
    let started = std::time::Instant::now();
    let quiet = b
        .events(&tenant, &task.id, seen, Duration::from_millis(1500))
        .await
        .expect("a long-poll that finds nothing is not an error")
        .unwrap();
    assert!(quiet.events.is_empty() && !quiet.finished);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the poll waited instead of ending early: {:?}",
        started.elapsed()
    );
    let writer = {
        let b = b.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            b.record(&id, 1, Record::Run(vec![run_event(&id, 1)]))
                .await
                .unwrap();
        })
    };
    let page = b
        .events(&tenant, &task.id, seen, Duration::from_secs(3))
        .await
        .expect("a watcher outlives a quiet spell")
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].sequence, seen + 1);
    writer.await.unwrap();
    b.finish(&c, Outcome::Succeeded { output: "x".into() })
        .await
        .unwrap();
}

/// Another tenant sees nothing of a task.
pub async fn tenants_are_isolated(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let other = format!("o{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], Some("same-key"))
        .await
        .unwrap();
    assert!(b.get(&other, &task.id).await.unwrap().is_none());
    assert!(
        b.events(&other, &task.id, 0, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert!(b.cancel(&other, &task.id, "x").await.unwrap().is_none());
    assert!(
        b.list(&other, None, None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Idempotency keys are per tenant.
    let theirs = sample(&other);
    assert_eq!(
        b.create(&other, &theirs.id.clone(), vec![theirs], Some("same-key"))
            .await
            .unwrap(),
        None
    );
}

/// With a cap of 2 running attempts per tenant, the third waits.
pub async fn the_running_cap_defers_claims(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    for _ in 0..3 {
        let t = sample(&tenant);
        b.create(&tenant, &t.id.clone(), vec![t], None)
            .await
            .unwrap();
    }
    let one = claim(b.as_ref()).await.unwrap();
    let _two = claim(b.as_ref()).await.unwrap();
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
    b.finish(&one, Outcome::Succeeded { output: "1".into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.promote().await.unwrap();
    assert!(
        claim(b.as_ref()).await.is_some(),
        "the deferred task runs once a slot frees"
    );
}

/// GCRA: a burst passes, the next request is told how long to wait.
pub async fn the_rate_limiter_allows_a_burst_then_waits(limiter: Arc<dyn RateLimiter>) {
    let key = format!("tenant:{}", amaos_mesh::new_id());
    for _ in 0..3 {
        assert_eq!(limiter.check(&key, 1.0, 3).await.unwrap(), None);
    }
    let wait = limiter
        .check(&key, 1.0, 3)
        .await
        .unwrap()
        .expect("over the burst");
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
}

/// A run that emits more events than a task keeps is refused, and the
/// terminal state is still recorded.
pub async fn the_event_log_is_bounded(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b.as_ref()).await.unwrap();
    let mut last = Applied::Recorded;
    for _ in 0..100 {
        last = b
            .record(&task.id, 1, Record::Run(vec![run_event(&task.id, 1)]))
            .await
            .unwrap();
        if last != Applied::Recorded {
            break;
        }
    }
    assert_eq!(last, Applied::LogFull);
    b.finish(
        &c,
        Outcome::Finished {
            state: TaskState::Failed,
            error: failed("too chatty"),
        },
    )
    .await
    .unwrap();
    let page = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(states(&page.events).last(), Some(&TaskState::Failed));
    assert!(page.finished);
}

/// A QUEUED task whose deadline passes before a dispatcher gets to it ends
/// TIMED_OUT at claim time, without an attempt, and fails its dependents.
pub async fn a_task_past_its_deadline_times_out_before_it_runs(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let mut tasks = workflow(&tenant, &[("a", &[]), ("b", &["a"])]);
    tasks[0].deadline = SystemTime::now() + Duration::from_millis(200);
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        matches!(b.claim("c1", LEASE).await.unwrap(), Claimed::Empty),
        "a late task does not run"
    );
    let got = b.get(&tenant, &tasks[0].id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::TimedOut);
    assert_eq!(got.attempt, 0);
    assert!(got.error.unwrap().message.contains("deadline"));
    let page = b
        .events(&tenant, &tasks[0].id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(page.finished);
    assert_eq!(
        states(&page.events),
        [TaskState::Pending, TaskState::Queued, TaskState::TimedOut]
    );
    let dependent = b.get(&tenant, &tasks[1].id).await.unwrap().unwrap();
    assert_eq!(dependent.state, TaskState::Failed);
}

/// A PENDING task — waiting for a dependency, or for its retry — whose
/// deadline passes ends TIMED_OUT by the sweep; nothing else is touched.
pub async fn the_sweep_times_out_pending_tasks_past_their_deadline(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let mut tasks = workflow(&tenant, &[("a", &[]), ("b", &["a"])]);
    tasks[1].deadline = SystemTime::now() + Duration::from_millis(200);
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let mut retried = sample(&tenant);
    retried.deadline = SystemTime::now() + Duration::from_millis(200);
    b.create(&tenant, &retried.id, vec![retried.clone()], None)
        .await
        .unwrap();
    let a = claim(b.as_ref()).await.unwrap();
    let r = claim(b.as_ref()).await.unwrap();
    let mut keys = [a.task.id.clone(), r.task.id.clone()];
    keys.sort();
    let mut expected = [tasks[0].id.clone(), retried.id.clone()];
    expected.sort();
    assert_eq!(keys, expected);
    let (a, r) = if a.task.id == retried.id {
        (r, a)
    } else {
        (a, r)
    };
    b.finish(
        &r,
        Outcome::Retry {
            after: Duration::from_secs(60),
            error: failed("boom"),
            next_stage: false,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let swept = sweep(b.as_ref()).await;
    assert_eq!(swept.timed_out, 2, "{swept:?}");
    assert_eq!(swept.requeued, 0, "{swept:?}");
    for id in [&tasks[1].id, &retried.id] {
        let got = b.get(&tenant, id).await.unwrap().unwrap();
        assert_eq!(got.state, TaskState::TimedOut);
        let page = b
            .events(&tenant, id, 0, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(page.finished);
        assert_eq!(states(&page.events).last(), Some(&TaskState::TimedOut));
    }
    // The running one is the dispatcher's to time out, not the sweep's.
    assert_eq!(
        b.get(&tenant, &tasks[0].id).await.unwrap().unwrap().state,
        TaskState::Running
    );
    assert_eq!(b.renew(&a, LEASE).await.unwrap(), Lease::Held);
}

/// Queued, delayed, running and waiting tasks are where they should be: a
/// sweep changes nothing, and nothing runs twice.
pub async fn the_sweep_leaves_healthy_tasks_alone(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let tasks = workflow(&tenant, &[("a", &[]), ("b", &["a"])]);
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let delayed = sample(&tenant);
    b.create(&tenant, &delayed.id, vec![delayed.clone()], None)
        .await
        .unwrap();
    let first = claim(b.as_ref()).await.unwrap();
    let second = claim(b.as_ref()).await.unwrap();
    let (running, to_delay) = if first.task.id == delayed.id {
        (second, first)
    } else {
        (first, second)
    };
    b.finish(
        &to_delay,
        Outcome::Retry {
            after: Duration::from_millis(300),
            error: failed("boom"),
            next_stage: false,
        },
    )
    .await
    .unwrap();
    let queued = sample(&tenant);
    b.create(&tenant, &queued.id, vec![queued.clone()], None)
        .await
        .unwrap();
    let swept = sweep(b.as_ref()).await;
    assert!(swept.examined >= 4, "{swept:?}");
    assert_eq!(swept.repaired(), 0, "{swept:?}");
    assert_eq!(b.renew(&running, LEASE).await.unwrap(), Lease::Held);
    assert_eq!(
        b.get(&tenant, &tasks[1].id).await.unwrap().unwrap().state,
        TaskState::Pending
    );
    // The queued task runs once; the delayed one waits for its time.
    let next = claim(b.as_ref()).await.unwrap();
    assert_eq!(next.task.id, queued.id);
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
    b.finish(&next, Outcome::Succeeded { output: "q".into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    b.promote().await.unwrap();
    let again = claim(b.as_ref()).await.unwrap();
    assert_eq!(
        (again.task.id.as_str(), again.attempt()),
        (delayed.id.as_str(), 2)
    );
}

/// A dispatcher that hands its lease back (draining) lets another replica
/// take the task over at once, with a new attempt that fences it out.
pub async fn a_released_lease_is_taken_over_at_once(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let task = sample(&tenant);
    b.create(&tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let held = claim(b.as_ref()).await.unwrap();
    assert!(
        b.reclaim("c2", LEASE, 10).await.unwrap().is_empty(),
        "a held lease is not taken"
    );
    assert_eq!(b.release(&held).await.unwrap(), Applied::Recorded);
    assert_eq!(b.renew(&held, LEASE).await.unwrap(), Lease::Lost);
    let mut taken = b.reclaim("c2", LEASE, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "taken over without waiting a lease");
    let newer = taken.remove(0);
    assert_eq!(newer.task.id, task.id);
    assert_eq!(newer.attempt(), 2);
    assert_eq!(b.renew(&newer, LEASE).await.unwrap(), Lease::Held);
    assert_eq!(b.release(&held).await.unwrap(), Applied::Stale);
    assert!(b.reclaim("c3", LEASE, 10).await.unwrap().is_empty());
    assert_eq!(
        b.finish(
            &held,
            Outcome::Succeeded {
                output: "old".into()
            }
        )
        .await
        .unwrap(),
        Applied::Stale
    );
    assert_eq!(
        b.finish(
            &newer,
            Outcome::Succeeded {
                output: "new".into()
            }
        )
        .await
        .unwrap(),
        Applied::Recorded
    );
    let page = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let handed_back = page.events.iter().any(|e| match &e.kind {
        Some(pb::task_event::Kind::StateChanged(s)) => s.reason.contains("handed its lease back"),
        _ => false,
    });
    assert!(handed_back, "{:?}", page.events);
    assert_eq!(
        b.get(&tenant, &task.id)
            .await
            .unwrap()
            .unwrap()
            .output
            .as_deref(),
        Some("new")
    );
}
