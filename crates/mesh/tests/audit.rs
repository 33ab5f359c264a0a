//! The audit trail cannot be rewritten or cut unnoticed: records are keyed
//! (HMAC-SHA256 with a key the trail's writer keeps apart from it), the ends
//! are anchored by a checkpoint (a file beside the key, or Redis at
//! `AMAOS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), appends are
//! synced as `auth.audit_durability` says, and many writers extend one chain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use amaos_mesh::Config;
use amaos_mesh::audit::{
    AuditLog, Durability, Entry, KEY_FILE, Record, TrailKey, Verdict, legacy_hash,
    verify_configured, verify_file,
};
use amaos_mesh::config::KeyStoreBackend;

fn entry(object: &str) -> Entry<'_> {
    Entry {
        principal: "key-1",
        tenant: "acme",
        action: "keys.create",
        object,
        allowed: true,
    }
}

/// A trail of `n` records at `<dir>/audit.jsonl` with the embedded defaults.
fn trail(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let log = AuditLog::append_only(&path);
    for i in 0..n {
        log.append(entry(&format!("k{i}"))).unwrap();
    }
    path
}

fn read(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write(path: &Path, records: &[Record]) {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).unwrap();
        text.push(b'\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Recomputes the chain from `from` on, as an attacker without the key can:
/// with the unkeyed hash, or with a key of their own under the trail's key id.
fn rechain(records: &mut [Record], from: usize, key: Option<&TrailKey>) {
    for i in from..records.len() {
        let prev = if i == 0 {
            String::new()
        } else {
            records[i - 1].hash.clone()
        };
        let r = &mut records[i];
        r.prev_hash = prev;
        r.hash = match key {
            Some(key) => key.record_hash(&r.prev_hash, r),
            None => {
                r.key_id.clear();
                legacy_hash(&r.prev_hash, r)
            }
        };
    }
}

#[test]
fn an_edited_record_with_the_chain_recomputed_without_the_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = trail(dir.path(), 5);
    assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(5));
    let original = read(&path);
    assert!(original.iter().all(|r| !r.key_id.is_empty()));

    // Edited, the chain recomputed with the unkeyed hash.
    let mut edited = original.clone();
    edited[2].tenant = "globex".into();
    rechain(&mut edited, 2, None);
    write(&path, &edited);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(2));

    // Edited, the chain recomputed with a guessed key under the right id.
    let mut edited = original.clone();
    edited[2].tenant = "globex".into();
    rechain(&mut edited, 2, Some(&TrailKey::new(&[7u8; 32]).unwrap()));
    write(&path, &edited);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(2));

    // The whole trail rewritten as a legacy (unkeyed) one: the checkpoint
    // knows its head.
    let mut rewritten = original.clone();
    rewritten[2].tenant = "globex".into();
    rechain(&mut rewritten, 0, None);
    write(&path, &rewritten);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(0));

    // The writer refuses to extend a trail whose end does not verify.
    let mut edited = original.clone();
    edited[4].object = "other".into();
    write(&path, &edited);
    let refused = AuditLog::append_only(&path)
        .append(entry("after"))
        .unwrap_err();
    assert!(refused.to_string().contains("does not verify"), "{refused}");

    // Put back, it verifies and extends.
    write(&path, &original);
    assert_eq!(
        AuditLog::append_only(&path)
            .append(entry("after"))
            .unwrap()
            .index,
        5
    );
    assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(6));
}

#[test]
fn a_cut_head_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = trail(dir.path(), 5);
    let original = read(&path);
    write(&path, &original[2..]);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(0));
    // Renumbered from 0 and rechained without the key: still caught.
    let mut renumbered = original[2..].to_vec();
    for (i, r) in renumbered.iter_mut().enumerate() {
        r.index = i as u64;
    }
    rechain(&mut renumbered, 0, None);
    write(&path, &renumbered);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(0));
    // And the writer refuses to extend it.
    assert!(AuditLog::append_only(&path).append(entry("x")).is_err());
}

