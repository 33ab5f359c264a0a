//! The tiers: one conformance suite over every hot backend (in-process LRU,
//! Redis on 127.0.0.1:6379) and every long-term backend (qdrant-edge in a
//! temporary directory; a Qdrant server when `AMAOS_QDRANT_URL` is set), the
//! Qdrant client's request contract, the lifecycle under paused time, and
//! Forget across tiers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amaos_memory::embed::Embedder;
use amaos_memory::hot::{HotTier, LruHotTier, RedisHotTier};
use amaos_memory::item::{Filter, Item, Kind, Stored, now_ms};
use amaos_memory::longterm::{EdgeLongTerm, LongTerm, Selector};
use amaos_memory::qdrant::{self, QdrantLongTerm};
use amaos_memory::tiers::{NewItem, Tiers};
use amaos_mesh::config::MemoryConfig;

const REDIS: &str = "redis://127.0.0.1:6379";

/// A unit vector of dimension 8 pointing mostly along `axis`.
fn vector(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; 8];
    v[axis % 8] = 1.0;
    v[(axis + 1) % 8] = tilt;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn stored(text: &str, session: &str, axis: usize, created_ms: u64) -> Stored {
    Stored {
        item: Item {
            id: amaos_mesh::new_id(),
            team: "crew".into(),
            agent: if axis.is_multiple_of(2) {
                "even"
            } else {
                "odd"
            }
            .into(),
            session_id: session.into(),
            kind: if axis < 4 { Kind::Fact } else { Kind::Result },
            text: text.into(),
            metadata: HashMap::from([("axis".to_owned(), axis.to_string())]),
            created_ms,
            expires_ms: None,
        },
        vector: vector(axis, 0.1),
    }
}

fn ids(found: &[Stored]) -> Vec<&str> {
    found.iter().map(|s| s.item.text.as_str()).collect()
}

fn unique_tenant(name: &str) -> String {
    format!("{name}-{}", &amaos_mesh::new_id()[24..])
}

