//! Workflows: dependency order, and failures that fail the dependents.

use super::*;

/// a → (b, c) → d: d is queued only when both b and c succeeded.
pub async fn a_workflow_runs_in_dependency_order(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let tasks = workflow(
        &tenant,
        &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
    );
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let members = b.workflow(&tenant, &wf).await.unwrap().unwrap();
    assert_eq!(members.len(), 4);
    let key_of = |c: &Claim| c.task.workflow_key.clone();
    let a = claim(b.as_ref()).await.unwrap();
    assert_eq!(key_of(&a), "a");
    assert!(matches!(
        b.claim("c1", LEASE).await.unwrap(),
        Claimed::Empty
    ));
    b.finish(&a, Outcome::Succeeded { output: "A".into() })
        .await
        .unwrap();
    let first = claim(b.as_ref()).await.unwrap();
    let second = claim(b.as_ref()).await.unwrap();
    let mut keys = vec![key_of(&first), key_of(&second)];
    keys.sort();
    assert_eq!(keys, ["b", "c"]);
    b.finish(&first, Outcome::Succeeded { output: "1".into() })
        .await
        .unwrap();
    assert!(
        matches!(b.claim("c1", LEASE).await.unwrap(), Claimed::Empty),
        "d waits for both"
    );
    b.finish(&second, Outcome::Succeeded { output: "2".into() })
        .await
        .unwrap();
    let d = claim(b.as_ref()).await.unwrap();
    assert_eq!(key_of(&d), "d");
}

/// A final failure fails every dependent, transitively, naming the cause.
pub async fn a_failure_fails_the_dependents(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let tasks = workflow(&tenant, &[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
    let wf = tasks[0].workflow_id.clone();
    b.create(&tenant, &wf, tasks.clone(), None).await.unwrap();
    let a = claim(b.as_ref()).await.unwrap();
    b.finish(
        &a,
        Outcome::Finished {
            state: TaskState::Failed,
            error: failed("no"),
        },
    )
    .await
    .unwrap();
    for t in &tasks[1..] {
        let got = b.get(&tenant, &t.id).await.unwrap().unwrap();
        assert_eq!(got.state, TaskState::Failed, "{}", got.workflow_key);
        assert!(got.error.unwrap().message.contains("did not succeed"));
    }
}
