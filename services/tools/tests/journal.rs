//! The idempotency journal's conformance suite, each scenario run against the
//! in-process store and against the real Redis at `AMAOS_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`; `scripts/test` starts one when none
//! runs). A "call" here is what the tools service does with a keyed
//! InvokeTool: reserve (or replay), run — the side effect is a counter —,
//! then record.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amaos_mesh::seal::Sealer;
use amaos_tools::journal::memory::MemoryJournal;
use amaos_tools::journal::redis::RedisJournal;
use amaos_tools::journal::{
    Begin, Journal, JournalError, JournalLimits, Recorded, Reserve, begin, fingerprint,
};
use serde_json::json;
use tokio::time::Instant;

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn limits() -> JournalLimits {
    JournalLimits {
        max_entries: 1000,
        ttl: Duration::from_secs(60),
        lease: Duration::from_secs(5),
    }
}

/// Where a scenario's journals live. Each [`Stores::open`] is another
/// instance over the same entries: for Redis a new connection (another
/// replica, or the same one after a restart); in process, the one store.
#[derive(Clone)]
enum Stores {
    Memory(Arc<MemoryJournal>),
    Redis {
        prefix: String,
        limits: JournalLimits,
        sealer: Option<Arc<Sealer>>,
    },
}

impl Stores {
    fn memory(limits: JournalLimits) -> Self {
        Self::Memory(Arc::new(MemoryJournal::new(limits)))
    }

    fn redis(limits: JournalLimits) -> Self {
        Self::Redis {
            // A fresh prefix per scenario and run: scenarios share nothing.
            prefix: format!("amaos-test-{}", amaos_mesh::new_id()),
            limits,
            sealer: Some(sealer()),
        }
    }

    async fn open(&self) -> Arc<dyn Journal> {
        match self {
            Self::Memory(journal) => journal.clone(),
            Self::Redis {
                prefix,
                limits,
                sealer,
            } => {
                let url = redis_url();
                let journal = RedisJournal::connect(&url, prefix, *limits)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "Redis at {url} is needed for this test (scripts/test starts one): {e}"
                        )
                    });
                match sealer {
                    Some(sealer) => Arc::new(journal.with_sealer(sealer.clone())),
                    None => Arc::new(journal),
                }
            }
        }
    }
}

/// The master keys every Redis scenario seals with.
fn sealer() -> Arc<Sealer> {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    Arc::new(Sealer::open_or_create(&dir.path().join("tools.keys")).unwrap())
}

fn fp(args: serde_json::Value) -> [u8; 32] {
    match args {
        serde_json::Value::Object(map) => fingerprint("file_write", &map),
        _ => unreachable!(),
    }
}

/// A keyed call: reserve or replay, then run (`side_effects` counts the
/// runs; the result names the run) and record. Returns the result and
/// whether it was a replay.
async fn call(
    journal: Arc<dyn Journal>,
    tenant: &str,
    key: &str,
    fingerprint: [u8; 32],
    side_effects: &AtomicUsize,
    work: Duration,
) -> Result<(serde_json::Value, bool), JournalError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    match begin(journal, tenant, key, fingerprint, deadline).await? {
        Begin::Replay(result) => Ok((result, true)),
        Begin::Run(reservation) => {
            let run = side_effects.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(work).await;
            let result = json!({ "run": run, "owner": reservation.owner() });
            assert_eq!(reservation.record(&result).await, Recorded::Stored);
            Ok((result, false))
        }
    }
}