/// Polls `check` until it yields a value; fails naming `what` after ten
/// seconds of wall-clock time (the tiers' clocks are the wall's and Redis's).
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn hot_conformance(tier: &dyn HotTier, capacity: usize) {
    let a = unique_tenant("a");
    let b = unique_tenant("b");
    let now = now_ms();
    let first = stored("first", "s1", 0, now);
    assert!(tier.put(&a, first.clone()).await.unwrap().is_empty());
    tier.put(&a, stored("second", "s2", 1, now + 1))
        .await
        .unwrap();
    tier.put(&b, stored("other tenant", "s1", 2, now))
        .await
        .unwrap();
    let all = tier.scan(&a, &Filter::default(), 10).await.unwrap();
    assert_eq!(ids(&all), ["second", "first"], "newest first, tenant only");
    assert_eq!(all[1], first, "stored whole, vector included");
    let s1 = Filter {
        session_id: "s1".into(),
        ..Filter::default()
    };
    assert_eq!(ids(&tier.scan(&a, &s1, 10).await.unwrap()), ["first"]);
    assert_eq!(tier.len(&a).await.unwrap(), 2);
    // Overflow pushes out the oldest written, whole.
    let mut pushed = Vec::new();
    for i in 0..capacity {
        pushed.extend(
            tier.put(&a, stored(&format!("n{i}"), "s3", 3, now + 2 + i as u64))
                .await
                .unwrap(),
        );
    }
    assert_eq!(ids(&pushed), ["first", "second"]);
    assert_eq!(tier.len(&a).await.unwrap(), capacity as u64);
    assert_eq!(tier.len(&b).await.unwrap(), 1, "capacity is per tenant");
    // Idempotency keys: the first id wins.
    assert_eq!(tier.claim_key(&a, "k", "id-1").await.unwrap(), "id-1");
    assert_eq!(tier.claim_key(&a, "k", "id-2").await.unwrap(), "id-1");
    assert_eq!(tier.claim_key(&b, "k", "id-3").await.unwrap(), "id-3");
    // Remove is per tenant.
    let victim = tier.scan(&b, &Filter::default(), 1).await.unwrap()[0]
        .item
        .id
        .clone();
    assert_eq!(
        tier.remove(&a, std::slice::from_ref(&victim))
            .await
            .unwrap(),
        0
    );
    assert_eq!(tier.remove(&b, &[victim]).await.unwrap(), 1);
    assert_eq!(tier.len(&b).await.unwrap(), 0);
    let rest: Vec<String> = tier
        .scan(&a, &Filter::default(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.item.id)
        .collect();
    tier.remove(&a, &rest).await.unwrap();
}

#[tokio::test]
async fn the_lru_hot_tier_conforms() {
    hot_conformance(&LruHotTier::new(3, Duration::from_secs(60)), 3).await;
}

#[tokio::test]
async fn the_redis_hot_tier_conforms() {
    let tier = RedisHotTier::connect(REDIS, &unique_tenant("test"), 3, Duration::from_secs(60))
        .await
        .unwrap();
    hot_conformance(&tier, 3).await;
}

#[tokio::test]
async fn a_due_memory_stays_in_the_redis_tier_until_removed() {
    let tier = RedisHotTier::connect(REDIS, &unique_tenant("test"), 10, Duration::from_millis(50))
        .await
        .unwrap();
    let t = unique_tenant("a");
    let s = stored("soon due", "s", 0, now_ms());
    tier.put(&t, s.clone()).await.unwrap();
    assert!(tier.due(10).await.unwrap().is_empty());
    // Redis keeps its own clock: wait until the memory is due, not for a time.
    let due = eventually("the memory is due", async || {
        let due = tier.due(10).await.unwrap();
        (!due.is_empty()).then_some(due)
    })
    .await;
    assert_eq!(due, [(t.clone(), s.clone())]);
    assert_eq!(tier.due(10).await.unwrap().len(), 1, "listed until removed");
    assert_eq!(tier.remove(&t, &[s.item.id]).await.unwrap(), 1);
    assert!(tier.due(10).await.unwrap().is_empty());
}

async fn long_conformance(long: &dyn LongTerm) {
    let a = unique_tenant("a");
    let b = unique_tenant("b");
    let now = now_ms();
    let batch: Vec<Stored> = (0..8)
        .map(|i| {
            stored(
                &format!("m{i}"),
                if i < 4 { "s1" } else { "s2" },
                i,
                now - 1000 + i as u64 * 100,
            )
        })
        .collect();
    long.upsert(&a, batch.clone()).await.unwrap();
    long.upsert(&b, vec![stored("b's secret", "s1", 3, now)])
        .await
        .unwrap();
    assert_eq!(long.count(&a).await.unwrap(), 8);
    // Nearest first, with the cosine similarity.
    let hits = long
        .search(&a, &vector(3, 0.0), &Filter::default(), 3)
        .await
        .unwrap();
    assert_eq!(hits[0].0, batch[3].item);
    assert!(hits[0].1 > 0.99, "{}", hits[0].1);
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter().all(|(i, _)| i.text != "b's secret"),
        "tenant A never sees B's"
    );
    // Filters: agent, session, kind, time range.
    let odd_s2 = Filter {
        agent: "odd".into(),
        session_id: "s2".into(),
        ..Filter::default()
    };
    let mut found: Vec<String> = long
        .search(&a, &vector(5, 0.0), &odd_s2, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(i, _)| i.text)
        .collect();
    found.sort();
    assert_eq!(found, ["m5", "m7"]);
    let results_in_window = Filter {
        kinds: vec![Kind::Result],
        after_ms: Some(now - 1000 + 500),
        before_ms: Some(now - 1000 + 700),
        ..Filter::default()
    };
    let found: Vec<String> = long
        .search(&a, &vector(0, 0.0), &results_in_window, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(i, _)| i.text)
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    // Recent: newest first.
    let recent = long.recent(&a, &Filter::default(), 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
        ["m7", "m6", "m5"]
    );
    // Deleting by id touches only the caller's tenant.
    let b_id = long
        .search(&b, &vector(3, 0.0), &Filter::default(), 1)
        .await
        .unwrap()[0]
        .0
        .id
        .clone();
    assert_eq!(
        long.delete_ids(&a, std::slice::from_ref(&b_id))
            .await
            .unwrap(),
        0
    );
    assert_eq!(long.count(&b).await.unwrap(), 1);
    assert_eq!(
        long.delete_ids(&a, &[batch[0].item.id.clone()])
            .await
            .unwrap(),
        1
    );
    // A scope (session s1) and retention (older than a cutoff).
    let s1 = Filter {
        session_id: "s1".into(),
        ..Filter::default()
    };
    let scope = Selector {
        tenant: Some(&a),
        filter: s1,
        ..Selector::default()
    };
    assert_eq!(long.delete(&scope).await.unwrap(), 3);
    let others = [b.clone()];
    let old = Selector {
        not_tenants: &others,
        filter: Filter {
            before_ms: Some(now - 1000 + 650),
            ..Filter::default()
        },
        tenant: Some(&a),
        ..Selector::default()
    };
    assert_eq!(long.delete(&old).await.unwrap(), 3, "m4 to m6 were older");
    assert_eq!(long.count(&a).await.unwrap(), 1);
    // Expired by their own expiry.
    let mut expiring = stored("short-lived", "s9", 1, now);
    expiring.item.expires_ms = Some(now - 1);
    long.upsert(&b, vec![expiring]).await.unwrap();
    let expired = Selector {
        tenant: Some(&b),
        expired_by: Some(now),
        ..Selector::default()
    };
    assert_eq!(long.delete(&expired).await.unwrap(), 1);
    assert_eq!(long.count(&b).await.unwrap(), 1);
    long.maintain().await.unwrap();
}

