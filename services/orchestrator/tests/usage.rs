//! Usage and the queue's measurements on both stores — in process, and the
//! real Redis at `AMAOS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`):
//! additions from two replicas at once add up, rows come back by tenant and
//! day, a task's usage is its own, and the queue's depth and oldest age
//! follow what is queued and claimed.

mod support {
    pub mod fixtures;
}

use std::sync::Arc;
use std::time::Duration;

use amaos_orchestrator::backend::memory::MemoryBackend;
use amaos_orchestrator::backend::redis::RedisBackend;
use amaos_orchestrator::backend::{Claimed, TaskBackend};
use amaos_orchestrator::task::TaskState;
use amaos_orchestrator::usage::{Day, MemoryUsage, Usage, UsageStore};
use support::fixtures;

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis(prefix: &str) -> RedisBackend {
    RedisBackend::connect(&redis_url(), prefix, fixtures::limits())
        .await
        .unwrap_or_else(|e| panic!("Redis is needed for this test (scripts/test starts one): {e}"))
}

fn spent(cost: f64, tokens: u64) -> Usage {
    Usage {
        input_tokens: tokens,
        output_tokens: tokens / 2,
        cost_usd: cost,
        model_calls: 1,
        tool_calls: 2,
        wall_ms: 100,
        attempts: 1,
    }
}

/// Two handles on one store (two replicas) add at once; nothing is lost.
async fn usage_adds_up(a: Arc<dyn UsageStore>, b: Arc<dyn UsageStore>) {
    let day = Day(20_000);
    let mut adds = Vec::new();
    for i in 0..50u64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        adds.push(tokio::spawn(async move {
            store
                .add(
                    "acme",
                    "crew",
                    &format!("t{}", i % 5),
                    day,
                    &spent(0.25, 10),
                )
                .await
                .unwrap();
        }));
    }
    for add in adds {
        add.await.unwrap();
    }
    b.add("acme", "chat", "t9", Day(20_001), &spent(1.0, 4))
        .await
        .unwrap();
    b.add("globex", "crew", "t1", day, &spent(9.0, 4))
        .await
        .unwrap();

    let rows = a.days(&["acme".into()], day, Day(20_001)).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let crew = rows.iter().find(|r| r.team == "crew").unwrap();
    assert_eq!(crew.day, day);
    assert_eq!(crew.usage.attempts, 50);
    assert_eq!(crew.usage.input_tokens, 500);
    assert_eq!(crew.usage.output_tokens, 250);
    assert_eq!(crew.usage.tool_calls, 100);
    assert_eq!(crew.usage.wall_ms, 5_000);
    assert!((crew.usage.cost_usd - 12.5).abs() < 1e-9, "{crew:?}");
    assert!(
        a.days(&["acme".into()], Day(19_000), Day(19_999))
            .await
            .unwrap()
            .is_empty()
    );

    let task = a.task("acme", "t0").await.unwrap().unwrap();
    assert_eq!(task.attempts, 10);
    assert_eq!(
        a.task("globex", "t0").await.unwrap(),
        None,
        "tasks are per tenant"
    );
    assert_eq!(a.tenants().await.unwrap(), ["acme", "globex"]);
}

#[tokio::test]
async fn usage_adds_up_in_process() {
    let store: Arc<dyn UsageStore> = Arc::new(MemoryUsage::new(Duration::from_secs(86_400 * 400)));
    usage_adds_up(store.clone(), store).await;
}

#[tokio::test]
async fn usage_adds_up_in_redis_across_replicas() {
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    let retention = Duration::from_secs(86_400 * 400);
    let a = redis(&prefix).await.usage_store(retention);
    let b = redis(&prefix).await.usage_store(retention);
    usage_adds_up(Arc::new(a), Arc::new(b)).await;
}

/// Depth counts queued tasks not yet claimed; the oldest age grows.
async fn the_queue_is_measured(backend: Arc<dyn TaskBackend>) {
    let empty = backend.queue_stats().await.unwrap();
    assert_eq!(empty.depth, 0);
    assert_eq!(empty.oldest, Duration::ZERO);
    for _ in 0..3 {
        let mut task = fixtures::sample("acme");
        task.state = TaskState::Queued;
        let id = task.id.clone();
        backend.create("acme", &id, vec![task], None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let queued = backend.queue_stats().await.unwrap();
    assert_eq!(queued.depth, 3);
    assert!(queued.oldest >= Duration::from_millis(20), "{queued:?}");
    let Claimed::Attempt(_) = backend
        .claim("dispatcher-1", Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!("a queued task to claim");
    };
    assert_eq!(backend.queue_stats().await.unwrap().depth, 2);
}

#[tokio::test]
async fn the_queue_is_measured_in_process() {
    the_queue_is_measured(Arc::new(MemoryBackend::new(fixtures::limits()))).await;
}

#[tokio::test]
async fn the_queue_is_measured_in_redis() {
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    the_queue_is_measured(Arc::new(redis(&prefix).await)).await;
}
