//! The task as the orchestrator's domain sees it, and its conversion to the
//! contract's `Task` at the edge.

use std::collections::HashMap;
use std::time::SystemTime;

use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::time::timestamp;

/// The life of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Accepted.
    Pending,
    /// Routed; waiting for the worker.
    Queued,
    /// Running on a worker.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished without an output.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut
        )
    }

    /// The state a contract value names, if any.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::TaskState::try_from(value).ok()? {
            pb::TaskState::Pending => TaskState::Pending,
            pb::TaskState::Queued => TaskState::Queued,
            pb::TaskState::Running => TaskState::Running,
            pb::TaskState::Succeeded => TaskState::Succeeded,
            pb::TaskState::Failed => TaskState::Failed,
            pb::TaskState::Cancelled => TaskState::Cancelled,
            pb::TaskState::TimedOut => TaskState::TimedOut,
            pb::TaskState::Unspecified | pb::TaskState::NeedsReview => return None,
        })
    }
}

impl From<TaskState> for pb::TaskState {
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::Pending => pb::TaskState::Pending,
            TaskState::Queued => pb::TaskState::Queued,
            TaskState::Running => pb::TaskState::Running,
            TaskState::Succeeded => pb::TaskState::Succeeded,
            TaskState::Failed => pb::TaskState::Failed,
            TaskState::Cancelled => pb::TaskState::Cancelled,
            TaskState::TimedOut => pb::TaskState::TimedOut,
        }
    }
}

/// Which team runs a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamSource {
    /// A team workers serve by name.
    Named,
    /// A spec sent with the task.
    Inline(String),
}

/// A task.
#[derive(Clone, Debug)]
pub struct Task {
    /// Its id (UUIDv7).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// The team's name.
    pub team: String,
    /// Where the team's spec comes from.
    pub source: TeamSource,
    /// The input.
    pub input: String,
    /// The memory session.
    pub session_id: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// The state.
    pub state: TaskState,
    /// The attempt (fencing token).
    pub attempt: u32,
    /// The output.
    pub output: Option<String>,
    /// Why it did not succeed.
    pub error: Option<(pb::ErrorClass, String)>,
    /// The worker running it.
    pub worker_id: String,
    /// When accepted.
    pub created_at: SystemTime,
    /// When last changed.
    pub updated_at: SystemTime,
    /// When it started running.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// Its deadline.
    pub deadline: SystemTime,
}

impl From<&Task> for pb::Task {
    fn from(t: &Task) -> Self {
        pb::Task {
            task_id: t.id.clone(),
            tenant: t.tenant.clone(),
            submitted_by: t.submitted_by.clone(),
            team: t.team.clone(),
            input: t.input.clone(),
            state: pb::TaskState::from(t.state) as i32,
            attempt: t.attempt,
            output: t.output.clone().unwrap_or_default(),
            error: t.error.as_ref().map(|(class, message)| pb::TaskError {
                class: *class as i32,
                message: message.clone(),
            }),
            session_id: t.session_id.clone(),
            worker_id: t.worker_id.clone(),
            workflow_id: String::new(),
            depends_on: Vec::new(),
            labels: t.labels.clone(),
            created_at: Some(timestamp(t.created_at)),
            updated_at: Some(timestamp(t.updated_at)),
            started_at: t.started_at.map(timestamp),
            finished_at: t.finished_at.map(timestamp),
            deadline: Some(timestamp(t.deadline)),
        }
    }
}