#[tokio::test]
async fn the_qdrant_edge_long_term_tier_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge");
    {
        let long = EdgeLongTerm::open(&path, 8).unwrap();
        long_conformance(&long).await;
        long.upsert("keep", vec![stored("kept", "s", 2, now_ms())])
            .await
            .unwrap();
    }
    let reopened = EdgeLongTerm::open(&path, 8).unwrap();
    assert_eq!(
        reopened.count("keep").await.unwrap(),
        1,
        "persisted on disk"
    );
    let Err(busy) = EdgeLongTerm::open(&path, 8) else {
        panic!("a second opener of the same directory is refused")
    };
    assert!(busy.to_string().contains("WAL"), "{busy}");
    drop(reopened);
    let Err(error) = EdgeLongTerm::open(&path, 384) else {
        panic!("a dimension change is refused")
    };
    assert!(error.to_string().contains("dimensions"), "{error}");
}

#[tokio::test]
#[ignore = "needs a Qdrant server: set AMAOS_QDRANT_URL and run with --ignored"]
async fn a_qdrant_server_conforms_when_amaos_qdrant_url_is_set() {
    let url = std::env::var("AMAOS_QDRANT_URL")
        .expect("AMAOS_QDRANT_URL names the Qdrant server this test runs against");
    let collection = format!("amaos_test_{}", &amaos_mesh::new_id()[24..]);
    let long = QdrantLongTerm::connect(&url, &collection, None, 8)
        .await
        .unwrap();
    long_conformance(&long).await;
}

#[test]
fn every_qdrant_request_carries_the_tenant_and_the_stored_payload() {
    let f = qdrant::filter(
        Some("acme"),
        &["globex".to_owned()],
        &Filter {
            session_id: "s1".into(),
            kinds: vec![Kind::Fact, Kind::Note],
            before_ms: Some(10),
            ..Filter::default()
        },
        Some(5),
    );
    let text = format!("{f:?}");
    assert!(
        text.contains("\"tenant\"") && text.contains("acme"),
        "{text}"
    );
    assert_eq!(
        f.must.len(),
        5,
        "tenant, session, kinds, created range, expiry: {text}"
    );
    assert!(format!("{:?}", f.must_not).contains("globex"));
    let s = stored("hello", "s1", 0, 1234);
    let point = qdrant::point("acme", s.clone());
    let payload = format!("{:?}", point.payload);
    for field in [
        "tenant",
        "memory_id",
        "team",
        "agent",
        "session_id",
        "kind",
        "text",
        "created_ms",
    ] {
        assert!(
            payload.contains(&format!("\"{field}\"")),
            "{field} missing: {payload}"
        );
    }
    assert_eq!(
        format!("{:?}", point.id),
        format!(
            "{:?}",
            Some(qdrant_client::qdrant::PointId::from(s.item.id))
        )
    );
}

