//! Tasks that wait for a person: INPUT_REQUIRED holds no worker or slot,
//! a decision resumes the task on a new attempt, anything but the pending
//! approval is refused, expiry rejects, and deadlines still hold.

use amaos_orchestrator::task::{Approval, ApprovalState, Decided, Decision, Refused};

use super::*;

fn approval(attempt: u32, expires_in: Duration) -> Approval {
    let now = SystemTime::now();
    Approval {
        id: amaos_mesh::new_id(),
        attempt,
        team: "crew".into(),
        agent: "writer".into(),
        tool: "file_write".into(),
        arguments: r#"{"path":"a.md"}"#.into(),
        arguments_sha256: "ab".repeat(32),
        call_id: format!("call-{attempt}"),
        reason: "the spec requires approval".into(),
        requested_at: now,
        expires_at: now + expires_in,
        state: ApprovalState::Pending,
        decided_by: String::new(),
        comment: String::new(),
        decided_at: None,
    }
}

fn by(approve: bool) -> Decision {
    Decision {
        approve,
        by: "key-ops".into(),
        comment: "looks right".into(),
    }
}

/// Stores a task, claims it and ends the attempt waiting for `asked`.
async fn waiting(b: &dyn TaskBackend, tenant: &str, asked: Approval, deadline: Duration) -> Task {
    let mut task = sample(tenant);
    task.deadline = SystemTime::now() + deadline;
    b.create(tenant, &task.id, vec![task.clone()], None)
        .await
        .unwrap();
    let c = claim(b).await.unwrap();
    assert_eq!(
        b.finish(&c, Outcome::AwaitInput(Box::new(asked)))
            .await
            .unwrap(),
        Applied::Recorded
    );
    b.get(tenant, &task.id).await.unwrap().unwrap()
}

/// A task waiting for a person holds no slot and is not claimable; only a
/// decision on its pending approval, by its tenant, resumes it (once), on
/// a new attempt that sees the decision.
pub async fn a_waiting_task_resumes_once_decided(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let asked = approval(1, Duration::from_secs(600));
    let task = waiting(b.as_ref(), &tenant, asked.clone(), Duration::from_secs(600)).await;
    assert_eq!(task.state, TaskState::InputRequired);
    assert_eq!(task.pending_approval(), Some(&asked));
    assert!(
        matches!(
            b.claim("c1", Duration::from_millis(50)).await.unwrap(),
            Claimed::Empty
        ),
        "a waiting task is not in the queue"
    );
    // The sweep leaves it alone: it waits by design.
    let swept = sweep(b.as_ref()).await;
    assert_eq!(swept.repaired(), 0, "{swept:?}");

    // Another tenant does not find it; another approval id is refused.
    assert!(
        b.decide("other", &task.id, &asked.id, &by(true))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        b.decide(&tenant, &task.id, "not-it", &by(true))
            .await
            .unwrap()
            .unwrap()
            .unwrap_err(),
        Refused::NotPending("not-it".into())
    );
    let (decided, after) = b
        .decide(&tenant, &task.id, &asked.id, &by(true))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(decided, Decided::Recorded(_)), "{decided:?}");
    assert_eq!(after.state, TaskState::Queued);
    // A second decision (approve or reject) changes nothing.
    assert_eq!(
        b.decide(&tenant, &task.id, &asked.id, &by(false))
            .await
            .unwrap()
            .unwrap()
            .unwrap_err(),
        Refused::NotWaiting(TaskState::Queued)
    );
    let resumed = claim(b.as_ref())
        .await
        .expect("the decided task runs again");
    assert_eq!(resumed.task.id, task.id);
    assert_eq!(resumed.attempt(), 2);
    let decided = &resumed.task.approvals[0];
    assert_eq!(decided.state, ApprovalState::Approved);
    assert_eq!(decided.decided_by, "key-ops");
    let (decisions, grants) = resumed.task.decisions();
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0].approved);
    assert_eq!(
        grants,
        [amaos_mesh::approval::grant(
            &asked.call_id,
            &asked.arguments_sha256
        )]
    );
    b.finish(
        &resumed,
        Outcome::Succeeded {
            output: "done".into(),
        },
    )
    .await
    .unwrap();
    let page = b
        .events(&tenant, &task.id, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        states(&page.events),
        [
            TaskState::Pending,
            TaskState::Queued,
            TaskState::Running,
            TaskState::InputRequired,
            TaskState::Queued,
            TaskState::Running,
            TaskState::Succeeded,
        ]
    );
}

