//! Where tasks, their event logs and the work queue live: one trait,
//! [`TaskBackend`], with an in-process backend ([`memory`], the embedded
//! default) and a Redis backend ([`redis`], shared by every orchestrator
//! replica). Both pass the same conformance suite
//! (`tests/conformance.rs`, one test per scenario and backend). Rate
//! limiting of submissions is its own trait, [`RateLimiter`], held beside
//! the task store.
//!
//! The queue gives at-least-once delivery: [`TaskBackend::claim`] starts an
//! attempt under a lease; a dispatcher renews the lease while it runs the
//! attempt and [`finish`](TaskBackend::finish)es it; an attempt whose lease
//! expires (its dispatcher died) is taken over by
//! [`reclaim`](TaskBackend::reclaim). Every claim and takeover increments the
//! task's attempt number, the fencing token: writes carrying an older attempt
//! are dropped ([`Applied::Stale`]), so a stalled dispatcher cannot overwrite a
//! newer attempt's result. A draining dispatcher hands its leases back with
//! [`release`](TaskBackend::release) so another replica takes over at once.
//!
//! [`sweep`](TaskBackend::sweep) closes the gaps no single write can: tasks
//! stranded outside every structure, deadlines of tasks that never ran, and
//! dependents of a cascade interrupted by a crash.

pub mod memory;
mod rate;
pub mod redis;

pub use rate::RateLimiter;

use std::time::{Duration, SystemTime};

use amaos_proto::agents::v1::RunEvent;
use amaos_proto::orchestrator::v1 as pb;

use crate::task::{Approval, Decided, Decision, Refused, Task, TaskError, TaskState};

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store is unreachable or answered nonsense.
    #[error("task store: {0}")]
    Unavailable(String),
    /// The store holds as many unfinished tasks as it may.
    #[error("task store is full: {0}")]
    Full(String),
}

impl From<::redis::RedisError> for BackendError {
    fn from(e: ::redis::RedisError) -> Self {
        amaos_mesh::metrics::redis_error();
        BackendError::Unavailable(e.to_string())
    }
}

/// Whether a write took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It did.
    Recorded,
    /// It was dropped: the task finished, or the write carried an older attempt.
    Stale,
    /// It was dropped: the task's event log is full.
    LogFull,
}

/// A claimed attempt.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The task as of the claim (state RUNNING, `attempt` already incremented).
    pub task: Task,
    /// The backend's handle on the queue entry.
    pub entry: String,
}

impl Claim {
    /// The attempt number: the fencing token of every write of this attempt.
    pub fn attempt(&self) -> u32 {
        self.task.attempt
    }
}

/// What a dispatcher learns when it renews a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Still ours.
    Held,
    /// Taken over by another dispatcher, or the task moved on: stop.
    Lost,
    /// The task finished meanwhile (cancelled, timed out): stop.
    Finished,
}

/// How an attempt ended, as decided by the dispatcher's policy.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The team produced its output.
    Succeeded {
        /// The output.
        output: String,
    },
    /// Try again: the same stage (`next_stage` false) or the next fallback.
    Retry {
        /// Wait this long first.
        after: Duration,
        /// Why the attempt failed.
        error: TaskError,
        /// Move to the next fallback stage.
        next_stage: bool,
    },
    /// A tool call waits for a person: INPUT_REQUIRED with this pending
    /// approval; the attempt ends and the task holds no worker or slot.
    AwaitInput(Box<Approval>),
    /// Give up: FAILED or TIMED_OUT, with dependents failed too.
    Finished {
        /// The terminal state.
        state: TaskState,
        /// Why.
        error: TaskError,
    },
}

/// What a claim found.
#[derive(Clone, Debug)]
pub enum Claimed {
    /// An attempt to run.
    Attempt(Box<Claim>),
    /// Nothing is ready.
    Empty,
}

/// A task's events after a sequence number.
#[derive(Clone, Debug, Default)]
pub struct EventsPage {
    /// The events, in order.
    pub events: Vec<pb::TaskEvent>,
    /// True when the task has finished and `events` reaches its last event.
    pub finished: bool,
}

