//! The sweep's repairs, with the backend's state broken by hand.

use std::time::Duration;

use super::MemoryBackend;
use crate::backend::{Applied, BackendLimits, Claim, Claimed, Outcome, Swept, TaskBackend};
use crate::task::{ErrorClass, Task, TaskError};

fn limits() -> BackendLimits {
    BackendLimits {
        max_events_per_task: 64,
        max_running_per_tenant: 2,
        retention: Duration::from_secs(600),
        max_tasks: 10_000,
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn claim(b: &MemoryBackend) -> Claim {
    for _ in 0..10 {
        if let Claimed::Attempt(c) = b.claim("c1", LEASE).await.unwrap() {
            return *c;
        }
    }
    panic!("nothing to claim");
}

/// The in-process backend cannot strand a task (every change is under
/// one lock), but the sweep repairs one all the same: a retry out of the
/// delayed queue, a RUNNING task without a lease (fenced), a QUEUED one
/// out of the ready queue — at most `limit` tasks a call.
#[tokio::test]
async fn the_sweep_queues_stranded_tasks_again_a_few_at_a_time() {
    let b = MemoryBackend::new(limits());
    let (retried, running, queued) = (
        Task::sample("acme"),
        Task::sample("acme"),
        Task::sample("acme"),
    );
    for t in [&retried, &running] {
        b.create("acme", &t.id, vec![t.clone()], None)
            .await
            .unwrap();
    }
    let first = claim(&b).await;
    let second = claim(&b).await;
    let (r, held) = if first.task.id == retried.id {
        (first, second)
    } else {
        (second, first)
    };
    b.finish(
        &r,
        Outcome::Retry {
            after: Duration::from_secs(60),
            error: TaskError {
                class: ErrorClass::Transient,
                message: "boom".into(),
            },
            next_stage: false,
        },
    )
    .await
    .unwrap();
    b.create("acme", &queued.id, vec![queued.clone()], None)
        .await
        .unwrap();
    {
        let mut inner = b.lock();
        inner.delayed.clear();
        inner.ready.clear();
        inner.release(&held.task.id, held.attempt());
    }
    let mut total = Swept::default();
    for _ in 0..4 {
        let s = b.sweep(LEASE, 2).await.unwrap();
        assert!(s.examined <= 2, "{s:?}");
        total.examined += s.examined;
        total.requeued += s.requeued;
    }
    assert_eq!(total.requeued, 3, "{total:?}");
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
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let c = claim(&b).await;
        attempts.push((c.task.id.clone(), c.attempt()));
        b.finish(
            &c,
            Outcome::Succeeded {
                output: "ok".into(),
            },
        )
        .await
        .unwrap();
    }
    attempts.sort();
    let mut expected = vec![
        (retried.id.clone(), 2),
        (running.id.clone(), 3),
        (queued.id.clone(), 1),
    ];
    expected.sort();
    assert_eq!(attempts, expected);
    assert_eq!(b.sweep(LEASE, 10).await.unwrap().repaired(), 0);
}
