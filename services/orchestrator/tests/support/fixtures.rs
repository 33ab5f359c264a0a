//! What the backend tests share: the suite's limits and a task to store.

use std::time::{Duration, SystemTime};

use amaos_orchestrator::backend::BackendLimits;
use amaos_orchestrator::task::{RetryPolicy, Task, TaskState, TeamSource};

/// Limits for the suite: a short retention and a small per-tenant cap.
pub fn limits() -> BackendLimits {
    BackendLimits {
        max_events_per_task: 64,
        max_running_per_tenant: 2,
        retention: Duration::from_secs(600),
        max_tasks: 10_000,
    }
}

/// A task of `tenant` ready to store.
pub fn sample(tenant: &str) -> Task {
    let now = SystemTime::now();
    Task {
        id: amaos_mesh::new_id(),
        tenant: tenant.into(),
        submitted_by: "key-1".into(),
        roles: vec!["developer".into()],
        team: "crew".into(),
        source: TeamSource::Named,
        input: "in".into(),
        session_id: String::new(),
        labels: Default::default(),
        state: TaskState::Pending,
        attempt: 0,
        stage_attempts: 0,
        stage: 0,
        retry: RetryPolicy::default(),
        fallbacks: Vec::new(),
        output: None,
        error: None,
        worker_id: String::new(),
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        deadline: now + Duration::from_secs(600),
        workflow_id: String::new(),
        workflow_key: String::new(),
        depends_on: Vec::new(),
        dependents: Vec::new(),
        approvals: Vec::new(),
    }
}