/// Something to record in a task's log during an attempt.
#[derive(Clone, Debug)]
pub enum Record {
    /// The router chose this worker.
    Worker(String),
    /// The worker emitted run events, in order.
    Run(Vec<RunEvent>),
}

/// What one [`TaskBackend::sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Tasks looked at.
    pub examined: usize,
    /// Unfinished tasks found in no structure (queue, delayed set, a held
    /// lease) and queued again.
    pub requeued: usize,
    /// PENDING, QUEUED or INPUT_REQUIRED tasks past their deadline, ended
    /// TIMED_OUT.
    pub timed_out: usize,
    /// INPUT_REQUIRED tasks whose approval expired, queued to resume with
    /// the call rejected.
    pub expired: usize,
    /// Dependents left pending by a dependency that did not succeed (the
    /// cascade was interrupted), ended as the cascade would have.
    pub ended: usize,
    /// Dead consumers removed from the queue's consumer group.
    pub consumers_removed: usize,
    /// This step reached the end of the store: the next starts a new pass
    /// from the top. A whole pass over what existed before a call is done
    /// once two steps from then on have ended a pass.
    pub pass_ended: bool,
}

impl Swept {
    /// Tasks changed: requeued, timed out or ended.
    pub fn repaired(&self) -> usize {
        self.requeued + self.timed_out + self.ended + self.expired
    }
}

/// Limits that every backend enforces.
#[derive(Clone, Copy, Debug)]
pub struct BackendLimits {
    /// Events kept per task.
    pub max_events_per_task: usize,
    /// Attempts running at once per tenant; more wait in the queue.
    pub max_running_per_tenant: u32,
    /// How long a finished task is kept.
    pub retention: Duration,
    /// Tasks kept by the in-process backend (oldest finished dropped first).
    pub max_tasks: usize,
}