/// Nobody decides in time: the sweep resumes the task with the call
/// rejected by `expiry`; a decision arriving after the expiry (before the
/// sweep) records the expiry instead of itself.
pub async fn an_expired_approval_resumes_the_task_rejected(b: Arc<dyn TaskBackend>) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let swept_one = approval(1, Duration::from_millis(200));
    let late_one = approval(1, Duration::from_millis(200));
    let swept_task = waiting(
        b.as_ref(),
        &tenant,
        swept_one.clone(),
        Duration::from_secs(600),
    )
    .await;
    let late_task = waiting(
        b.as_ref(),
        &tenant,
        late_one.clone(),
        Duration::from_secs(600),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (decided, after) = b
        .decide(&tenant, &late_task.id, &late_one.id, &by(true))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(decided, Decided::Expired(_)), "{decided:?}");
    assert_eq!(after.approvals[0].state, ApprovalState::Expired);
    assert_eq!(after.state, TaskState::Queued);

    let swept = sweep(b.as_ref()).await;
    assert_eq!(swept.expired, 1, "{swept:?}");
    let got = b.get(&tenant, &swept_task.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Queued);
    let expired = &got.approvals[0];
    assert_eq!(expired.state, ApprovalState::Expired);
    assert_eq!(expired.decided_by, amaos_mesh::approval::EXPIRY);
    let (decisions, grants) = got.decisions();
    assert!(!decisions[0].approved);
    assert!(grants.is_empty(), "an expired call is never granted");
    // Both run again.
    let mut ids = vec![
        claim(b.as_ref()).await.unwrap().task.id,
        claim(b.as_ref()).await.unwrap().task.id,
    ];
    ids.sort();
    let mut expected = vec![swept_task.id, late_task.id];
    expected.sort();
    assert_eq!(ids, expected);
}

/// A waiting task's deadline still holds (the sweep ends it TIMED_OUT),
/// and it can be cancelled; a decision afterwards is refused.
pub async fn a_waiting_task_times_out_at_its_deadline_and_can_be_cancelled(
    b: Arc<dyn TaskBackend>,
) {
    let tenant = format!("t{}", amaos_mesh::new_id().replace('-', ""));
    let late = approval(1, Duration::from_secs(600));
    let late_task = waiting(
        b.as_ref(),
        &tenant,
        late.clone(),
        Duration::from_millis(300),
    )
    .await;
    let cancelled = approval(1, Duration::from_secs(600));
    let cancelled_task = waiting(
        b.as_ref(),
        &tenant,
        cancelled.clone(),
        Duration::from_secs(600),
    )
    .await;
    let after = b
        .cancel(&tenant, &cancelled_task.id, "not needed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.state, TaskState::Cancelled);
    assert_eq!(
        b.decide(&tenant, &cancelled_task.id, &cancelled.id, &by(true))
            .await
            .unwrap()
            .unwrap()
            .unwrap_err(),
        Refused::NotWaiting(TaskState::Cancelled)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let swept = sweep(b.as_ref()).await;
    assert_eq!(swept.timed_out, 1, "{swept:?}");
    let got = b.get(&tenant, &late_task.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::TimedOut);
    assert!(got.error.unwrap().message.contains("approval"));
    assert!(
        matches!(
            b.claim("c1", Duration::from_millis(50)).await.unwrap(),
            Claimed::Empty
        ),
        "neither runs again"
    );
}
