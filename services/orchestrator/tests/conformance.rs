//! The backend conformance suite, run against the in-process backend and
//! against the real Redis at `AMAOS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`; `scripts/test` starts one when none runs).

use std::sync::Arc;

use amaos_orchestrator::backend::memory::MemoryBackend;
use amaos_orchestrator::backend::redis::RedisBackend;
use amaos_orchestrator::backend::{TaskBackend, conformance};

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn the_memory_backend_conforms() {
    conformance::run_all(|limits| async move {
        Arc::new(MemoryBackend::new(limits)) as Arc<dyn TaskBackend>
    })
    .await;
}

#[tokio::test]
async fn the_redis_backend_conforms() {
    let url = redis_url();
    conformance::run_all(|limits| {
        let url = url.clone();
        async move {
            // A fresh prefix per scenario: scenarios share nothing, not even the queue.
            let prefix = format!("amaos-test-{}", amaos_mesh::new_id());
            let backend = RedisBackend::connect(&url, &prefix, limits)
                .await
                .unwrap_or_else(|e| {
                    panic!("Redis at {url} is needed for this test (scripts/test starts one): {e}")
                });
            Arc::new(backend) as Arc<dyn TaskBackend>
        }
    })
    .await;
}
