//! Many watchers of a task's events on the Redis backend: they wait on the
//! replica's one subscription, not on a connection or a poll each, and a
//! lost subscription does not lose an event. Runs against the real Redis at
//! `AMAOS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! The tests count the process's Redis round trips, so they run one at a
//! time (`SERIAL`).

mod support {
    pub mod fixtures;
}

use std::sync::Arc;
use std::time::Duration;

use amaos_orchestrator::backend::TaskBackend;
use amaos_orchestrator::backend::redis::RedisBackend;
use support::fixtures;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than any test waits: a watcher that returns before it was woken.
const WAIT: Duration = Duration::from_secs(120);

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn backend() -> Arc<RedisBackend> {
    let url = redis_url();
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    Arc::new(
        RedisBackend::connect(&url, &prefix, fixtures::limits())
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is needed for this test: {e}")),
    )
}

/// Creates `n` queued tasks of `tenant`: their ids and the last sequence of
/// each one's events.
async fn tasks(b: &RedisBackend, tenant: &str, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let task = fixtures::sample(tenant);
        let id = task.id.clone();
        b.create(tenant, "h", vec![task], None).await.unwrap();
        let page = b
            .events(tenant, &id, 0, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let last = page.events.last().map(|e| e.sequence).unwrap_or(0);
        out.push((id, last));
    }
    out
}

fn round_trips() -> u64 {
    amaos_mesh::metrics::redis_sent_so_far().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_wait_without_polling_and_each_wakes_on_its_own_event() {
    let _serial = SERIAL.lock().await;
    const N: usize = 1000;
    let b = backend().await;
    let tenant = "t-watch";
    let tasks = tasks(&b, tenant, N).await;
    let watchers: Vec<_> = tasks
        .iter()
        .map(|(id, after)| {
            let (b, id, after) = (b.clone(), id.clone(), *after);
            tokio::spawn(async move { b.events(tenant, &id, after, WAIT).await })
        })
        .collect();
    // Let every watcher register and read once, then count what waiting
    // costs: polling watchers (three round trips each every 100 ms) would
    // send tens of thousands in two seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = round_trips();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = round_trips() - before;
    assert!(
        waiting < (N / 10) as u64,
        "{N} idle watchers sent {waiting} round trips to Redis in 2 s"
    );
    assert!(
        watchers.iter().all(|w| !w.is_finished()),
        "a watcher returned with nothing to report"
    );
    // Each task's cancellation wakes its own watcher with its own event.
    for (id, _) in &tasks {
        b.cancel(tenant, id, "done watching")
            .await
            .unwrap()
            .unwrap();
    }
    for ((id, after), watcher) in tasks.iter().zip(watchers) {
        let page = tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .unwrap_or_else(|_| panic!("the watcher of {id} was not woken"))
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!page.events.is_empty(), "{id}: woken without its event");
        assert!(
            page.events
                .iter()
                .all(|e| e.sequence > *after && e.task_id == *id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_is_woken_after_its_subscription_connection_was_killed() {
    let _serial = SERIAL.lock().await;
    let b = backend().await;
    let tenant = "t-watch-kill";
    let tasks = tasks(&b, tenant, 1).await;
    let (id, after) = tasks[0].clone();
    let watcher = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.events(tenant, &id, after, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every pub/sub connection of this Redis, this replica's included.
    let mut raw = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(killed >= 1, "the replica held no subscription");
    // The event comes while the replica may still be reconnecting.
    b.cancel(tenant, &id, "after the kill")
        .await
        .unwrap()
        .unwrap();
    let page = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watcher slept through the event its lost subscription missed")
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(page.events.iter().any(|e| e.sequence > after));
}