/// The store and queue of tasks.
#[tonic::async_trait]
pub trait TaskBackend: Send + Sync + 'static {
    /// Stores new tasks (one, or a workflow's) under `handle` (the task or
    /// workflow id). Tasks without dependencies are queued; others wait. With
    /// an idempotency key seen within 24 h, stores nothing and returns the
    /// handle stored then.
    async fn create(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError>;

    /// A task of `tenant`.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Task>, BackendError>;

    /// The task ids of a workflow of `tenant`, by key.
    async fn workflow(
        &self,
        tenant: &str,
        workflow_id: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError>;

    /// Tasks of `tenant`, newest first, older than task id `before` when given.
    async fn list(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Task>, BackendError>;

    /// Claims the next ready task for `consumer`, starting an attempt under a
    /// lease of `lease`. May wait briefly for work.
    async fn claim(&self, consumer: &str, lease: Duration) -> Result<Claimed, BackendError>;

    /// Takes over attempts whose lease expired (their dispatcher died),
    /// starting a new attempt of each for `consumer`. `lease` is the lease
    /// every replica uses: an attempt idle that long has expired, and the new
    /// attempt gets as long.
    async fn reclaim(
        &self,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BackendError>;

    /// Extends a claim's lease.
    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Lease, BackendError>;

    /// Appends to the log of attempt `attempt` of task `id`.
    async fn record(&self, id: &str, attempt: u32, record: Record)
    -> Result<Applied, BackendError>;

    /// Ends a claimed attempt; frees the queue entry; on success queues the
    /// dependents whose dependencies have all succeeded; on a final failure
    /// fails the dependents too.
    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Applied, BackendError>;

    /// Records a person's decision on approval `approval_id` of a task of
    /// `tenant` waiting in INPUT_REQUIRED and queues the task to resume
    /// (a new attempt, on any worker). An approval past its expiry is
    /// recorded as expired instead. `None` when the tenant has no such task;
    /// a refusal changes nothing.
    async fn decide(
        &self,
        tenant: &str,
        id: &str,
        approval_id: &str,
        decision: &Decision,
    ) -> Result<Option<Result<(Decided, Task), Refused>>, BackendError>;

    /// Cancels a task of `tenant` that has not finished (and its dependents);
    /// returns the task as it is afterwards.
    async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Option<Task>, BackendError>;

    /// Events of a task of `tenant` after `after`; when there are none yet and
    /// the task has not finished, waits up to `wait` for more.
    async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError>;

    /// Moves delayed retries whose time has come to the ready queue.
    async fn promote(&self) -> Result<usize, BackendError>;

    /// Hands the lease of `claim`'s attempt back at once, so any replica's
    /// next [`reclaim`](TaskBackend::reclaim) takes the task over (a new
    /// attempt, which fences this one out) without waiting for the lease to
    /// expire. From then on [`renew`](TaskBackend::renew) of this claim is
    /// [`Lease::Lost`]. The caller stops the attempt and does not finish it.
    /// [`Applied::Stale`] when the claim no longer holds the task (taken
    /// over, or the task finished).
    ///
    /// For a draining dispatcher: release what it cannot finish in time.
    async fn release(&self, claim: &Claim) -> Result<Applied, BackendError>;

    /// Repairs what a crash between two writes, a lost write or a race can
    /// leave behind, looking at no more than `limit` tasks per call and
    /// continuing where the previous call stopped (a full pass over the store
    /// takes several calls):
    ///
    /// - an unfinished task in no structure — not in the queue (waiting or
    ///   delivered and pending), not in the delayed set, not holding a lease,
    ///   not waiting for unfinished dependencies — is queued again (a RUNNING
    ///   one with a new attempt number, fencing out whoever held it);
    /// - a PENDING, QUEUED or INPUT_REQUIRED task past its deadline ends
    ///   TIMED_OUT (its dependents fail);
    /// - an INPUT_REQUIRED task whose approval expired is queued to resume
    ///   with the call rejected (an INPUT_REQUIRED task is in no structure
    ///   by design: it waits for a person);
    /// - a pending dependent of a dependency that failed or was cancelled
    ///   ends as the interrupted cascade would have ended it;
    /// - consumers of the queue's group idle for ten leases with nothing
    ///   pending are removed (at most `limit`).
    ///
    /// `lease` is the lease every replica uses. Safe to run on every replica
    /// at once: every change is a compare-and-set, and a task queued twice
    /// runs once (the duplicate entry finds it RUNNING and is dropped).
    ///
    /// For the dispatcher's maintenance loop, every few leases.
    async fn sweep(&self, lease: Duration, limit: usize) -> Result<Swept, BackendError>;

    /// How many tasks wait for a dispatcher (queued, or delayed retries) and
    /// how long the oldest queued one has waited. For the metrics; cheap
    /// enough to call every few seconds.
    async fn queue_stats(&self) -> Result<QueueStats, BackendError>;
}

/// The queue, as [`TaskBackend::queue_stats`] sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Tasks queued and not yet claimed, plus delayed retries.
    pub depth: u64,
    /// How long the oldest queued task has waited (zero when none does).
    pub oldest: Duration,
}

/// Why a takeover starts a new attempt.
pub(crate) fn takeover_reason(previous: u32, released: bool) -> String {
    if released {
        format!(
            "attempt {previous} handed its lease back; attempt {} takes over",
            previous + 1
        )
    } else {
        format!(
            "attempt {previous} stalled (its lease expired); attempt {} takes over",
            previous + 1
        )
    }
}

/// Why a task waiting for a person timed out.
pub(crate) const DEADLINE_WHILE_WAITING: &str =
    "its deadline passed while it waited for an approval";

/// The event recording a state change.
pub fn state_event(
    from: Option<TaskState>,
    to: TaskState,
    reason: &str,
    attempt: u32,
) -> pb::task_event::Kind {
    pb::task_event::Kind::StateChanged(pb::StateChanged {
        from: from
            .map(|f| pb::TaskState::from(f) as i32)
            .unwrap_or_default(),
        to: pb::TaskState::from(to) as i32,
        reason: reason.to_owned(),
        attempt,
    })
}

/// A numbered event.
pub fn event(id: &str, sequence: u64, kind: pb::task_event::Kind) -> pb::TaskEvent {
    pb::TaskEvent {
        sequence,
        task_id: id.to_owned(),
        at: Some(amaos_proto::time::timestamp(SystemTime::now())),
        kind: Some(kind),
    }
}
