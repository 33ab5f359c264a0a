//! The RBAC policy from files: loaded at start, reloaded when the policy file
//! changes, a broken file refused with the running policy kept.

use std::time::Duration;

use amaos_mesh::policy::{DEFAULT_MODEL, DEFAULT_POLICY, Policy};
use tokio_util::sync::CancellationToken;

fn dev() -> Vec<String> {
    vec!["developer".to_owned()]
}

async fn eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..50 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn policy_files_are_loaded_and_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.conf");
    let policy_file = dir.path().join("policy.csv");
    std::fs::write(&model, DEFAULT_MODEL).unwrap();
    std::fs::write(&policy_file, DEFAULT_POLICY).unwrap();
    let stop = CancellationToken::new();
    let trail = dir.path().join("audit.jsonl");
    let policy = Policy::load(
        Some(model.clone()),
        Some(policy_file.clone()),
        Duration::from_millis(50),
        Some(trail.clone()),
        stop.clone(),
    )
    .unwrap();
    assert!(policy.allows("k", &dev(), "acme", "keys", "read").is_none());
    // A tenant-scoped grant appears without a restart.
    std::fs::write(
        &policy_file,
        format!("{DEFAULT_POLICY}p, developer, acme, keys*, read\n"),
    )
    .unwrap();
    assert!(eventually(|| policy.allows("k", &dev(), "acme", "keys", "read").is_some()).await);
    assert!(
        policy
            .allows("k", &dev(), "globex", "keys", "read")
            .is_none()
    );
    // A broken file is refused; the running policy stays.
    std::fs::write(&policy_file, "p, developer\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(policy.allows("k", &dev(), "acme", "keys", "read").is_some());
    assert!(
        policy
            .allows("k", &["admin".into()], "acme", "anything", "delete")
            .is_some()
    );
    // Both reloads are in the trail: the one applied, the one refused.
    let decisions: Vec<String> = std::fs::read_to_string(&trail)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "policy.reload")
        .map(|r| r["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["allow", "deny"]);
    assert_eq!(
        amaos_mesh::audit::verify_file(&trail).unwrap(),
        amaos_mesh::audit::Verdict::Intact(2)
    );
    // A broken file at start is an error.
    let Err(error) = Policy::load(
        None,
        Some(policy_file.clone()),
        Duration::from_secs(1),
        None,
        stop.clone(),
    ) else {
        panic!("a broken policy at start is refused")
    };
    assert!(error.contains("line 1"), "{error}");
    stop.cancel();
}
