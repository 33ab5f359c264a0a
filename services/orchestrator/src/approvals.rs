//! Listing the tool calls that wait for a person (and the decided ones).

use amaos_mesh::caller::Caller;
use amaos_proto::orchestrator::v1 as pb;

use crate::error::OrchestratorError;
use crate::request::ApprovalQuery;
use crate::task::{ApprovalState, Task, TaskState};

impl crate::Inner {
    /// A person's `message` to `caller`'s task waiting for one (a swarm's
    /// handoff to `user`): recorded as the decision of its pending request,
    /// which queues the task again. Same permission and audit as a decision.
    pub(crate) async fn answer_input(
        &self,
        caller: &Caller,
        task_id: &str,
        message: String,
    ) -> Result<Task, tonic::Status> {
        let invalid = |message: String| OrchestratorError::InvalidArgument {
            field: "message",
            message,
        };
        if message.trim().is_empty() {
            return Err(invalid("required".into()).into());
        }
        if message.len() > crate::request::MAX_COMMENT_BYTES {
            return Err(invalid(format!(
                "at most {} bytes",
                crate::request::MAX_COMMENT_BYTES
            ))
            .into());
        }
        let task = self.task_of(caller, task_id).await?;
        let pending = task
            .pending_approval()
            .filter(|a| a.tool == amaos_mesh::approval::INPUT)
            .ok_or_else(|| {
                OrchestratorError::StaleDecision(format!(
                    "task `{task_id}` waits for no message (SendInput answers a swarm's handoff to `user`)"
                ))
            })?;
        let decision = crate::request::DecisionRequest {
            task_id: task_id.to_owned(),
            approval_id: pending.id.clone(),
            decision: crate::task::Decision {
                approve: true,
                by: caller.principal.clone(),
                comment: message,
            },
        };
        let (_, task) = self.decide(caller, decision).await?;
        Ok(task)
    }

    /// Task `id` of `caller`'s tenant; NOT_FOUND when it has none.
    pub(crate) async fn task_of(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Task, OrchestratorError> {
        self.backend
            .get(&caller.tenant, id)
            .await?
            .ok_or_else(|| OrchestratorError::TaskNotFound(id.to_owned()))
    }

    /// The approvals of `caller`'s tenant that `query` asks for, newest first.
    pub(crate) async fn approvals(
        &self,
        caller: &Caller,
        query: ApprovalQuery,
    ) -> Result<Vec<pb::Approval>, OrchestratorError> {
        let tasks: Vec<Task> = match &query.task_id {
            Some(id) => self
                .backend
                .get(&caller.tenant, id)
                .await?
                .into_iter()
                .collect(),
            None => {
                self.backend
                    .list(
                        &caller.tenant,
                        None,
                        (!query.include_decided).then_some(TaskState::InputRequired),
                        query.team.as_deref(),
                        query.limit,
                    )
                    .await?
            }
        };
        Ok(tasks
            .iter()
            .flat_map(|task| {
                task.approvals
                    .iter()
                    .rev()
                    .filter(|a| {
                        query.include_decided
                            || (a.state == ApprovalState::Pending
                                && task.state == TaskState::InputRequired)
                    })
                    .filter(|a| query.team.as_ref().is_none_or(|team| &a.team == team))
                    .map(|a| a.to_proto(&task.id))
            })
            .take(query.limit)
            .collect())
    }
}
