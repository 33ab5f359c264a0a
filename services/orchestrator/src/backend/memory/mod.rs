//! The in-process backend: everything behind one mutex, bounded, with a
//! watch channel per task for WatchTask. Time is `tokio::time`, so tests can
//! pause it. Nothing survives the process: this is the embedded default for
//! `amaos up` and tests; run the Redis backend to survive restarts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use amaos_proto::orchestrator::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{
    Applied, BackendError, BackendLimits, Claim, Claimed, EventsPage, Lease, Outcome, QueueStats,
    Record, Swept, TaskBackend,
};
use crate::task::{Task, TaskState};

const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long a task over its tenant's running cap waits before another try.
const CAP_DEFER: Duration = Duration::from_millis(50);

struct Entry {
    task: Task,
    events: Vec<pb::TaskEvent>,
    notify: watch::Sender<u64>,
}

struct LeaseEntry {
    attempt: u32,
    expires: Instant,
    /// Handed back by its holder: expired at once, never renewed.
    released: bool,
}

#[derive(Default)]
struct Inner {
    tasks: BTreeMap<String, Entry>,
    idempotency: HashMap<(String, String), (String, Instant)>,
    workflows: HashMap<String, (String, Vec<(String, String)>)>,
    ready: VecDeque<String>,
    delayed: BinaryHeap<Reverse<(Instant, String)>>,
    leases: HashMap<String, LeaseEntry>,
    running: HashMap<String, u32>,
    /// The last task id the sweep looked at.
    sweep_cursor: Option<String>,
}

/// The in-process backend.
pub struct MemoryBackend {
    inner: Mutex<Inner>,
    ready: Notify,
    limits: BackendLimits,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new(limits: BackendLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

mod lifecycle;
mod queue;
mod rate;
mod read;
mod sweep;
#[cfg(test)]
mod tests;

pub use rate::MemoryRateLimiter;

#[tonic::async_trait]
impl TaskBackend for MemoryBackend {
    async fn create(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        self.create_tasks(tenant, handle, tasks, idempotency_key)
            .await
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Task>, BackendError> {
        self.get_task(tenant, id).await
    }

    async fn workflow(
        &self,
        tenant: &str,
        workflow_id: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        self.workflow_members(tenant, workflow_id).await
    }

    async fn list(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Task>, BackendError> {
        self.list_tasks(tenant, before, state, team, limit).await
    }

    async fn claim(&self, consumer: &str, lease: Duration) -> Result<Claimed, BackendError> {
        self.claim_next(consumer, lease).await
    }

    async fn reclaim(
        &self,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BackendError> {
        self.take_over(consumer, lease, limit).await
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Lease, BackendError> {
        self.renew_lease(claim, lease).await
    }

    async fn record(
        &self,
        id: &str,
        attempt: u32,
        record: Record,
    ) -> Result<Applied, BackendError> {
        self.record_attempt(id, attempt, record).await
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Applied, BackendError> {
        self.finish_attempt(claim, outcome).await
    }

    async fn decide(
        &self,
        tenant: &str,
        id: &str,
        approval_id: &str,
        decision: &crate::task::Decision,
    ) -> Result<Option<Result<(crate::task::Decided, Task), crate::task::Refused>>, BackendError>
    {
        self.decide_approval(tenant, id, approval_id, decision)
            .await
    }

    async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Option<Task>, BackendError> {
        self.cancel_task(tenant, id, reason).await
    }

    async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        self.read_events(tenant, id, after, wait).await
    }

    async fn promote(&self) -> Result<usize, BackendError> {
        self.promote_due().await
    }

    async fn release(&self, claim: &Claim) -> Result<Applied, BackendError> {
        self.release_lease(claim).await
    }

    async fn sweep(&self, lease: Duration, limit: usize) -> Result<Swept, BackendError> {
        self.sweep_some(lease, limit).await
    }

    async fn queue_stats(&self) -> Result<QueueStats, BackendError> {
        let inner = self.lock();
        let now = std::time::SystemTime::now();
        let mut stats = QueueStats {
            depth: inner.delayed.len() as u64,
            oldest: Duration::ZERO,
        };
        // `ready` is first in, first out: its first queued task waited longest.
        for id in &inner.ready {
            let Some(entry) = inner.tasks.get(id) else {
                continue;
            };
            if entry.task.state != TaskState::Queued {
                continue;
            }
            if stats.oldest.is_zero() {
                stats.oldest = now
                    .duration_since(entry.task.updated_at)
                    .unwrap_or_default();
            }
            stats.depth += 1;
        }
        Ok(stats)
    }
}