async fn record_and_replay(stores: Stores) {
    let journal = stores.open().await;
    let runs = AtomicUsize::new(0);
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    let (first, replayed) = call(journal.clone(), "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(!replayed);
    let (again, replayed) = call(journal.clone(), "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Keys are per tenant: another tenant's same key is another call.
    let (other, replayed) = call(journal, "globex", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(!replayed);
    assert_ne!(other, first);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn other_arguments_conflict(stores: Stores) {
    let journal = stores.open().await;
    let runs = AtomicUsize::new(0);
    let a = fp(json!({ "path": "a.txt", "content": "hi" }));
    let b = fp(json!({ "path": "a.txt", "content": "bye" }));
    call(journal.clone(), "acme", "k1", a, &runs, Duration::ZERO)
        .await
        .unwrap();
    let err = call(journal.clone(), "acme", "k1", b, &runs, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Conflict), "{err:?}");
    // Also while the first call still runs (reserved, nothing recorded).
    assert!(matches!(
        journal.reserve("acme", "k2", &a, "owner-1").await.unwrap(),
        Reserve::Reserved
    ));
    let err = call(journal, "acme", "k2", b, &runs, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Conflict), "{err:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn concurrent_callers_run_once(stores: Stores) {
    let runs = Arc::new(AtomicUsize::new(0));
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    let mut calls = Vec::new();
    for _ in 0..6 {
        // Each caller on its own instance: for Redis, six replicas.
        let journal = stores.open().await;
        let runs = runs.clone();
        calls.push(tokio::spawn(async move {
            call(
                journal,
                "acme",
                "k1",
                args,
                &runs,
                Duration::from_millis(300),
            )
            .await
            .unwrap()
        }));
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the side effect ran once");
    assert_eq!(results.iter().filter(|(_, replayed)| !replayed).count(), 1);
    assert!(results.iter().all(|(r, _)| *r == results[0].0));
}

async fn a_dead_owner_is_taken_over(stores: Stores) {
    let journal = stores.open().await;
    let runs = AtomicUsize::new(0);
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    // An attempt reserved the key and died: no result, no renewal.
    assert!(matches!(
        journal.reserve("acme", "k1", &args, "dead").await.unwrap(),
        Reserve::Reserved
    ));
    let started = Instant::now();
    let (_, replayed) = call(journal.clone(), "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let lease = journal.limits().lease;
    assert!(
        started.elapsed() >= lease - Duration::from_millis(50),
        "taken over only after the lease: {:?}",
        started.elapsed()
    );
    // The dead owner, back late, records nothing over the new result.
    assert_eq!(
        journal
            .record("acme", "k1", &args, "dead", &json!("late"))
            .await
            .unwrap(),
        Recorded::AlreadyRecorded
    );
    let (_, replayed) = call(journal, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn an_owner_that_lost_its_lease_records_nothing(stores: Stores) {
    let journal = stores.open().await;
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    journal.reserve("acme", "k1", &args, "slow").await.unwrap();
    tokio::time::sleep(journal.limits().lease + Duration::from_millis(100)).await;
    assert!(!journal.renew("acme", "k1", "slow").await.unwrap());
    assert!(matches!(
        journal.reserve("acme", "k1", &args, "next").await.unwrap(),
        Reserve::Reserved
    ));
    assert_eq!(
        journal
            .record("acme", "k1", &args, "slow", &json!("late"))
            .await
            .unwrap(),
        Recorded::Lost
    );
}

async fn a_running_call_keeps_its_key(stores: Stores) {
    let runs = Arc::new(AtomicUsize::new(0));
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    let first = {
        let (journal, runs) = (stores.open().await, runs.clone());
        let lease = journal.limits().lease;
        // Runs for three leases: only renewal keeps the key.
        tokio::spawn(async move {
            call(journal, "acme", "k1", args, &runs, lease * 3)
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = call(
        stores.open().await,
        "acme",
        "k1",
        args,
        &runs,
        Duration::ZERO,
    )
    .await
    .unwrap();
    let first = first.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(second.1, "the second caller waited and replayed");
    assert_eq!(first.0, second.0);
}

async fn a_waiter_gives_up_at_its_deadline(stores: Stores) {
    let journal = stores.open().await;
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    journal.reserve("acme", "k1", &args, "alive").await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(200);
    let err = begin(journal, "acme", "k1", args, deadline)
        .await
        .err()
        .expect("still reserved");
    assert!(matches!(err, JournalError::Busy), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

async fn a_failed_call_releases_its_key(stores: Stores) {
    let journal = stores.open().await;
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    let deadline = Instant::now() + Duration::from_millis(500);
    let Begin::Run(reservation) = begin(journal.clone(), "acme", "k1", args, deadline)
        .await
        .unwrap()
    else {
        panic!("nothing recorded yet")
    };
    reservation.release().await;
    // The retry runs at once: no waiting for a lease.
    let started = Instant::now();
    let Begin::Run(retry) = begin(journal.clone(), "acme", "k1", args, deadline)
        .await
        .unwrap()
    else {
        panic!("a failed call records nothing")
    };
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(retry.record(&json!("ok")).await, Recorded::Stored);
    assert!(matches!(
        begin(journal, "acme", "k1", args, deadline).await.unwrap(),
        Begin::Replay(r) if r == json!("ok")
    ));
}

async fn results_are_bounded(stores: Stores) {
    let journal = stores.open().await;
    let runs = AtomicUsize::new(0);
    let args = fp(json!({}));
    for i in 0..5 {
        call(
            journal.clone(),
            "acme",
            &format!("k{i}"),
            args,
            &runs,
            Duration::ZERO,
        )
        .await
        .unwrap();
    }
    // Three kept: the two oldest run again, the newest replay.
    for (i, replays) in [(4, true), (3, true), (2, true), (0, false)] {
        let (_, replayed) = call(
            journal.clone(),
            "acme",
            &format!("k{i}"),
            args,
            &runs,
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(replayed, replays, "k{i}");
    }
}

async fn results_expire(stores: Stores) {
    let journal = stores.open().await;
    let runs = AtomicUsize::new(0);
    let args = fp(json!({}));
    call(journal.clone(), "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(journal.limits().ttl + Duration::from_millis(100)).await;
    let (_, replayed) = call(journal, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(!replayed, "an expired result runs again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

fn short_lease() -> JournalLimits {
    JournalLimits {
        lease: Duration::from_millis(300),
        ..limits()
    }
}

/// One `#[tokio::test]` per scenario and store.
macro_rules! conformance {
    ($($scenario:ident($limits:expr);)*) => {
        mod memory_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(Stores::memory($limits)).await;
                }
            )*
        }
        mod redis_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(Stores::redis($limits)).await;
                }
            )*
        }
    };
}

conformance! {
    record_and_replay(limits());
    other_arguments_conflict(limits());
    concurrent_callers_run_once(limits());
    a_dead_owner_is_taken_over(short_lease());
    an_owner_that_lost_its_lease_records_nothing(short_lease());
    a_running_call_keeps_its_key(short_lease());
    a_waiter_gives_up_at_its_deadline(limits());
    a_failed_call_releases_its_key(limits());
    results_are_bounded(JournalLimits { max_entries: 3, ..limits() });
    results_expire(JournalLimits { ttl: Duration::from_millis(500), lease: Duration::from_millis(200), ..limits() });
}

/// Redis only: a restarted tools service (a new journal over the same
/// prefix) replays what the old one recorded.
#[tokio::test]
async fn a_restarted_redis_journal_replays() {
    let stores = Stores::redis(limits());
    let runs = AtomicUsize::new(0);
    let args = fp(json!({ "path": "a.txt", "content": "hi" }));
    let before = stores.open().await;
    let (first, _) = call(before.clone(), "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    drop(before);
    let after = stores.open().await;
    let (again, replayed) = call(after, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Redis only: recorded results are sealed at rest, open only with the key
/// file, and results stored in clear before encryption stay readable.
#[tokio::test]
async fn redis_journal_results_are_sealed_at_rest() {
    let Stores::Redis { prefix, .. } = Stores::redis(limits()) else {
        unreachable!()
    };
    let url = redis_url();
    let connect = || RedisJournal::connect(&url, &prefix, limits());
    let args = fp(json!({ "path": "a.txt" }));

    let clear = connect().await.unwrap();
    clear.reserve("acme", "old", &args, "o").await.unwrap();
    clear
        .record(
            "acme",
            "old",
            &args,
            "o",
            &json!({ "text": "stored in clear" }),
        )
        .await
        .unwrap();

    let sealed = connect().await.unwrap().with_sealer(sealer());
    sealed.reserve("acme", "k1", &args, "o").await.unwrap();
    sealed
        .record(
            "acme",
            "k1",
            &args,
            "o",
            &json!({ "text": "the launch code is 7731" }),
        )
        .await
        .unwrap();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut stored = Vec::new();
    for key in keys.iter().filter(|k| !k.ends_with("-index")) {
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        stored.extend(values);
    }
    let stored = stored.join("\n");
    assert!(!stored.contains("7731"), "{stored}");
    assert!(
        !stored.contains("acme"),
        "keys and values do not name the tenant"
    );

    // A restarted replica with the key file replays both.
    let reopened = connect().await.unwrap().with_sealer(sealer());
    for (key, text) in [
        ("k1", "the launch code is 7731"),
        ("old", "stored in clear"),
    ] {
        match reopened.reserve("acme", key, &args, "p").await.unwrap() {
            Reserve::Recorded(r) => assert_eq!(r, json!({ "text": text })),
            other => panic!("{key}: {other:?}"),
        }
    }
    // Without it, a sealed result does not open (and is not run again).
    let keyless = connect().await.unwrap();
    let err = keyless.reserve("acme", "k1", &args, "p").await.unwrap_err();
    assert!(matches!(err, JournalError::Store(_)), "{err:?}");
    // Sealed for one tenant, it does not open as another's.
    assert!(matches!(
        reopened.reserve("globex", "k1", &args, "p").await.unwrap(),
        Reserve::Reserved
    ));
}

/// The configured journal follows `orchestrator.backend` unless
/// `tools.journal` says otherwise; in Redis it shares the orchestrator's
/// server and prefix and seals with `<data_dir>/tools.keys`.
#[tokio::test]
async fn the_configured_journal_follows_the_orchestrator_backend() {
    use amaos_mesh::config::StoreBackend;
    let dir = tempfile::tempdir().unwrap();
    let mut config = amaos_mesh::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.orchestrator.backend = StoreBackend::Redis;
    config.orchestrator.redis_url = redis_url();
    config.orchestrator.redis_prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    config.validate().unwrap();
    let runs = AtomicUsize::new(0);
    let args = fp(json!({ "path": "a.txt" }));

    // Two replicas over the configured Redis: the second replays.
    let first = amaos_tools::journal::open(&config).await.unwrap();
    call(first, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    let second = amaos_tools::journal::open(&config).await.unwrap();
    let (_, replayed) = call(second, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(replayed);
    assert!(dir.path().join("tools.keys").exists(), "sealed by default");

    // `tools.journal = "memory"` keeps it in the process.
    config.tools.journal = Some(StoreBackend::Memory);
    let local = amaos_tools::journal::open(&config).await.unwrap();
    let (_, replayed) = call(local, "acme", "k1", args, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // A lease longer than the TTL is refused.
    config.tools.journal_lease = config.tools.journal_ttl + Duration::from_secs(1);
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("tools.journal_lease"), "{err}");
}
