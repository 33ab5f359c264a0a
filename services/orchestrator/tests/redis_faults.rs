//! Faults only the Redis backend can have: races between replicas, and
//! tasks stranded outside every structure (a lost write, a trimmed stream).
//! Runs against the real Redis at `AMAOS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), each test under its own prefix.

mod support {
    pub mod fixtures;
}

use std::sync::Arc;
use std::time::Duration;

use amaos_orchestrator::backend::redis::RedisBackend;
use amaos_orchestrator::backend::{Applied, Claim, Claimed, Outcome, Swept, TaskBackend};
use amaos_orchestrator::task::{ErrorClass, TaskError, TaskState};
use support::fixtures;
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
        RedisBackend::connect(url, prefix, fixtures::limits())
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
    let task = fixtures::sample(tenant);
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

/// A replica remembers the tasks it changed last, to skip reading them back.
/// What it remembers goes stale when another replica changes the task: here
/// replica A scheduled a retry (A remembers it PENDING), replica B promoted
/// it (QUEUED, a new queue entry), and A reads that entry. A must start the
/// attempt, not take its stale memory for "not queued" and drop the entry,
/// which would strand the task.
#[tokio::test]
async fn a_replica_does_not_trust_its_memory_of_a_task_another_changed() {
    let url = redis_url();
    let prefix = prefix();
    let a = backend(&url, &prefix).await;
    let b = backend(&url, &prefix).await;
    let task = fixtures::sample("acme");
    a.create("acme", &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let first = claim(a.as_ref(), "a").await;
    a.finish(&first, retry(Duration::ZERO)).await.unwrap();
    assert_eq!(b.promote().await.unwrap(), 1);
    let second = claim(a.as_ref(), "a").await;
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.task.state, TaskState::Running);

    // B cancels the attempt A remembers running; A's finish is then stale
    // and the task stays cancelled.
    b.cancel("acme", &task.id, "stop").await.unwrap();
    let finished = a
        .finish(
            &second,
            Outcome::Succeeded {
                output: "late".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(finished, Applied::Stale);
    let stored = b.get("acme", &task.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Cancelled);
    assert_eq!(stored.output, None);
}

/// Sweeps (`limit` tasks a call) until `done` holds of the running total,
/// for at most two whole passes: how many calls that takes depends on what
/// else the Redis holds, which other tests and runs may have filled.
async fn sweep_until(
    b: &dyn TaskBackend,
    lease: Duration,
    limit: usize,
    done: impl Fn(&Swept) -> bool,
) -> Swept {
    let mut total = Swept::default();
    let mut ends = 0;
    while ends < 3 {
        let s = b.sweep(lease, limit).await.unwrap();
        ends += usize::from(s.pass_ended);
        assert!(s.examined <= limit, "{s:?} over the limit {limit}");
        total.examined += s.examined;
        total.requeued += s.requeued;
        total.timed_out += s.timed_out;
        total.ended += s.ended;
        total.consumers_removed += s.consumers_removed;
        if done(&total) {
            return total;
        }
    }
    panic!("the sweep never got there: {total:?}");
}

/// A retry whose schedule was lost (the race above, before it was fixed, or
/// a lost write) is PENDING in no structure: the sweep queues it again.
#[tokio::test]
async fn a_retry_lost_from_the_delayed_set_is_queued_again_by_the_sweep() {
    let url = redis_url();
    let prefix = prefix();
    let b = backend(&url, &prefix).await;
    let task = fixtures::sample("acme");
    b.create("acme", &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let first = claim(b.as_ref(), "c1").await;
    b.finish(&first, retry(Duration::from_secs(60)))
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM")
        .arg(format!("{prefix}:delayed"))
        .arg(&task.id)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    let swept = sweep_until(b.as_ref(), LEASE, 100, |s| s.requeued >= 1).await;
    assert_eq!(swept.requeued, 1);
    let again = claim(b.as_ref(), "c1").await;
    assert_eq!(
        (again.task.id.as_str(), again.attempt()),
        (task.id.as_str(), 2)
    );
}

/// QUEUED tasks whose entries were trimmed from the queue are queued again,
/// a few per call: the sweep is bounded and continues where it stopped.
#[tokio::test]
async fn queued_tasks_lost_from_the_queue_are_queued_again_a_few_per_sweep() {
    let url = redis_url();
    let prefix = prefix();
    let b = backend(&url, &prefix).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let task = fixtures::sample("acme");
        b.create("acme", &task.id, vec![task.clone()], None)
            .await
            .unwrap();
        ids.push(task.id);
    }
    let _: () = redis::cmd("XTRIM")
        .arg(format!("{prefix}:queue"))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
    let swept = sweep_until(b.as_ref(), LEASE, 2, |s| s.requeued >= 5).await;
    assert_eq!(swept.requeued, 5);
    // Each runs once, with the cap of 2 running per tenant.
    let mut claimed = Vec::new();
    while claimed.len() < 5 {
        let c = claim(b.as_ref(), "c1").await;
        assert_eq!(c.attempt(), 1);
        claimed.push(c.task.id.clone());
        b.finish(
            &c,
            Outcome::Succeeded {
                output: "ok".into(),
            },
        )
        .await
        .unwrap();
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids);
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
}

/// A RUNNING task whose queue entry is gone holds no lease anyone can take
/// over: the sweep queues it again with a new attempt number, so the old
/// holder's writes are dropped.
#[tokio::test]
async fn a_running_task_without_its_entry_is_queued_again_and_its_holder_fenced_out() {
    let url = redis_url();
    let prefix = prefix();
    let b = backend(&url, &prefix).await;
    let task = fixtures::sample("acme");
    b.create("acme", &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let lost = claim(b.as_ref(), "c1").await;
    let _: () = redis::pipe()
        .cmd("XACK")
        .arg(format!("{prefix}:queue"))
        .arg("dispatchers")
        .arg(&lost.entry)
        .cmd("XDEL")
        .arg(format!("{prefix}:queue"))
        .arg(&lost.entry)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    let swept = sweep_until(b.as_ref(), LEASE, 100, |s| s.requeued >= 1).await;
    assert_eq!(swept.requeued, 1);
    assert_eq!(
        b.finish(
            &lost,
            Outcome::Succeeded {
                output: "old".into()
            }
        )
        .await
        .unwrap(),
        Applied::Stale
    );
    let again = claim(b.as_ref(), "c2").await;
    assert_eq!(again.task.id, task.id);
    assert!(again.attempt() > lost.attempt() + 1, "{}", again.attempt());
    assert_eq!(
        b.finish(
            &again,
            Outcome::Succeeded {
                output: "new".into()
            }
        )
        .await
        .unwrap(),
        Applied::Recorded
    );
    let got = b.get("acme", &task.id).await.unwrap().unwrap();
    assert_eq!(got.output.as_deref(), Some("new"));
}

/// A replica that recorded a failure and died before failing the dependents
/// (one compare-and-set each, after the fact) left them PENDING forever; the
/// sweep finishes the cascade.
#[tokio::test]
async fn an_interrupted_cascade_is_finished_by_the_sweep() {
    let url = redis_url();
    let prefix = prefix();
    let b = backend(&url, &prefix).await;
    let tenant = "acme";
    let mut a = fixtures::sample(tenant);
    let mut dep = fixtures::sample(tenant);
    let mut last = fixtures::sample(tenant);
    let wf = amaos_mesh::new_id();
    for (t, key) in [(&mut a, "a"), (&mut dep, "b"), (&mut last, "c")] {
        t.workflow_id = wf.clone();
        t.workflow_key = key.into();
    }
    a.dependents = vec![dep.id.clone()];
    dep.depends_on = vec![a.id.clone()];
    dep.dependents = vec![last.id.clone()];
    last.depends_on = vec![dep.id.clone()];
    b.create(
        tenant,
        &wf,
        vec![a.clone(), dep.clone(), last.clone()],
        None,
    )
    .await
    .unwrap();
    let _running = claim(b.as_ref(), "c1").await;
    // The failure is recorded; the crash loses the cascade.
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:task:{}", a.id))
        .arg("state")
        .arg("Failed")
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    let swept = sweep_until(b.as_ref(), LEASE, 100, |s| s.ended >= 1).await;
    assert_eq!(swept.requeued, 0);
    for t in [&dep, &last] {
        let got = b.get(tenant, &t.id).await.unwrap().unwrap();
        assert_eq!(got.state, TaskState::Failed, "{}", got.workflow_key);
        assert!(got.error.unwrap().message.contains("did not succeed"));
    }
}

/// Consumers of the queue's group that have been idle for ten leases with
/// nothing pending are removed; one holding an entry stays.
#[tokio::test]
async fn dead_consumers_leave_the_group() {
    let url = redis_url();
    let prefix = prefix();
    let b = backend(&url, &prefix).await;
    // A dispatcher that ran one task and died.
    let done = fixtures::sample("acme");
    b.create("acme", &done.id, vec![done.clone()], None)
        .await
        .unwrap();
    let ran = claim(b.as_ref(), "ghost").await;
    b.finish(
        &ran,
        Outcome::Succeeded {
            output: "ok".into(),
        },
    )
    .await
    .unwrap();
    // One that holds an attempt (stalled or not: reclaim's business).
    let task = fixtures::sample("acme");
    b.create("acme", &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let _held = claim(b.as_ref(), "busy").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lease = Duration::from_millis(20);
    let swept = sweep_until(b.as_ref(), lease, 100, |s| s.consumers_removed >= 1).await;
    assert_eq!(swept.consumers_removed, 1);
    let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("{prefix}:queue"))
        .arg("dispatchers")
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    let names: Vec<String> = consumers
        .iter()
        .map(|c| redis::from_redis_value_ref(&c[1]).unwrap())
        .collect();
    assert_eq!(names, ["busy"]);
}
