//! The task as the orchestrator's domain sees it, and its conversion to the
//! contract's `Task` at the edge. Tasks are serialized (JSON) by the Redis
//! backend, so every field here is plain data.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use amaos_mesh::retry::{Backoff, Jitter};
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::time::timestamp;
use serde::{Deserialize, Serialize};

/// The life of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted; waiting for its dependencies or a delayed retry.
    Pending,
    /// Ready to run, waiting for a dispatcher to claim it.
    Queued,
    /// An attempt is running.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished without an output.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
    /// A judge escalated the output: a person must review it.
    NeedsReview,
    /// A tool call waits for a person's approval; no worker holds it.
    InputRequired,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::TimedOut
                | TaskState::NeedsReview
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
            pb::TaskState::NeedsReview => TaskState::NeedsReview,
            pb::TaskState::InputRequired => TaskState::InputRequired,
            pb::TaskState::Unspecified => return None,
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
            TaskState::NeedsReview => pb::TaskState::NeedsReview,
            TaskState::InputRequired => pb::TaskState::InputRequired,
        }
    }
}

/// Why an attempt failed; retry policies choose by class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Network, overload, a worker that went away.
    Transient,
    /// The LLM provider failed.
    Provider,
    /// A tool failed beyond recovery.
    Tool,
    /// A budget or loop detection stopped the run.
    Budget,
    /// The input or spec is invalid.
    Invalid,
    /// An AMAOS bug.
    Internal,
    /// Stopped on request.
    Cancelled,
    /// A judge escalated the output.
    Review,
}

impl ErrorClass {
    /// The class a worker names in `RunFailed.class`.
    pub fn from_run(class: &str) -> Self {
        match class {
            "budget" => ErrorClass::Budget,
            "provider" => ErrorClass::Provider,
            "tool" => ErrorClass::Tool,
            "invalid" => ErrorClass::Invalid,
            "transient" => ErrorClass::Transient,
            "cancelled" => ErrorClass::Cancelled,
            "needs_review" => ErrorClass::Review,
            _ => ErrorClass::Internal,
        }
    }

    /// The class a contract value names.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::ErrorClass::try_from(value).ok()? {
            pb::ErrorClass::Transient => ErrorClass::Transient,
            pb::ErrorClass::Provider => ErrorClass::Provider,
            pb::ErrorClass::Tool => ErrorClass::Tool,
            pb::ErrorClass::Budget => ErrorClass::Budget,
            pb::ErrorClass::Invalid => ErrorClass::Invalid,
            pb::ErrorClass::Internal => ErrorClass::Internal,
            pb::ErrorClass::Unspecified => return None,
        })
    }
}

impl From<ErrorClass> for pb::ErrorClass {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Transient => pb::ErrorClass::Transient,
            ErrorClass::Provider => pb::ErrorClass::Provider,
            ErrorClass::Tool => pb::ErrorClass::Tool,
            ErrorClass::Budget => pb::ErrorClass::Budget,
            ErrorClass::Invalid => pb::ErrorClass::Invalid,
            ErrorClass::Internal => pb::ErrorClass::Internal,
            ErrorClass::Cancelled | ErrorClass::Review => pb::ErrorClass::Unspecified,
        }
    }
}

/// Why a task did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The class.
    pub class: ErrorClass,
    /// What happened.
    pub message: String,
}

/// When a failed attempt is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all per stage (the main team, then each fallback).
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
    /// Growth of the backoff per attempt.
    pub multiplier: f64,
    /// Classes that are retried.
    pub retry_on: Vec<ErrorClass>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            retry_on: vec![ErrorClass::Transient, ErrorClass::Provider],
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `next` of a stage (2, 3, …), with equal
    /// jitter (over the upper half of the window) drawn from `unit` (a
    /// number in 0..1).
    pub fn backoff(&self, next: u32, unit: f64) -> Duration {
        Backoff {
            first: self.initial_backoff,
            max: self.max_backoff,
            multiplier: self.multiplier,
            jitter: Jitter::Equal,
        }
        .wait_with(next.saturating_sub(1), unit)
    }
}

/// What runs the task in a stage after the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// Another team, by name.
    Team(String),
    /// The same team with this model alias for every agent.
    Model(String),
}

/// Which team runs a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TeamSource {
    /// A team workers serve by name.
    Named,
    /// A spec sent with the task.
    Inline(String),
}

