//! Storing, claiming, running, fencing and retrying one task.

use super::*;

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
