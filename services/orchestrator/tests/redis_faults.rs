//! Faults only the Redis backend can have: races between replicas, and
//! tasks stranded outside every structure (a lost write, a trimmed stream).
//! Runs against the real Redis at `AMAOS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), each test under its own prefix.

use std::sync::Arc;
use std::time::Duration;

use amaos_orchestrator::backend::redis::RedisBackend;
use amaos_orchestrator::backend::{Claim, Claimed, Outcome, TaskBackend, conformance};
use amaos_orchestrator::task::{ErrorClass, TaskError, TaskState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const LEASE: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix() -> String {
    format!("amaos-test-{}", amaos_mesh::new_id())
}

async fn backend(url: &str, prefix: &str) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::connect(url, prefix, conformance::limits())
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is needed for this test: {e}")),
    )
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn claim(b: &dyn TaskBackend, consumer: &str) -> Claim {
    for _ in 0..50 {
        if let Claimed::Attempt(claim) = b.claim(consumer, LEASE).await.unwrap() {
            return *claim;
        }
    }
    panic!("nothing to claim");
}

fn retry(after: Duration) -> Outcome {
    Outcome::Retry {
        after,
        error: TaskError {
            class: ErrorClass::Transient,
            message: "boom".into(),
        },
        next_stage: false,
    }
}

/// A TCP proxy to Redis that delays every byte by `delay` each way: a replica
/// behind it is slow between its round trips, as under load or across zones.
async fn slow_proxy(url: &str, delay: Duration) -> String {
    let target = match redis::Client::open(url)
        .unwrap()
        .get_connection_info()
        .addr()
        .clone()
    {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("the proxy needs a TCP address, not {other:?}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, delay));
            tokio::spawn(pump(sr, cw, delay));
        }
    });
    format!("redis://127.0.0.1:{port}")
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if tx
            .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

/// A slow replica promotes a due retry; a fast one claims the new attempt,
/// which fails at once and is rescheduled — all before the slow replica's
/// next command lands. The new schedule must survive the promotion: the task
/// runs again, it is not stranded outside the queue and the delayed set.
#[tokio::test]
async fn a_retry_rescheduled_during_its_promotion_is_not_stranded() {
    let url = redis_url();
    let prefix = prefix();
    let fast = backend(&url, &prefix).await;
    let slow = backend(&slow_proxy(&url, Duration::from_millis(60)).await, &prefix).await;
    let tenant = "acme";
    let task = conformance::sample(tenant);
    fast.create(tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let first = claim(fast.as_ref(), "fast").await;
    fast.finish(&first, retry(Duration::ZERO)).await.unwrap();

    // The fast replica waits for the retry and fails it again at once.
    let failer = {
        let fast = fast.clone();
        tokio::spawn(async move {
            let second = claim(fast.as_ref(), "fast").await;
            assert_eq!(second.attempt(), 2);
            fast.finish(&second, retry(Duration::from_millis(200)))
                .await
                .unwrap();
        })
    };
    assert_eq!(slow.promote().await.unwrap(), 1);
    failer.await.unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = raw(&url).await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}:delayed"))
        .arg(&task.id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(score.is_some(), "the second retry's schedule was deleted");
    assert_eq!(fast.promote().await.unwrap(), 1);
    let third = claim(fast.as_ref(), "fast").await;
    assert_eq!(third.attempt(), 3);
    assert_eq!(third.task.state, TaskState::Running);
}