/// A task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// Its id (UUIDv7).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// The roles of the submitter, forwarded to the worker.
    pub roles: Vec<String>,
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
    /// Attempts started in all; the fencing token of the current one.
    pub attempt: u32,
    /// Attempts started in the current stage.
    pub stage_attempts: u32,
    /// 0 for the main team, then 1.. for each fallback used.
    pub stage: u32,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// Fallbacks, in order.
    pub fallbacks: Vec<Fallback>,
    /// The output.
    pub output: Option<String>,
    /// Why it did not succeed.
    pub error: Option<TaskError>,
    /// The worker running it.
    pub worker_id: String,
    /// When accepted.
    pub created_at: SystemTime,
    /// When last changed.
    pub updated_at: SystemTime,
    /// When it first started running.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// Its deadline.
    pub deadline: SystemTime,
    /// The workflow it belongs to, if any.
    pub workflow_id: String,
    /// Its key within the workflow.
    pub workflow_key: String,
    /// Ids of the tasks it depends on.
    pub depends_on: Vec<String>,
    /// Ids of the tasks that depend on it.
    pub dependents: Vec<String>,
    /// Its gated tool calls, in order; the last is pending while the task
    /// is INPUT_REQUIRED.
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// Most approvals one task asks for; the next gated call fails the task.
pub const MAX_APPROVALS: usize = 64;

/// Where an approval stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// Approved.
    Approved,
    /// Rejected by a person.
    Rejected,
    /// Nobody decided in time: a rejection.
    Expired,
}

/// A gated tool call of a task, and its decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id (UUIDv7).
    pub id: String,
    /// The attempt that asked.
    pub attempt: u32,
    /// The team the attempt ran.
    pub team: String,
    /// The agent that called the tool.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// The arguments, as JSON text.
    pub arguments: String,
    /// SHA-256 (hex) of the tool and its canonical arguments.
    pub arguments_sha256: String,
    /// The call's idempotency key.
    pub call_id: String,
    /// Why it needs approval.
    pub reason: String,
    /// When it was asked for.
    pub requested_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
    /// Where it stands.
    pub state: ApprovalState,
    /// Who decided, or [`amaos_mesh::approval::EXPIRY`].
    pub decided_by: String,
    /// The decider's comment.
    pub comment: String,
    /// When it was decided.
    pub decided_at: Option<SystemTime>,
}

/// A person's decision on an approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Approve (true) or reject.
    pub approve: bool,
    /// Who decides (a principal).
    pub by: String,
    /// Why.
    pub comment: String,
}

/// What deciding an approval did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Recorded; the task resumes. The reason for its state event.
    Recorded(String),
    /// The approval had expired: recorded as expired (a rejection) instead
    /// of the decision, and the task resumes.
    Expired(String),
}

impl Decided {
    /// Why the task resumes: the reason of its state event.
    pub fn reason(&self) -> &str {
        match self {
            Decided::Recorded(reason) | Decided::Expired(reason) => reason,
        }
    }
}

/// Why a decision was refused, changing nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The task waits for no approval.
    #[error("the task is {0:?}, not waiting for an approval")]
    NotWaiting(TaskState),
    /// The approval is not the one the task waits for.
    #[error("approval `{0}` is not the one the task waits for")]
    NotPending(String),
}

impl Task {
    /// The approval the task waits for, when INPUT_REQUIRED.
    pub fn pending_approval(&self) -> Option<&Approval> {
        (self.state == TaskState::InputRequired)
            .then(|| self.approvals.last())
            .flatten()
            .filter(|a| a.state == ApprovalState::Pending)
    }

    /// Records `decision` on the pending approval `approval_id` at `now`
    /// (an expired one as expired instead); the caller then queues the task.
    /// A decision on anything but the pending approval changes nothing.
    pub fn decide(
        &mut self,
        approval_id: &str,
        decision: &Decision,
        now: SystemTime,
    ) -> Result<Decided, Refused> {
        if self.state != TaskState::InputRequired {
            return Err(Refused::NotWaiting(self.state));
        }
        let Some(approval) = self
            .approvals
            .last_mut()
            .filter(|a| a.id == approval_id && a.state == ApprovalState::Pending)
        else {
            return Err(Refused::NotPending(approval_id.to_owned()));
        };
        approval.decided_at = Some(now);
        if approval.expires_at <= now {
            approval.state = ApprovalState::Expired;
            approval.decided_by = amaos_mesh::approval::EXPIRY.to_owned();
            return Ok(Decided::Expired(format!(
                "approval of `{}` expired: the call is rejected",
                approval.tool
            )));
        }
        approval.state = if decision.approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        approval.decided_by = decision.by.clone();
        approval.comment = decision.comment.clone();
        Ok(Decided::Recorded(format!(
            "`{}` {} the call of `{}`",
            decision.by,
            if decision.approve {
                "approved"
            } else {
                "rejected"
            },
            approval.tool
        )))
    }