fn config(hot_ttl: Duration) -> MemoryConfig {
    MemoryConfig {
        hot_capacity: 2,
        hot_ttl,
        ..MemoryConfig::default()
    }
}

fn note(text: &str, session: &str) -> NewItem {
    NewItem {
        team: "crew".into(),
        agent: "researcher".into(),
        session_id: session.into(),
        kind: Kind::Note,
        text: text.into(),
        metadata: HashMap::new(),
        ttl: None,
        idempotency_key: None,
    }
}

fn tiers(
    config: &MemoryConfig,
    dir: &std::path::Path,
) -> (Tiers, Arc<LruHotTier>, Arc<EdgeLongTerm>) {
    let embedder: Arc<dyn Embedder> = Arc::new(common::load_model(32));
    let hot = Arc::new(LruHotTier::new(config.hot_capacity, config.hot_ttl));
    let long = Arc::new(EdgeLongTerm::open(dir, embedder.dimension()).unwrap());
    let tiers = Tiers::new(config, hot.clone(), long.clone(), embedder);
    (tiers, hot, long)
}

#[tokio::test(start_paused = true)]
async fn memories_move_to_long_term_on_expiry_and_overflow_and_stay_recallable() {
    let dir = tempfile::tempdir().unwrap();
    let (tiers, hot, long) = tiers(&config(Duration::from_secs(60)), dir.path());
    let cats = tiers
        .remember("acme", note("Cats sleep most of the day.", "s1"))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    tiers
        .remember("acme", note("The invoice is due on Friday.", "s1"))
        .await
        .unwrap();
    assert_eq!(tiers.sweep().await.unwrap().moved, 0, "nothing is due yet");
    tokio::time::advance(Duration::from_secs(31)).await;
    let swept = tiers.sweep().await.unwrap();
    assert_eq!(swept.moved, 1, "the first memory's hot time is up");
    assert_eq!(
        (
            hot.len("acme").await.unwrap(),
            long.count("acme").await.unwrap()
        ),
        (1, 1)
    );
    // Overflow (capacity 2) moves the oldest written at once.
    tiers
        .remember("acme", note("Rust has no garbage collector.", "s2"))
        .await
        .unwrap();
    tiers
        .remember("acme", note("Paris is the capital of France.", "s2"))
        .await
        .unwrap();
    assert_eq!(
        (
            hot.len("acme").await.unwrap(),
            long.count("acme").await.unwrap()
        ),
        (2, 2)
    );
    // Recall is semantic and spans both tiers.
    let hits = tiers
        .recall(
            "acme",
            "Which animal naps a lot?",
            &Filter::default(),
            2,
            0.0,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].0.id, cats, "found in long-term memory: {hits:?}");
    let hits = tiers
        .recall(
            "acme",
            "memory safety without GC in a systems language",
            &Filter::default(),
            1,
            0.0,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].0.text, "Rust has no garbage collector.");
    // Another tenant recalls nothing of acme's.
    assert!(
        tiers
            .recall("globex", "cats", &Filter::default(), 5, 0.0)
            .await
            .unwrap()
            .is_empty()
    );
    // Recent spans both tiers, newest first.
    let recent = tiers.recent("acme", &Filter::default(), 10).await.unwrap();
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[0].text, "Paris is the capital of France.");
}

