//! Cancellation, and watchers that wake on new events and outlast quiet tasks.

use super::*;

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
