//! Deadlines at claim time and in the sweep; released leases taken over at once.

use super::*;

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
