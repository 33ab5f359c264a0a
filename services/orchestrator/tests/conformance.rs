//! The backend conformance suite (`support/scenarios/`), one test per
//! scenario and backend: the in-process backend, and the real Redis at
//! `AMAOS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`; `scripts/test`
//! starts one when none runs). Then the rate limiters, and Redis-only checks
//! of what is stored at rest.

mod support {
    pub mod fixtures;
    pub mod scenarios;
}

use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::seal::Sealer;
use amaos_orchestrator::backend::memory::{MemoryBackend, MemoryRateLimiter};
use amaos_orchestrator::backend::redis::RedisBackend;
use amaos_orchestrator::backend::{Claimed, Outcome, RateLimiter, Record, TaskBackend};
use amaos_proto::agents::v1 as agents;
use support::fixtures;

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh in-process backend with the suite's limits.
async fn memory_backend() -> Arc<dyn TaskBackend> {
    Arc::new(MemoryBackend::new(fixtures::limits()))
}

/// A Redis backend with the suite's limits under a fresh prefix.
async fn connect_redis() -> RedisBackend {
    let url = redis_url();
    // A fresh prefix per scenario: scenarios share nothing, not even the queue.
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    RedisBackend::connect(&url, &prefix, fixtures::limits())
        .await
        .unwrap_or_else(|e| {
            panic!("Redis at {url} is needed for this test (scripts/test starts one): {e}")
        })
}

/// A fresh Redis backend, sealed at rest as deployed by default
/// (orchestrator.encrypt).
async fn redis_backend() -> Arc<dyn TaskBackend> {
    Arc::new(connect_redis().await.with_sealer(sealer()))
}

/// One `#[tokio::test]` per scenario and backend.
macro_rules! conformance {
    ($($scenario:ident,)*) => {
        mod memory_backend {
            $(
                #[tokio::test]
                async fn $scenario() {
                    crate::support::scenarios::$scenario(crate::memory_backend().await).await;
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test]
                async fn $scenario() {
                    crate::support::scenarios::$scenario(crate::redis_backend().await).await;
                }
            )*
        }
    };
}

conformance! {
    create_get_list_and_idempotency,
    an_attempt_runs_to_success,
    a_stale_attempt_is_fenced_out,
    a_retry_waits_then_runs_again,
    a_workflow_runs_in_dependency_order,
    a_failure_fails_the_dependents,
    cancellation_stops_queued_and_running_tasks,
    watchers_wake_on_new_events,
    a_quiet_task_keeps_its_watcher,
    tenants_are_isolated,
    the_running_cap_defers_claims,
    the_event_log_is_bounded,
    a_task_past_its_deadline_times_out_before_it_runs,
    the_sweep_times_out_pending_tasks_past_their_deadline,
    the_sweep_leaves_healthy_tasks_alone,
    a_released_lease_is_taken_over_at_once,
    a_waiting_task_resumes_once_decided,
    an_expired_approval_resumes_the_task_rejected,
    a_waiting_task_times_out_at_its_deadline_and_can_be_cancelled,
}

#[tokio::test]
async fn the_memory_rate_limiter_allows_a_burst_then_waits() {
    support::scenarios::the_rate_limiter_allows_a_burst_then_waits(Arc::new(
        MemoryRateLimiter::new(),
    ))
    .await;
}

#[tokio::test]
async fn the_redis_rate_limiter_allows_a_burst_then_waits() {
    let limiter: Arc<dyn RateLimiter> = Arc::new(connect_redis().await.rate_limiter());
    support::scenarios::the_rate_limiter_allows_a_burst_then_waits(limiter).await;
}

fn sealer() -> Arc<Sealer> {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    Arc::new(Sealer::open_or_create(&dir.path().join("orchestrator.keys")).unwrap())
}

/// Every value stored under `prefix`, as bytes.
async fn everything_stored(url: &str, prefix: &str) -> Vec<u8> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: redis::Value = match kind.as_str() {
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => continue,
        };
        all.extend(format!("{value:?}").into_bytes());
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn task_inputs_outputs_and_run_events_are_sealed_at_rest_in_redis() {
    let url = redis_url();
    let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("orchestrator.keys");
    let connect = |sealer: Option<Arc<Sealer>>| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            let backend = RedisBackend::connect(&url, &prefix, fixtures::limits())
                .await
                .unwrap();
            match sealer {
                Some(sealer) => backend.with_sealer(sealer),
                None => backend,
            }
        }
    };

    // A task stored before encryption was turned on stays readable.
    let clear = connect(None).await;
    let mut old = fixtures::sample("acme");
    old.input = "stored in clear long ago".into();
    clear
        .create("acme", &old.id, vec![old.clone()], None)
        .await
        .unwrap();
    clear.cancel("acme", &old.id, "not needed").await.unwrap();

    let b = connect(Some(Arc::new(Sealer::open_or_create(&keys).unwrap()))).await;
    let mut task = fixtures::sample("acme");
    task.input = "the launch code is 7731".into();
    b.create("acme", &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let mut claimed = None;
    for _ in 0..20 {
        if let Claimed::Attempt(claim) = b.claim("c1", Duration::from_secs(30)).await.unwrap() {
            claimed = Some(*claim);
            break;
        }
    }
    let claim = claimed.expect("the task is claimed");
    assert_eq!(claim.task.id, task.id);
    assert_eq!(claim.task.input, "the launch code is 7731");
    b.record(
        &claim.task.id,
        claim.attempt(),
        Record::Run(vec![agents::RunEvent {
            run_id: claim.task.id.clone(),
            attempt: claim.attempt(),
            agent: "writer".into(),
            payload: Some(agents::run_event::Payload::Message(agents::Message {
                role: "assistant".into(),
                content: "a message about the vault at 12 Elm St".into(),
            })),
            ..Default::default()
        }]),
    )
    .await
    .unwrap();
    b.finish(
        &claim,
        Outcome::Succeeded {
            output: "the plan: open the vault at dawn".into(),
        },
    )
    .await
    .unwrap();

    // Nothing secret is in Redis in clear...
    let stored = everything_stored(&url, &prefix).await;
    // Whole phrases with spaces: four digits alone turn up by chance in the
    // stored timestamps (and a space never in base64 ciphertext).
    for secret in ["launch code is 7731", "12 Elm St", "open the vault at dawn"] {
        assert!(!contains(&stored, secret), "`{secret}` is stored in clear");
    }
    assert!(contains(&stored, "sealed:1:"));
    // ...and everything reads back, after a key rotation too.
    Sealer::rotate(&keys).unwrap();
    let b = connect(Some(Arc::new(Sealer::open_or_create(&keys).unwrap()))).await;
    let read = b.get("acme", &task.id).await.unwrap().unwrap();
    assert_eq!(read.input, "the launch code is 7731");
    assert_eq!(
        read.output.as_deref(),
        Some("the plan: open the vault at dawn")
    );
    let page = b
        .events("acme", &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(format!("{:?}", page.events).contains("12 Elm St"));
    let old_read = b.get("acme", &old.id).await.unwrap().unwrap();
    assert_eq!(old_read.input, "stored in clear long ago");

    // Without the keys, sealed tasks are an error, not garbage.
    let blind = connect(None).await;
    let error = blind.get("acme", &task.id).await.unwrap_err().to_string();
    assert!(error.contains("orchestrator.encrypt"), "{error}");
}
