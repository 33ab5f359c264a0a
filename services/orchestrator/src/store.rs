//! The embedded task store: tasks, their event logs, idempotency keys, and a
//! watch channel per task so WatchTask wakes on every new event.
//!
//! Bounded: at most `max_tasks` tasks (the oldest finished ones are dropped
//! first) and `max_events` events per task.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::time::timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::OrchestratorError;
use crate::task::{Task, TaskState};

/// How long an idempotency key maps to its task.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

struct Record {
    task: Task,
    events: Vec<pb::TaskEvent>,
    /// The number of events, for watchers.
    notify: watch::Sender<u64>,
    /// Cancelled when the task is cancelled, to stop its dispatch.
    cancel: CancellationToken,
}

/// The store.
pub struct TaskStore {
    inner: Mutex<Inner>,
    max_tasks: usize,
    max_events: usize,
}

#[derive(Default)]
struct Inner {
    // Task ids are UUIDv7, so key order is creation order.
    tasks: BTreeMap<String, Record>,
    idempotency: HashMap<(String, String), (String, Instant)>,
}

/// What applying an event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Recorded.
    Recorded,
    /// Dropped: the task is finished or the event is from an older attempt.
    Stale,
}

/// The task's event log is full.
#[derive(Debug, PartialEq, Eq)]
pub struct LogFull;

/// A watcher's view of a task.
pub struct Watch {
    /// Wakes on every new event.
    pub changes: watch::Receiver<u64>,
}

impl TaskStore {
    /// An empty store.
    pub fn new(max_tasks: usize, max_events: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_tasks,
            max_events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task an idempotency key already maps to.
    pub fn find_idempotent(&self, tenant: &str, key: &str) -> Option<Task> {
        let mut inner = self.lock();
        inner
            .idempotency
            .retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_WINDOW);
        let (id, _) = inner
            .idempotency
            .get(&(tenant.to_owned(), key.to_owned()))?
            .clone();
        inner.tasks.get(&id).map(|r| r.task.clone())
    }

    /// Stores a new task (in state PENDING) and returns its cancellation token.
    /// With an idempotency key already used, returns the existing task instead.
    pub fn insert(
        &self,
        task: Task,
        idempotency_key: Option<&str>,
    ) -> Result<Result<CancellationToken, Task>, OrchestratorError> {
        let mut inner = self.lock();
        if let Some(key) = idempotency_key {
            let k = (task.tenant.clone(), key.to_owned());
            if let Some((id, at)) = inner.idempotency.get(&k)
                && at.elapsed() < IDEMPOTENCY_WINDOW
                && let Some(existing) = inner.tasks.get(id)
            {
                return Ok(Err(existing.task.clone()));
            }
        }
        if inner.tasks.len() >= self.max_tasks {
            let oldest_finished = inner
                .tasks
                .iter()
                .find(|(_, r)| r.task.state.is_terminal())
                .map(|(id, _)| id.clone());
            match oldest_finished {
                Some(id) => {
                    inner.tasks.remove(&id);
                }
                None => return Err(OrchestratorError::StoreFull(self.max_tasks)),
            }
        }
        if let Some(key) = idempotency_key {
            inner.idempotency.insert(
                (task.tenant.clone(), key.to_owned()),
                (task.id.clone(), Instant::now()),
            );
        }
        let cancel = CancellationToken::new();
        let (notify, _) = watch::channel(0);
        let id = task.id.clone();
        inner.tasks.insert(
            id.clone(),
            Record {
                task,
                events: Vec::new(),
                notify,
                cancel: cancel.clone(),
            },
        );
        drop(inner);
        self.push(
            &id,
            pb::task_event::Kind::StateChanged(pb::StateChanged {
                from: pb::TaskState::Unspecified as i32,
                to: pb::TaskState::Pending as i32,
                reason: "accepted".into(),
                attempt: 0,
            }),
        );
        Ok(Ok(cancel))
    }

    fn push(&self, id: &str, kind: pb::task_event::Kind) -> bool {
        let mut inner = self.lock();
        let Some(record) = inner.tasks.get_mut(id) else {
            return false;
        };
        Self::push_locked(record, id, kind, self.max_events)
    }