#[test]
fn a_cut_tail_is_detected_with_the_file_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = trail(dir.path(), 5);
    let checkpoint = dir.path().join("audit.jsonl.checkpoint");
    assert!(checkpoint.exists());
    assert!(dir.path().join(KEY_FILE).exists());
    let original = read(&path);
    write(&path, &original[..3]);
    // Records 3 and 4 are missing.
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(3));
    let refused = AuditLog::append_only(&path).append(entry("x")).unwrap_err();
    assert!(refused.to_string().contains("cut"), "{refused}");
    // Everything cut.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(0));
    // The checkpoint removed as well: the keyed records are reported as
    // unanchored, never as intact, and the writer refuses to go on.
    write(&path, &original[..3]);
    std::fs::remove_file(&checkpoint).unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verdict::Unanchored(3));
    assert!(AuditLog::append_only(&path).append(entry("x")).is_err());
}

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redis_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    std::fs::create_dir_all(&config.data_dir).unwrap();
    config.auth.key_store = KeyStoreBackend::Redis;
    config.auth.redis_url = redis_url();
    config.auth.redis_prefix = format!("amaos-test-{}", amaos_mesh::new_id());
    config.auth.audit_file = Some(dir.join("log/audit.jsonl"));
    std::fs::create_dir_all(dir.join("log")).unwrap();
    config
}

/// Sends one command to Redis (for setting up and cleaning up).
fn redis_command(args: &[&str]) -> String {
    use std::io::Read;
    let url = redis_url();
    let address = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(out.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_is_detected_with_the_redis_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = redis_config(dir.path());
    let path = config.audit_file();
    let log = AuditLog::open_configured(&config).unwrap();
    for i in 0..5 {
        log.append_async(entry(&format!("k{i}"))).await.unwrap();
    }
    let report = verify_configured(&config, &path).await.unwrap();
    assert_eq!(report.verdict, Verdict::Intact(5), "{report:?}");
    assert!(report.checkpoint.contains("Redis"), "{report:?}");
    // Nothing is anchored in files: the checkpoint is in Redis only.
    assert!(!config.data_dir.join("audit.jsonl.checkpoint").exists());
    let key = format!(
        "{}:{{audit}}:checkpoint:{}",
        config.auth.redis_prefix,
        amaos_mesh::audit::anchor::trail_id(&path)
    );
    assert!(redis_command(&["EXISTS", &key]).starts_with(":1"));

    let original = read(&path);
    write(&path, &original[..2]);
    let report = verify_configured(&config, &path).await.unwrap();
    assert_eq!(report.verdict, Verdict::BrokenAt(2), "{report:?}");
    assert!(report.detail.contains("tail was cut"), "{report:?}");
    let refused = log.append_async(entry("x")).await.unwrap_err();
    assert!(refused.to_string().contains("cut"), "{refused}");
    // A cut head, too.
    write(&path, &original[1..]);
    let report = verify_configured(&config, &path).await.unwrap();
    assert_eq!(report.verdict, Verdict::BrokenAt(0), "{report:?}");
    // Put back, the trail goes on, and the checkpoint with it.
    write(&path, &original);
    assert_eq!(log.append_async(entry("x")).await.unwrap().index, 5);
    let report = verify_configured(&config, &path).await.unwrap();
    assert_eq!(report.verdict, Verdict::Intact(6), "{report:?}");
    redis_command(&["DEL", &key]);
}

#[test]
fn a_legacy_trail_is_reported_as_legacy_and_continued_keyed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Three records as trails were written before they were keyed.
    let mut legacy = Vec::new();
    for i in 0..3u64 {
        let prev = legacy
            .last()
            .map(|r: &Record| r.hash.clone())
            .unwrap_or_default();
        let mut r = Record {
            index: i,
            at_ms: 1,
            principal: "p".into(),
            tenant: "t".into(),
            action: "keys.create".into(),
            object: format!("k{i}"),
            decision: "allow".into(),
            trace_id: String::new(),
            key_id: String::new(),
            prev_hash: prev,
            hash: String::new(),
        };
        r.hash = legacy_hash(&r.prev_hash, &r);
        legacy.push(r);
    }
    write(&path, &legacy);
    assert_eq!(
        verify_file(&path).unwrap(),
        Verdict::Legacy {
            records: 3,
            legacy: 3
        }
    );
    let log = AuditLog::append_only(&path);
    assert_eq!(log.append(entry("k3")).unwrap().index, 3);
    assert_eq!(
        verify_file(&path).unwrap(),
        Verdict::Legacy {
            records: 4,
            legacy: 3
        }
    );
    // An unkeyed record after keyed ones is not legacy: it is forged.
    let mut records = read(&path);
    let mut forged = records[3].clone();
    forged.index = 4;
    forged.prev_hash = records[3].hash.clone();
    forged.key_id.clear();
    forged.hash = legacy_hash(&forged.prev_hash, &forged);
    records.push(forged);
    write(&path, &records);
    assert_eq!(verify_file(&path).unwrap(), Verdict::BrokenAt(4));
}

#[test]
fn a_refusal_is_recorded_as_deny() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let record = log
        .append(Entry {
            principal: "key-2",
            tenant: "acme",
            action: "keys.write",
            object: "keys",
            allowed: false,
        })
        .unwrap();
    assert_eq!(record.decision, "deny");
    assert_eq!(read(&path)[0].decision, "deny");
}