    /// Expires the pending approval if its time has come at `now`.
    pub fn expire_approval(&mut self, now: SystemTime) -> Option<String> {
        let id = self
            .pending_approval()
            .filter(|a| a.expires_at <= now)?
            .id
            .clone();
        match self.decide(&id, &Decision::expiry(), now) {
            Ok(Decided::Expired(reason)) => Some(reason),
            _ => None,
        }
    }

    /// The decisions a run of this task is given, and the grants its run
    /// token carries (approved calls only).
    pub fn decisions(&self) -> (Vec<amaos_proto::agents::v1::ApprovalDecision>, Vec<String>) {
        let decided = self
            .approvals
            .iter()
            .filter(|a| a.state != ApprovalState::Pending);
        let decisions = decided
            .clone()
            .map(|a| amaos_proto::agents::v1::ApprovalDecision {
                call_id: a.call_id.clone(),
                arguments_sha256: a.arguments_sha256.clone(),
                approved: a.state == ApprovalState::Approved,
                decided_by: a.decided_by.clone(),
                comment: a.comment.clone(),
            })
            .collect();
        let grants = decided
            .filter(|a| a.state == ApprovalState::Approved)
            .map(|a| amaos_mesh::approval::grant(&a.call_id, &a.arguments_sha256))
            .collect();
        (decisions, grants)
    }
}

impl Decision {
    fn expiry() -> Self {
        Decision {
            approve: false,
            by: amaos_mesh::approval::EXPIRY.to_owned(),
            comment: String::new(),
        }
    }
}

impl Approval {
    /// The contract's form, for task `task_id`.
    pub fn to_proto(&self, task_id: &str) -> pb::Approval {
        pb::Approval {
            approval_id: self.id.clone(),
            task_id: task_id.to_owned(),
            team: self.team.clone(),
            attempt: self.attempt,
            agent: self.agent.clone(),
            tool: self.tool.clone(),
            arguments: serde_json::from_str::<serde_json::Value>(&self.arguments)
                .ok()
                .and_then(|v| v.as_object().map(amaos_proto::json::map_to_struct)),
            arguments_sha256: self.arguments_sha256.clone(),
            call_id: self.call_id.clone(),
            reason: self.reason.clone(),
            required_permission: "approve".into(),
            requested_at: Some(timestamp(self.requested_at)),
            expires_at: Some(timestamp(self.expires_at)),
            state: match self.state {
                ApprovalState::Pending => pb::ApprovalState::Pending,
                ApprovalState::Approved => pb::ApprovalState::Approved,
                ApprovalState::Rejected => pb::ApprovalState::Rejected,
                ApprovalState::Expired => pb::ApprovalState::Expired,
            } as i32,
            decided_by: self.decided_by.clone(),
            comment: self.comment.clone(),
            decided_at: self.decided_at.map(timestamp),
        }
    }
}

impl Task {
    /// The team and model override of the current stage.
    pub fn current_target(&self) -> (String, Option<String>, bool) {
        let inline = matches!(self.source, TeamSource::Inline(_));
        match self
            .stage
            .checked_sub(1)
            .and_then(|i| self.fallbacks.get(i as usize))
        {
            None => (self.team.clone(), None, inline),
            Some(Fallback::Team(name)) => (name.clone(), None, false),
            Some(Fallback::Model(alias)) => (self.team.clone(), Some(alias.clone()), inline),
        }
    }
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
            error: t.error.as_ref().map(|e| pb::TaskError {
                class: pb::ErrorClass::from(e.class) as i32,
                message: e.message.clone(),
            }),
            session_id: t.session_id.clone(),
            worker_id: t.worker_id.clone(),
            workflow_id: t.workflow_id.clone(),
            depends_on: t.depends_on.clone(),
            labels: t.labels.clone(),
            created_at: Some(timestamp(t.created_at)),
            updated_at: Some(timestamp(t.updated_at)),
            started_at: t.started_at.map(timestamp),
            finished_at: t.finished_at.map(timestamp),
            deadline: Some(timestamp(t.deadline)),
            approvals: t.approvals.iter().map(|a| a.to_proto(&t.id)).collect(),
        }
    }
}

#[cfg(test)]
impl Task {
    /// A pending task of `tenant`, ready to store: the unit tests' fixture
    /// (the conformance suite has its own, outside the crate).
    pub(crate) fn sample(tenant: &str) -> Self {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            retry_on: vec![],
        };
        assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(20, 1.0), Duration::from_secs(1));
    }
}