#[tokio::test]
async fn forget_removes_from_every_tier_and_retention_and_expiry_drop_old_memories() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Duration::from_secs(3600));
    config
        .tenant_retention
        .insert("brief".into(), Duration::from_millis(300));
    let (tiers, hot, long) = tiers(&config, dir.path());
    for text in ["alpha one", "beta two", "gamma three"] {
        tiers.remember("acme", note(text, "s1")).await.unwrap();
    }
    let other = tiers
        .remember("acme", note("delta four", "s2"))
        .await
        .unwrap();
    // Capacity 2: two memories of s1 are in long-term memory, one in hot.
    assert_eq!(long.count("acme").await.unwrap(), 2);
    let session = Filter {
        session_id: "s1".into(),
        ..Filter::default()
    };
    assert_eq!(tiers.forget_scope("acme", &session).await.unwrap(), 3);
    assert_eq!(
        tiers
            .recent("acme", &Filter::default(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(tiers.forget_id("acme", &other).await.unwrap(), 1);
    assert_eq!(
        hot.len("acme").await.unwrap() + long.count("acme").await.unwrap(),
        0
    );
    assert_eq!(tiers.forget_id("acme", &other).await.unwrap(), 0);

    // Retention of 300 ms for tenant `brief`; a memory with its own short ttl for `acme`.
    for text in ["old one", "old two", "old three"] {
        tiers.remember("brief", note(text, "")).await.unwrap();
    }
    let mut short = note("short-lived", "");
    short.ttl = Some(Duration::from_millis(200));
    tiers.remember("acme", short).await.unwrap();
    eventually("past retention is not served", async || {
        let recent = tiers.recent("brief", &Filter::default(), 10).await.unwrap();
        recent.is_empty().then_some(())
    })
    .await;
    eventually("past expiry is not served", async || {
        let recent = tiers.recent("acme", &Filter::default(), 10).await.unwrap();
        recent.is_empty().then_some(())
    })
    .await;
    let swept = tiers.sweep().await.unwrap();
    assert!(swept.dropped >= 1, "{swept:?}");
    assert_eq!(long.count("brief").await.unwrap(), 0);

    // The same idempotency key stores once.
    let mut keyed = note("once", "");
    keyed.idempotency_key = Some("k1".into());
    let first = tiers.remember("acme", keyed.clone()).await.unwrap();
    assert_eq!(tiers.remember("acme", keyed).await.unwrap(), first);
    assert_eq!(
        tiers
            .recent("acme", &Filter::default(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn texts_are_sealed_at_rest_in_both_tiers_and_served_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(Duration::from_secs(3600));
    let (tiers, hot, long) = tiers(&config, dir.path());
    let sealer = amaos_mesh::seal::Sealer::open_or_create(&dir.path().join("memory.keys")).unwrap();
    let tiers = tiers.with_sealer(Arc::new(sealer));
    for text in [
        "The vault code is 7731.",
        "Lunch is at noon.",
        "The boiler is in the basement.",
    ] {
        tiers.remember("acme", note(text, "s1")).await.unwrap();
    }
    // Capacity 2: one memory went to long-term memory; both tiers hold ciphertext.
    let stored_hot = hot.scan("acme", &Filter::default(), 10).await.unwrap();
    let stored_long = long.recent("acme", &Filter::default(), 10).await.unwrap();
    assert_eq!((stored_hot.len(), stored_long.len()), (2, 1));
    for text in stored_hot
        .iter()
        .map(|s| &s.item.text)
        .chain(stored_long.iter().map(|i| &i.text))
    {
        assert!(text.starts_with("sealed:1:"), "{text}");
        assert!(!text.contains("7731") && !text.contains("noon") && !text.contains("boiler"));
    }
    // Served in clear, from both tiers.
    let hits = tiers
        .recall("acme", "what is the vault code", &Filter::default(), 1, 0.0)
        .await
        .unwrap();
    assert_eq!(hits[0].0.text, "The vault code is 7731.");
    let recent = tiers.recent("acme", &Filter::default(), 10).await.unwrap();
    assert!(recent.iter().all(|i| !i.text.starts_with("sealed:")));
    assert_eq!(recent.len(), 3);
}
