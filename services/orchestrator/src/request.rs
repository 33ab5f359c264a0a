//! Requests into domain types, in one place. Each request with more than
//! trivial fields converts with `TryFrom` into a value that holds only what
//! passed every check that needs nothing but the request; every field is
//! destructured, so a new proto field breaks the build here. Checks that
//! need the service's configuration (sizes, the default retry policy) or
//! work (parsing an inline spec) belong to the domain call that takes the
//! converted value (`Inner::build_task`).

use std::collections::HashMap;
use std::time::Duration;

use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::time::duration;

use crate::error::OrchestratorError;
use crate::task::{ErrorClass, Fallback, RetryPolicy, TaskState};

/// Longest timeout a task may ask for.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most labels on a task, and the longest key or value.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most fallbacks on a task.
pub const MAX_FALLBACKS: usize = 8;
/// Most tasks ListTasks returns at once.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> OrchestratorError {
    OrchestratorError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// Which team a submission names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamChoice {
    /// A team workers serve by name (a valid name).
    Named(String),
    /// A spec sent with the task, not yet parsed (its size depends on config).
    Inline(String),
}

/// What a request changes in the configured retry policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryOverrides {
    max_attempts: Option<u32>,
    initial_backoff: Option<Duration>,
    max_backoff: Option<Duration>,
    multiplier: Option<f64>,
    retry_on: Option<Vec<ErrorClass>>,
}

impl RetryOverrides {
    /// `base` with these overrides.
    pub fn apply(self, mut base: RetryPolicy) -> RetryPolicy {
        let RetryOverrides {
            max_attempts,
            initial_backoff,
            max_backoff,
            multiplier,
            retry_on,
        } = self;
        if let Some(n) = max_attempts {
            base.max_attempts = n;
        }
        if let Some(d) = initial_backoff {
            base.initial_backoff = d;
        }
        if let Some(d) = max_backoff {
            base.max_backoff = d;
        }
        if let Some(m) = multiplier {
            base.multiplier = m;
        }
        if let Some(classes) = retry_on {
            base.retry_on = classes;
        }
        base
    }
}

impl TryFrom<Option<pb::RetryPolicy>> for RetryOverrides {
    type Error = OrchestratorError;