#[tokio::test]
async fn a_secret_read_names_the_principal_it_was_made_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{ "llm/openai": "sk-test" }"#,
    )
    .unwrap();
    let store = amaos_mesh::secrets::open_audited(&config, "agents")
        .await
        .unwrap();
    store.get("llm/openai").await.unwrap();
    amaos_mesh::secrets::on_behalf_of("key-7", "acme", store.get("llm/openai"))
        .await
        .unwrap();
    let records = read(&config.audit_file());
    let who: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.principal.as_str(), r.tenant.as_str()))
        .collect();
    assert_eq!(who, [("agents", ""), ("key-7", "acme")]);
    assert!(records.iter().all(|r| r.action == "secret.read"));
}

#[test]
fn durability_is_a_setting() {
    assert_eq!(Config::default().auth.audit_durability, Durability::Always);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("amaos.toml");
    std::fs::write(&file, "[auth]\naudit_durability = \"250ms\"\n").unwrap();
    assert_eq!(
        Config::load(Some(&file)).unwrap().auth.audit_durability,
        Durability::Every(Duration::from_millis(250))
    );
    for bad in ["2h", "sometimes"] {
        std::fs::write(&file, format!("[auth]\naudit_durability = \"{bad}\"\n")).unwrap();
        let error = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("audit_durability"), "{error}");
    }
    let mut bad = Config::default();
    bad.auth.audit_durability = Durability::Every(Duration::from_secs(3600));
    let error = bad.validate().unwrap_err().to_string();
    assert!(error.contains("auth.audit_durability"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_syncs_before_answering_and_an_interval_syncs_later() {
    let dir = tempfile::tempdir().unwrap();
    let always = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let log = AuditLog::append_only_configured(&always);
    for i in 0..3 {
        let record = log.append_async(entry("k")).await.unwrap();
        assert_eq!(record.index, i);
        assert_eq!(log.synced_through(), Some(i));
    }

    let mut every = always.clone();
    every.auth.audit_file = Some(dir.path().join("every.jsonl"));
    every.auth.audit_durability = Durability::Every(Duration::from_millis(300));
    let log = AuditLog::append_only_configured(&every);
    log.append_async(entry("k")).await.unwrap();
    let second = log.append_async(entry("k")).await.unwrap();
    assert!(log.synced_through() < Some(second.index));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.synced_through() < Some(second.index) {
        assert!(std::time::Instant::now() < deadline, "never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = verify_configured(&every, &every.audit_file())
        .await
        .unwrap();
    assert_eq!(report.verdict, Verdict::Intact(2), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_writers_in_one_process_extend_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut tasks = Vec::new();
    for w in 0..6 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let log = AuditLog::append_only(&path);
            let mut indexes = Vec::new();
            for i in 0..40 {
                let object = format!("w{w}-{i}");
                indexes.push(log.append_async(entry(&object)).await.unwrap().index);
            }
            indexes
        }));
    }
    // Synchronous appenders on plain threads, at the same time.
    let threads: Vec<_> = (0..2)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let log = AuditLog::append_only(&path);
                (0..40)
                    .map(|i| {
                        let object = format!("t{w}-{i}");
                        log.append(entry(&object)).unwrap().index
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    for thread in threads {
        all.extend(thread.join().unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..320).collect::<Vec<u64>>());
    assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(320));
}

#[tokio::test]
async fn records_carry_the_trace_id() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::append_only(&dir.path().join("audit.jsonl"));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("request");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    let record = log
        .append_async(entry("k"))
        .instrument(span.clone())
        .await
        .unwrap();
    assert_eq!(record.trace_id, trace_id);
    assert_ne!(record.trace_id, "");
}

#[test]
fn a_trail_being_written_verifies_as_intact_while_it_grows() {
    // Verification reads the records and the checkpoint under a shared lock
    // on the file, so appends landing meanwhile are never read as a cut tail
    // or a torn record.
    let dir = tempfile::tempdir().unwrap();
    let path = trail(dir.path(), 1);
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let log = AuditLog::append_only(&path);
            for i in 0..300 {
                log.append(entry(&format!("w{i}"))).unwrap();
            }
        })
    };
    let mut seen = 0;
    while !writer.is_finished() {
        match verify_file(&path).unwrap() {
            Verdict::Intact(n) => {
                assert!(n >= seen, "the trail shrank from {seen} to {n}");
                seen = n;
            }
            other => panic!("a growing trail verified as {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verdict::Intact(301));
}
