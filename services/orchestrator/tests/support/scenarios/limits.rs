//! Tenants apart, the running cap, the rate limiter and the bounded event log.

use super::*;

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