    fn try_from(retry: Option<pb::RetryPolicy>) -> Result<Self, OrchestratorError> {
        let Some(pb::RetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            backoff_multiplier,
            retry_on,
        }) = retry
        else {
            return Ok(Self::default());
        };
        let backoff = |d: prost_types::Duration, field| {
            duration(&d)
                .filter(|d| *d <= Duration::from_secs(3600))
                .ok_or_else(|| invalid(field, "must be between 0 and 1h"))
        };
        Ok(Self {
            max_attempts: match max_attempts {
                0 => None,
                n if n > 100 => return Err(invalid("retry.max_attempts", "at most 100")),
                n => Some(n),
            },
            initial_backoff: initial_backoff
                .map(|d| backoff(d, "retry.initial_backoff"))
                .transpose()?,
            max_backoff: max_backoff
                .map(|d| backoff(d, "retry.max_backoff"))
                .transpose()?,
            multiplier: if backoff_multiplier == 0.0 {
                None
            } else if (1.0..=10.0).contains(&backoff_multiplier) {
                Some(backoff_multiplier)
            } else {
                return Err(invalid(
                    "retry.backoff_multiplier",
                    "must be between 1 and 10",
                ));
            },
            retry_on: if retry_on.is_empty() {
                None
            } else {
                Some(
                    retry_on
                        .into_iter()
                        .map(|c| {
                            ErrorClass::from_proto(c)
                                .ok_or_else(|| invalid("retry.retry_on", "not an error class"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            },
        })
    }
}

/// One task as a request describes it, checked as far as the request alone
/// allows.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// The team.
    pub team: TeamChoice,
    /// The input, unchecked against the size limit and the team's rule.
    pub input: String,
    /// The timeout asked for (positive, at most [`MAX_TASK_TIMEOUT`]).
    pub timeout: Option<Duration>,
    /// Changes to the configured retry policy.
    pub retry: RetryOverrides,
    /// Fallbacks, at most [`MAX_FALLBACKS`].
    pub fallbacks: Vec<Fallback>,
}

impl NewTask {
    /// Checks the fields a task shares between SubmitTask and a workflow step.
    fn from_fields(
        team: Option<pb::TeamRef>,
        input: String,
        timeout: Option<prost_types::Duration>,
        retry: Option<pb::RetryPolicy>,
        fallbacks: Vec<pb::Fallback>,
    ) -> Result<Self, OrchestratorError> {
        let team = match team.and_then(|t| t.team) {
            Some(pb::team_ref::Team::Name(name)) => {
                if !amaos_teams::valid_name(&name) {
                    return Err(invalid(
                        "team.name",
                        "must be 1 to 64 of a-z, 0-9, `-` and `_`",
                    ));
                }
                TeamChoice::Named(name)
            }
            Some(pb::team_ref::Team::SpecYaml(yaml)) => TeamChoice::Inline(yaml),
            None => return Err(invalid("team", "name a team or send a spec")),
        };
        let retry = RetryOverrides::try_from(retry)?;
        if fallbacks.len() > MAX_FALLBACKS {
            return Err(invalid("fallbacks", format!("at most {MAX_FALLBACKS}")));
        }
        let fallbacks = fallbacks
            .into_iter()
            .map(|f| match f.target {
                Some(pb::fallback::Target::TeamName(name)) if amaos_teams::valid_name(&name) => {
                    Ok(Fallback::Team(name))
                }
                Some(pb::fallback::Target::ModelAlias(alias))
                    if !alias.is_empty() && alias.len() <= 64 =>
                {
                    Ok(Fallback::Model(alias))
                }
                _ => Err(invalid(
                    "fallbacks",
                    "each names a valid team or a model alias",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = timeout
            .map(|t| {
                duration(&t)
                    .filter(|d| !d.is_zero() && *d <= MAX_TASK_TIMEOUT)
                    .ok_or_else(|| invalid("timeout", "must be positive and at most 24h"))
            })
            .transpose()?;
        Ok(Self {
            team,
            input,
            timeout,
            retry,
            fallbacks,
        })
    }
}

/// Checks what every submission carries besides its tasks.
fn check_common(
    session_id: &str,
    idempotency_key: &str,
    labels: &HashMap<String, String>,
) -> Result<(), OrchestratorError> {
    if session_id.len() > 128 {
        return Err(invalid("session_id", "at most 128 bytes"));
    }
    if idempotency_key.len() > 256 {
        return Err(invalid("idempotency_key", "at most 256 bytes"));
    }
    if labels.len() > MAX_LABELS
        || labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(invalid(
            "labels",
            format!(
                "at most {MAX_LABELS} labels with non-empty keys and keys and values of at most {MAX_LABEL_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

/// A SubmitTask request, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSubmission {
    /// The task.
    pub task: NewTask,
    /// The session it belongs to (at most 128 bytes).
    pub session_id: String,
    /// Its idempotency key (at most 256 bytes; empty for none).
    pub idempotency_key: String,
    /// Its labels (bounded in number and size).
    pub labels: HashMap<String, String>,
}

impl TryFrom<pb::SubmitTaskRequest> for TaskSubmission {
    type Error = OrchestratorError;

    fn try_from(request: pb::SubmitTaskRequest) -> Result<Self, OrchestratorError> {
        let pb::SubmitTaskRequest {
            team,
            input,
            session_id,
            idempotency_key,
            timeout,
            retry,
            fallbacks,
            labels,
        } = request;
        check_common(&session_id, &idempotency_key, &labels)?;
        Ok(Self {
            task: NewTask::from_fields(team, input, timeout, retry, fallbacks)?,
            session_id,
            idempotency_key,
            labels,
        })
    }
}

/// One step of a workflow, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowStep {
    /// Its key in the workflow.
    pub key: String,
    /// The task it runs.
    pub task: NewTask,
    /// The keys of the steps it waits for.
    pub depends_on: Vec<String>,
}

impl TryFrom<pb::WorkflowTask> for WorkflowStep {
    type Error = OrchestratorError;

    fn try_from(step: pb::WorkflowTask) -> Result<Self, OrchestratorError> {
        let pb::WorkflowTask {
            key,
            team,
            input,
            depends_on,
            retry,
            fallbacks,
            timeout,
        } = step;
        Ok(Self {
            key,
            task: NewTask::from_fields(team, input, timeout, retry, fallbacks)?,
            depends_on,
        })
    }
}

/// A SubmitWorkflow request, checked: its steps form a DAG.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowSubmission {
    /// Its name (at most 128 bytes; a label of every task when set).
    pub name: String,
    /// The steps, in request order.
    pub steps: Vec<WorkflowStep>,
    /// The session its tasks belong to.
    pub session_id: String,
    /// Its idempotency key (empty for none).
    pub idempotency_key: String,
}

impl TryFrom<pb::SubmitWorkflowRequest> for WorkflowSubmission {
    type Error = OrchestratorError;

    fn try_from(request: pb::SubmitWorkflowRequest) -> Result<Self, OrchestratorError> {
        let pb::SubmitWorkflowRequest {
            name,
            tasks,
            session_id,
            idempotency_key,
        } = request;
        check_common(&session_id, &idempotency_key, &HashMap::new())?;
        if name.len() > 128 {
            return Err(invalid("name", "at most 128 bytes"));
        }
        let shape: Vec<(String, Vec<String>)> = tasks
            .iter()
            .map(|t| (t.key.clone(), t.depends_on.clone()))
            .collect();
        crate::workflow::check(&shape).map_err(|e| invalid("tasks", e.to_string()))?;
        Ok(Self {
            name,
            steps: tasks
                .into_iter()
                .map(WorkflowStep::try_from)
                .collect::<Result<_, _>>()?,
            session_id,
            idempotency_key,
        })
    }
}

/// A ListTasks request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Most tasks on the page (1 to [`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// The task id the page continues after.
    pub before: Option<String>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this team.
    pub team: Option<String>,
}

impl TryFrom<pb::ListTasksRequest> for ListQuery {
    type Error = OrchestratorError;

    fn try_from(request: pb::ListTasksRequest) -> Result<Self, OrchestratorError> {
        let pb::ListTasksRequest {
            page_size,
            page_token,
            state,
            team,
        } = request;
        let limit = page_limit(page_size)?;
        let state = match state {
            0 => None,
            s => {
                Some(TaskState::from_proto(s).ok_or_else(|| invalid("state", "not a task state"))?)
            }
        };
        Ok(Self {
            limit,
            before: page_cursor(&page_token)?.map(str::to_owned),
            state,
            team: Some(team).filter(|t| !t.is_empty()),
        })
    }
}

/// A ListApprovals request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalQuery {
    /// Only this team's.
    pub team: Option<String>,
    /// Only this task's.
    pub task_id: Option<String>,
    /// Decided ones too.
    pub include_decided: bool,
    /// Most approvals (1 to [`MAX_PAGE_SIZE`]).
    pub limit: usize,
}

impl TryFrom<pb::ListApprovalsRequest> for ApprovalQuery {
    type Error = OrchestratorError;

    fn try_from(request: pb::ListApprovalsRequest) -> Result<Self, OrchestratorError> {
        let pb::ListApprovalsRequest {
            team,
            task_id,
            include_decided,
            page_size,
        } = request;
        let limit = page_limit(page_size)?;
        Ok(Self {
            team: Some(team).filter(|t| !t.is_empty()),
            task_id: Some(id_field("task_id", task_id, true)?).filter(|t| !t.is_empty()),
            include_decided,
            limit,
        })
    }
}

/// Longest comment on a decision, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// A DecideApproval request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRequest {
    /// The task.
    pub task_id: String,
    /// The approval.
    pub approval_id: String,
    /// The decision, by the caller.
    pub decision: crate::task::Decision,
}

impl DecisionRequest {
    /// Checks `request`, decided by `principal`.
    pub fn try_from(
        request: pb::DecideApprovalRequest,
        principal: &str,
    ) -> Result<Self, OrchestratorError> {
        let pb::DecideApprovalRequest {
            task_id,
            approval_id,
            decision,
            comment,
        } = request;
        let approve = match pb::Decision::try_from(decision) {
            Ok(pb::Decision::Approve) => true,
            Ok(pb::Decision::Reject) => false,
            _ => {
                return Err(invalid("decision", "DECISION_APPROVE or DECISION_REJECT"));
            }
        };
        if comment.len() > MAX_COMMENT_BYTES {
            return Err(invalid(
                "comment",
                format!("at most {MAX_COMMENT_BYTES} bytes"),
            ));
        }
        Ok(Self {
            task_id: id_field("task_id", task_id, false)?,
            approval_id: id_field("approval_id", approval_id, false)?,
            decision: crate::task::Decision {
                approve,
                by: principal.to_owned(),
                comment,
            },
        })
    }
}

/// A page size: 0 for the default (100), at most [`MAX_PAGE_SIZE`].
fn page_limit(page_size: u32) -> Result<usize, OrchestratorError> {
    match page_size {
        0 => Ok(100),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        _ => Err(invalid("page_size", "at most 1000")),
    }
}

/// An id field: at most 128 bytes, not empty unless `optional`.
fn id_field(
    field: &'static str,
    value: String,
    optional: bool,
) -> Result<String, OrchestratorError> {
    if value.is_empty() && !optional {
        return Err(invalid(field, "required"));
    }
    if value.len() > 128 {
        return Err(invalid(field, "at most 128 bytes"));
    }
    Ok(value)
}

/// The task id a `page_token` continues after: the tokens ListTasks hands
/// out are task ids (UUIDs in their hyphenated lowercase form). Anything
/// else is refused rather than read as a position in the listing, where
/// the backends would take it for "from the start".
fn page_cursor(page_token: &str) -> Result<Option<&str>, OrchestratorError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    match uuid::Uuid::try_parse(page_token) {
        Ok(id) if id.hyphenated().to_string() == page_token => Ok(Some(page_token)),
        _ => Err(invalid(
            "page_token",
            "not a page token from a previous ListTasks response",
        )),
    }
}

#[cfg(test)]
mod tests;

/// Whose usage a GetUsage asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageTenant {
    /// The caller's own tenant.
    Own,
    /// One named tenant (a platform admin's question).
    Named(String),
    /// Every tenant (a platform admin's question).
    All,
}

/// A checked GetUsage.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageQuery {
    /// Whose usage.
    pub tenant: UsageTenant,
    /// Only this team.
    pub team: Option<String>,
    /// Only this task.
    pub task_id: Option<String>,
    /// The first day (default: the first of this month).
    pub from: Option<crate::usage::Day>,
    /// The last day (default: today).
    pub to: Option<crate::usage::Day>,
    /// How rows are grouped.
    pub group_by: pb::UsageGrouping,
}

impl TryFrom<pb::GetUsageRequest> for UsageQuery {
    type Error = OrchestratorError;

    fn try_from(request: pb::GetUsageRequest) -> Result<Self, Self::Error> {
        let pb::GetUsageRequest {
            tenant,
            team,
            task_id,
            since,
            until,
            group_by,
        } = request;
        let day = |field: &'static str, ts: Option<prost_types::Timestamp>| {
            ts.map(|ts| {
                amaos_proto::time::system_time(&ts)
                    .map(crate::usage::Day::of)
                    .ok_or_else(|| invalid(field, "not a valid timestamp after 1970"))
            })
            .transpose()
        };
        let from = day("since", since)?;
        let to = day("until", until)?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(invalid("since", "must not be after `until`"));
        }
        let group_by = pb::UsageGrouping::try_from(group_by)
            .map_err(|_| invalid("group_by", format!("unknown grouping {group_by}")))?;
        let tenant = match tenant.as_str() {
            "" => UsageTenant::Own,
            "*" => UsageTenant::All,
            name if name.len() <= 128 => UsageTenant::Named(name.to_owned()),
            _ => return Err(invalid("tenant", "at most 128 bytes")),
        };
        if team.len() > 128 {
            return Err(invalid("team", "at most 128 bytes"));
        }
        if task_id.len() > 128 {
            return Err(invalid("task_id", "at most 128 bytes"));
        }
        Ok(Self {
            tenant,
            team: Some(team).filter(|t| !t.is_empty()),
            task_id: Some(task_id).filter(|t| !t.is_empty()),
            from,
            to,
            group_by,
        })
    }
}