    fn push_locked(
        record: &mut Record,
        id: &str,
        kind: pb::task_event::Kind,
        max_events: usize,
    ) -> bool {
        if record.events.len() >= max_events {
            return false;
        }
        let sequence = record.events.len() as u64 + 1;
        record.events.push(pb::TaskEvent {
            sequence,
            task_id: id.to_owned(),
            at: Some(timestamp(SystemTime::now())),
            kind: Some(kind),
        });
        record.notify.send_replace(sequence);
        true
    }

    /// Moves a task to `to` (with `update` applied first), recording the change.
    /// Finished tasks do not change again; stale attempts are refused.
    pub fn transition(
        &self,
        id: &str,
        attempt: u32,
        to: TaskState,
        reason: &str,
        update: impl FnOnce(&mut Task),
    ) -> Applied {
        let mut inner = self.lock();
        let Some(record) = inner.tasks.get_mut(id) else {
            return Applied::Stale;
        };
        if record.task.state.is_terminal() || attempt < record.task.attempt {
            return Applied::Stale;
        }
        let from = record.task.state;
        update(&mut record.task);
        record.task.state = to;
        let now = SystemTime::now();
        record.task.updated_at = now;
        if to == TaskState::Running && record.task.started_at.is_none() {
            record.task.started_at = Some(now);
        }
        if to.is_terminal() {
            record.task.finished_at = Some(now);
        }
        Self::push_locked(
            record,
            id,
            pb::task_event::Kind::StateChanged(pb::StateChanged {
                from: pb::TaskState::from(from) as i32,
                to: pb::TaskState::from(to) as i32,
                reason: reason.to_owned(),
                attempt,
            }),
            // A terminal change is always recorded, even past the event limit.
            usize::MAX,
        );
        if to.is_terminal() {
            record.cancel.cancel();
        }
        Applied::Recorded
    }

    /// Records a run event of `attempt`; false when the event log is full.
    pub fn run_event(
        &self,
        id: &str,
        attempt: u32,
        event: amaos_proto::agents::v1::RunEvent,
    ) -> Result<Applied, LogFull> {
        let mut inner = self.lock();
        let Some(record) = inner.tasks.get_mut(id) else {
            return Ok(Applied::Stale);
        };
        if record.task.state.is_terminal()
            || event.attempt != attempt
            || attempt != record.task.attempt
        {
            return Ok(Applied::Stale);
        }
        if Self::push_locked(
            record,
            id,
            pb::task_event::Kind::RunEvent(event),
            self.max_events,
        ) {
            Ok(Applied::Recorded)
        } else {
            Err(LogFull)
        }
    }

    /// A task of `tenant`.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Task> {
        self.lock()
            .tasks
            .get(id)
            .filter(|r| r.task.tenant == tenant)
            .map(|r| r.task.clone())
    }

    /// The cancellation token of a task of `tenant`.
    pub fn cancel_token(&self, tenant: &str, id: &str) -> Option<CancellationToken> {
        self.lock()
            .tasks
            .get(id)
            .filter(|r| r.task.tenant == tenant)
            .map(|r| r.cancel.clone())
    }

    /// Tasks of `tenant`, newest first, older than `before` (a task id) when given.
    pub fn list(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Vec<Task> {
        let inner = self.lock();
        let range = match before {
            Some(before) => inner.tasks.range(..before.to_owned()),
            None => inner.tasks.range::<String, _>(..),
        };
        range
            .rev()
            .map(|(_, r)| &r.task)
            .filter(|t| t.tenant == tenant)
            .filter(|t| state.is_none_or(|s| t.state == s))
            .filter(|t| team.is_none_or(|name| t.team == name))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Events after `after` and whether the task has finished, plus a watch
    /// for more; `None` when the task is not the tenant's.
    pub fn events_after(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
    ) -> Option<(Vec<pb::TaskEvent>, bool, Watch)> {
        let inner = self.lock();
        let record = inner.tasks.get(id).filter(|r| r.task.tenant == tenant)?;
        let events = record.events.iter().skip(after as usize).cloned().collect();
        Some((
            events,
            record.task.state.is_terminal(),
            Watch {
                changes: record.notify.subscribe(),
            },
        ))
    }
}
