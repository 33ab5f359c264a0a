//! The in-process backend: everything behind one mutex, bounded, with a
//! watch channel per task for WatchTask. Time is `tokio::time`, so tests can
//! pause it. Nothing survives the process: this is the embedded default for
//! `amaos up` and tests; run the Redis backend to survive restarts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use amaos_proto::orchestrator::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{
    Applied, BackendError, BackendLimits, Claim, Claimed, EventsPage, Lease, Outcome, Record,
    Swept, TaskBackend, event, state_event, takeover_reason,
};
use crate::task::{ErrorClass, Task, TaskError, TaskState};

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
    rates: HashMap<String, f64>,
    /// The last task id the sweep looked at.
    sweep_cursor: Option<String>,
}

/// The in-process backend.
pub struct MemoryBackend {
    inner: Mutex<Inner>,
    ready: Notify,
    limits: BackendLimits,
    epoch: Instant,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new(limits: BackendLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            limits,
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Appends an event; terminal state changes are always kept.
    fn push(&mut self, id: &str, kind: pb::task_event::Kind, max: usize, force: bool) -> Applied {
        let Some(entry) = self.tasks.get_mut(id) else {
            return Applied::Stale;
        };
        if entry.events.len() >= max && !force {
            return Applied::LogFull;
        }
        let sequence = entry.events.len() as u64 + 1;
        entry.events.push(event(id, sequence, kind));
        entry.notify.send_replace(sequence);
        Applied::Recorded
    }

    /// Moves a task to `to`, recording why.
    fn set_state(&mut self, id: &str, to: TaskState, reason: &str, max: usize) {
        let Some(entry) = self.tasks.get_mut(id) else {
            return;
        };
        let from = entry.task.state;
        let attempt = entry.task.attempt;
        entry.task.state = to;
        let now = SystemTime::now();
        entry.task.updated_at = now;
        if to.is_terminal() {
            entry.task.finished_at = Some(now);
        }
        if to == TaskState::Running && entry.task.started_at.is_none() {
            entry.task.started_at = Some(now);
        }
        self.push(
            id,
            state_event(Some(from), to, reason, attempt),
            max,
            to.is_terminal(),
        );
    }

    fn release(&mut self, id: &str, attempt: u32) {
        if self.leases.get(id).is_some_and(|l| l.attempt == attempt) {
            self.leases.remove(id);
            if let Some(tenant) = self.tasks.get(id).map(|e| e.task.tenant.clone())
                && let Some(n) = self.running.get_mut(&tenant)
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Queues the dependents of `id` whose dependencies have all succeeded.
    fn release_dependents(&mut self, id: &str, max: usize) -> bool {
        let dependents = self
            .tasks
            .get(id)
            .map(|e| e.task.dependents.clone())
            .unwrap_or_default();
        let mut queued = false;
        for dependent in dependents {
            let ready = self.tasks.get(&dependent).is_some_and(|d| {
                d.task.state == TaskState::Pending
                    && d.task.depends_on.iter().all(|dep| {
                        self.tasks
                            .get(dep)
                            .is_some_and(|t| t.task.state == TaskState::Succeeded)
                    })
            });
            if ready {
                self.set_state(
                    &dependent,
                    TaskState::Queued,
                    "its dependencies succeeded",
                    max,
                );
                self.ready.push_back(dependent);
                queued = true;
            }
        }
        queued
    }

    /// Ends every unfinished dependent of `id`, transitively.
    fn end_dependents(&mut self, id: &str, state: TaskState, why: &str, max: usize) {
        let mut stack = vec![id.to_owned()];
        while let Some(current) = stack.pop() {
            let (key, dependents) = match self.tasks.get(&current) {
                Some(e) => (e.task.workflow_key.clone(), e.task.dependents.clone()),
                None => continue,
            };
            for dependent in dependents {
                let open = self
                    .tasks
                    .get(&dependent)
                    .is_some_and(|d| !d.task.state.is_terminal());
                if open {
                    let message = format!("dependency `{key}` {why}");
                    if let Some(d) = self.tasks.get_mut(&dependent) {
                        d.task.error = Some(TaskError {
                            class: ErrorClass::Invalid,
                            message: message.clone(),
                        });
                    }
                    self.set_state(&dependent, state, &message, max);
                    stack.push(dependent);
                }
            }
        }
    }

    /// Ends a task that never started in time TIMED_OUT, failing its dependents.
    fn time_out(&mut self, id: &str, max: usize) {
        let message = "the task did not start before its deadline";
        if let Some(e) = self.tasks.get_mut(id) {
            e.task.error = Some(TaskError {
                class: ErrorClass::Transient,
                message: message.to_owned(),
            });
        }
        self.set_state(id, TaskState::TimedOut, message, max);
        self.end_dependents(
            id,
            TaskState::Failed,
            &format!("did not succeed: {message}"),
            max,
        );
    }

    fn evict_for(&mut self, room: usize, max_tasks: usize) -> Result<(), BackendError> {
        while self.tasks.len() + room > max_tasks {
            let oldest = self
                .tasks
                .iter()
                .find(|(_, e)| e.task.state.is_terminal())
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    self.tasks.remove(&id);
                }
                None => {
                    return Err(BackendError::Full(format!(
                        "{max_tasks} tasks are stored and none has finished"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl TaskBackend for MemoryBackend {
    async fn create(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let max = self.limits.max_events_per_task;
        let mut inner = self.lock();
        if let Some(key) = idempotency_key {
            let k = (tenant.to_owned(), key.to_owned());
            inner
                .idempotency
                .retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_WINDOW);
            if let Some((existing, _)) = inner.idempotency.get(&k) {
                return Ok(Some(existing.clone()));
            }
        }
        inner.evict_for(tasks.len(), self.limits.max_tasks)?;
        if let Some(key) = idempotency_key {
            inner.idempotency.insert(
                (tenant.to_owned(), key.to_owned()),
                (handle.to_owned(), Instant::now()),
            );
        }
        if let Some(first) = tasks.first().filter(|t| !t.workflow_id.is_empty()) {
            let members = tasks
                .iter()
                .map(|t| (t.workflow_key.clone(), t.id.clone()))
                .collect();
            inner
                .workflows
                .insert(first.workflow_id.clone(), (tenant.to_owned(), members));
        }
        let mut any_ready = false;
        for mut task in tasks {
            let id = task.id.clone();
            let ready = task.depends_on.is_empty();
            task.state = TaskState::Pending;
            let (notify, _) = watch::channel(0);
            inner.tasks.insert(
                id.clone(),
                Entry {
                    task,
                    events: Vec::new(),
                    notify,
                },
            );
            inner.push(
                &id,
                state_event(None, TaskState::Pending, "accepted", 0),
                max,
                false,
            );
            if ready {
                inner.set_state(&id, TaskState::Queued, "ready to run", max);
                inner.ready.push_back(id);
                any_ready = true;
            }
        }
        drop(inner);
        if any_ready {
            self.ready.notify_waiters();
            self.ready.notify_one();
        }
        Ok(None)
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Task>, BackendError> {
        Ok(self
            .lock()
            .tasks
            .get(id)
            .filter(|e| e.task.tenant == tenant)
            .map(|e| e.task.clone()))
    }

    async fn workflow(
        &self,
        tenant: &str,
        workflow_id: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        Ok(self
            .lock()
            .workflows
            .get(workflow_id)
            .filter(|(t, _)| t == tenant)
            .map(|(_, members)| members.clone()))
    }

    async fn list(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Task>, BackendError> {
        let inner = self.lock();
        let range = match before {
            Some(before) => inner.tasks.range(..before.to_owned()),
            None => inner.tasks.range::<String, _>(..),
        };
        Ok(range
            .rev()
            .map(|(_, e)| &e.task)
            .filter(|t| t.tenant == tenant)
            .filter(|t| state.is_none_or(|s| t.state == s))
            .filter(|t| team.is_none_or(|name| t.team == name))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn claim(&self, consumer: &str, lease: Duration) -> Result<Claimed, BackendError> {
        let max = self.limits.max_events_per_task;
        for round in 0..2 {
            {
                let mut inner = self.lock();
                while let Some(id) = inner.ready.pop_front() {
                    let Some(entry) = inner.tasks.get(&id) else {
                        continue;
                    };
                    if entry.task.state != TaskState::Queued {
                        continue;
                    }
                    if entry.task.deadline <= SystemTime::now() {
                        inner.time_out(&id, max);
                        continue;
                    }
                    let tenant = entry.task.tenant.clone();
                    let running = inner.running.get(&tenant).copied().unwrap_or(0);
                    if running >= self.limits.max_running_per_tenant {
                        inner
                            .delayed
                            .push(Reverse((Instant::now() + CAP_DEFER, id)));
                        continue;
                    }
                    *inner.running.entry(tenant).or_default() += 1;
                    let Some(entry) = inner.tasks.get_mut(&id) else {
                        continue;
                    };
                    entry.task.attempt += 1;
                    entry.task.stage_attempts += 1;
                    let attempt = entry.task.attempt;
                    let reason = format!("attempt {attempt} claimed by {consumer}");
                    inner.set_state(&id, TaskState::Running, &reason, max);
                    inner.leases.insert(
                        id.clone(),
                        LeaseEntry {
                            attempt,
                            expires: Instant::now() + lease,
                            released: false,
                        },
                    );
                    let Some(task) = inner.tasks.get(&id).map(|e| e.task.clone()) else {
                        continue;
                    };
                    return Ok(Claimed::Attempt(Box::new(Claim { task, entry: id })));
                }
            }
            if round == 0 {
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), self.ready.notified()).await;
            }
        }
        Ok(Claimed::Empty)
    }

    async fn reclaim(
        &self,
        _consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BackendError> {
        let max = self.limits.max_events_per_task;
        let now = Instant::now();
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect();
        let mut claims = Vec::new();
        for id in expired {
            let finished = inner
                .tasks
                .get(&id)
                .is_none_or(|e| e.task.state.is_terminal());
            if finished {
                let attempt = inner.leases.get(&id).map(|l| l.attempt).unwrap_or_default();
                inner.release(&id, attempt);
                continue;
            }
            let released = inner.leases.get(&id).is_some_and(|l| l.released);
            let Some(entry) = inner.tasks.get_mut(&id) else {
                continue;
            };
            let stalled = entry.task.attempt;
            entry.task.attempt += 1;
            entry.task.stage_attempts += 1;
            let task = entry.task.clone();
            inner.leases.insert(
                id.clone(),
                LeaseEntry {
                    attempt: task.attempt,
                    expires: now + lease,
                    released: false,
                },
            );
            let reason = takeover_reason(stalled, released);
            inner.set_state(&id, TaskState::Running, &reason, max);
            let task = inner.tasks.get(&id).map(|e| e.task.clone()).unwrap_or(task);
            claims.push(Claim { task, entry: id });
        }
        Ok(claims)
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Lease, BackendError> {
        let mut inner = self.lock();
        let id = &claim.task.id;
        let Some(entry) = inner.tasks.get(id) else {
            return Ok(Lease::Lost);
        };
        if entry.task.state.is_terminal() {
            return Ok(Lease::Finished);
        }
        if entry.task.attempt != claim.attempt() {
            return Ok(Lease::Lost);
        }
        match inner.leases.get_mut(id) {
            Some(l) if l.attempt == claim.attempt() && !l.released => {
                l.expires = Instant::now() + lease;
                Ok(Lease::Held)
            }
            _ => Ok(Lease::Lost),
        }
    }

    async fn record(
        &self,
        id: &str,
        attempt: u32,
        record: Record,
    ) -> Result<Applied, BackendError> {
        let max = self.limits.max_events_per_task;
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(id) else {
            return Ok(Applied::Stale);
        };
        if entry.task.state.is_terminal() || entry.task.attempt != attempt {
            return Ok(Applied::Stale);
        }
        Ok(match record {
            Record::Worker(worker) => {
                entry.task.worker_id = worker;
                Applied::Recorded
            }
            Record::Run(runs) => {
                let mut applied = Applied::Recorded;
                for run in runs {
                    applied = inner.push(id, pb::task_event::Kind::RunEvent(run), max, false);
                    if applied != Applied::Recorded {
                        break;
                    }
                }
                applied
            }
        })
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Applied, BackendError> {
        let max = self.limits.max_events_per_task;
        let id = claim.task.id.as_str();
        let attempt = claim.attempt();
        let mut inner = self.lock();
        inner.release(id, attempt);
        let current = inner.tasks.get(id).map(|e| (e.task.state, e.task.attempt));
        match current {
            Some((state, a)) if !state.is_terminal() && a == attempt => {}
            _ => return Ok(Applied::Stale),
        }
        let mut wake = false;
        match outcome {
            Outcome::Succeeded { output } => {
                if let Some(e) = inner.tasks.get_mut(id) {
                    e.task.output = Some(output);
                    e.task.error = None;
                }
                inner.set_state(id, TaskState::Succeeded, "the team finished", max);
                wake = inner.release_dependents(id, max);
            }
            Outcome::Retry {
                after,
                error,
                next_stage,
            } => {
                let reason = format!(
                    "attempt {attempt} failed ({}); retrying in {after:.1?}",
                    error.message
                );
                if let Some(e) = inner.tasks.get_mut(id) {
                    e.task.error = Some(error);
                    if next_stage {
                        e.task.stage += 1;
                        e.task.stage_attempts = 0;
                    }
                }
                inner.set_state(id, TaskState::Pending, &reason, max);
                inner
                    .delayed
                    .push(Reverse((Instant::now() + after, id.to_owned())));
            }
            Outcome::Finished { state, error } => {
                let message = error.message.clone();
                if let Some(e) = inner.tasks.get_mut(id) {
                    e.task.error = Some(error);
                }
                inner.set_state(id, state, &message, max);
                inner.end_dependents(
                    id,
                    TaskState::Failed,
                    &format!("did not succeed: {message}"),
                    max,
                );
            }
        }
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        Ok(Applied::Recorded)
    }

    async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Option<Task>, BackendError> {
        let max = self.limits.max_events_per_task;
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(id).filter(|e| e.task.tenant == tenant) else {
            return Ok(None);
        };
        if !entry.task.state.is_terminal() {
            entry.task.error = Some(TaskError {
                class: ErrorClass::Cancelled,
                message: reason.to_owned(),
            });
            inner.set_state(id, TaskState::Cancelled, reason, max);
            inner.end_dependents(id, TaskState::Cancelled, "was cancelled", max);
        }
        Ok(inner.tasks.get(id).map(|e| e.task.clone()))
    }

    async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        let mut changes = {
            let inner = self.lock();
            let Some(entry) = inner.tasks.get(id).filter(|e| e.task.tenant == tenant) else {
                return Ok(None);
            };
            let finished = entry.task.state.is_terminal();
            if entry.events.len() as u64 > after || finished {
                return Ok(Some(EventsPage {
                    events: entry.events.iter().skip(after as usize).cloned().collect(),
                    finished,
                }));
            }
            entry.notify.subscribe()
        };
        let _ = tokio::time::timeout(wait, changes.changed()).await;
        let inner = self.lock();
        let Some(entry) = inner.tasks.get(id) else {
            return Ok(None);
        };
        Ok(Some(EventsPage {
            events: entry.events.iter().skip(after as usize).cloned().collect(),
            finished: entry.task.state.is_terminal(),
        }))
    }

    async fn promote(&self) -> Result<usize, BackendError> {
        let max = self.limits.max_events_per_task;
        let now = Instant::now();
        let mut inner = self.lock();
        let mut moved = 0;
        while inner
            .delayed
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((_, id))) = inner.delayed.pop() else {
                break;
            };
            let state = inner
                .tasks
                .get(&id)
                .map(|e| (e.task.state, e.task.attempt, e.task.stage_attempts));
            match state {
                Some((TaskState::Pending, attempt, _)) => {
                    let reason = format!("retrying after attempt {attempt}");
                    inner.set_state(&id, TaskState::Queued, &reason, max);
                    inner.ready.push_back(id);
                    moved += 1;
                }
                Some((TaskState::Queued, _, _)) => {
                    inner.ready.push_back(id);
                    moved += 1;
                }
                _ => {}
            }
        }
        drop(inner);
        if moved > 0 {
            self.ready.notify_waiters();
            self.ready.notify_one();
        }
        Ok(moved)
    }

    async fn release(&self, claim: &Claim) -> Result<Applied, BackendError> {
        let mut inner = self.lock();
        let id = &claim.task.id;
        let current = inner
            .tasks
            .get(id)
            .is_some_and(|e| !e.task.state.is_terminal() && e.task.attempt == claim.attempt());
        match inner.leases.get_mut(id) {
            Some(l) if current && l.attempt == claim.attempt() => {
                l.expires = Instant::now();
                l.released = true;
                Ok(Applied::Recorded)
            }
            _ => Ok(Applied::Stale),
        }
    }

    async fn sweep(&self, _lease: Duration, limit: usize) -> Result<Swept, BackendError> {
        let max = self.limits.max_events_per_task;
        let now = SystemTime::now();
        let mut swept = Swept::default();
        let mut inner = self.lock();
        let start = match inner.sweep_cursor.take() {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Unbounded,
        };
        let ids: Vec<String> = inner
            .tasks
            .range((start, Bound::Unbounded))
            .take(limit.max(1))
            .map(|(id, _)| id.clone())
            .collect();
        // A short page ends the pass: the next call starts from the top.
        if ids.len() == limit.max(1) {
            inner.sweep_cursor = ids.last().cloned();
        }
        let queued: HashSet<String> = inner
            .ready
            .iter()
            .cloned()
            .chain(inner.delayed.iter().map(|Reverse((_, id))| id.clone()))
            .collect();
        let mut wake = false;
        for id in ids {
            swept.examined += 1;
            let Some(task) = inner.tasks.get(&id).map(|e| e.task.clone()) else {
                continue;
            };
            if task.state.is_terminal() {
                continue;
            }
            if matches!(task.state, TaskState::Pending | TaskState::Queued) && task.deadline <= now
            {
                inner.time_out(&id, max);
                swept.timed_out += 1;
                continue;
            }
            if task.state == TaskState::Pending && !task.depends_on.is_empty() {
                let deps: Vec<Option<TaskState>> = task
                    .depends_on
                    .iter()
                    .map(|dep| inner.tasks.get(dep).map(|e| e.task.state))
                    .collect();
                if let Some((dep, state)) =
                    task.depends_on.iter().zip(&deps).find(|(_, s)| {
                        s.is_none_or(|s| s.is_terminal() && s != TaskState::Succeeded)
                    })
                {
                    // The cascade from `dep` was cut short: finish it.
                    let (to, why) = match state {
                        Some(TaskState::Cancelled) => {
                            (TaskState::Cancelled, "was cancelled".to_owned())
                        }
                        _ => (TaskState::Failed, "did not succeed".to_owned()),
                    };
                    if inner.tasks.contains_key(dep) {
                        inner.end_dependents(dep, to, &why, max);
                    } else {
                        // The dependency is gone (evicted once finished).
                        let message = format!("dependency `{dep}` {why}");
                        if let Some(e) = inner.tasks.get_mut(&id) {
                            e.task.error = Some(TaskError {
                                class: ErrorClass::Invalid,
                                message: message.clone(),
                            });
                        }
                        inner.set_state(&id, to, &message, max);
                        inner.end_dependents(&id, to, &message, max);
                    }
                    swept.ended += 1;
                    continue;
                }
                if deps.iter().any(|s| s != &Some(TaskState::Succeeded)) {
                    continue; // Waiting for its dependencies.
                }
            }
            let leased = inner
                .leases
                .get(&id)
                .is_some_and(|l| l.attempt == task.attempt);
            if queued.contains(&id) || (task.state == TaskState::Running && leased) {
                continue;
            }
            match task.state {
                TaskState::Pending => {
                    inner.set_state(
                        &id,
                        TaskState::Queued,
                        "it was in no queue: queued again",
                        max,
                    );
                }
                TaskState::Running => {
                    // Fence out whoever ran it: the next claim starts attempt + 2.
                    if let Some(e) = inner.tasks.get_mut(&id) {
                        e.task.attempt += 1;
                    }
                    let reason = format!("attempt {} holds no lease: queued again", task.attempt);
                    inner.set_state(&id, TaskState::Queued, &reason, max);
                }
                _ => {}
            }
            inner.ready.push_back(id);
            swept.requeued += 1;
            wake = true;
        }
        drop(inner);
        if wake {
            self.ready.notify_waiters();
            self.ready.notify_one();
        }
        Ok(swept)
    }

    async fn rate_limit(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, BackendError> {
        let now = self.epoch.elapsed().as_secs_f64();
        let mut inner = self.lock();
        let tat = inner.rates.get(key).copied();
        match super::gcra(tat, now, per_second, burst) {
            Ok(next) => {
                if inner.rates.len() >= 100_000 {
                    inner.rates.retain(|_, t| *t > now);
                }
                inner.rates.insert(key.to_owned(), next);
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::{limits, sample};

    const LEASE: Duration = Duration::from_secs(30);

    async fn claim(b: &MemoryBackend) -> Claim {
        for _ in 0..10 {
            if let Claimed::Attempt(c) = b.claim("c1", LEASE).await.unwrap() {
                return *c;
            }
        }
        panic!("nothing to claim");
    }

    /// The in-process backend cannot strand a task (every change is under
    /// one lock), but the sweep repairs one all the same: a retry out of the
    /// delayed queue, a RUNNING task without a lease (fenced), a QUEUED one
    /// out of the ready queue — at most `limit` tasks a call.
    #[tokio::test]
    async fn the_sweep_queues_stranded_tasks_again_a_few_at_a_time() {
        let b = MemoryBackend::new(limits());
        let (retried, running, queued) = (sample("acme"), sample("acme"), sample("acme"));
        for t in [&retried, &running] {
            b.create("acme", &t.id, vec![t.clone()], None)
                .await
                .unwrap();
        }
        let first = claim(&b).await;
        let second = claim(&b).await;
        let (r, held) = if first.task.id == retried.id {
            (first, second)
        } else {
            (second, first)
        };
        b.finish(
            &r,
            Outcome::Retry {
                after: Duration::from_secs(60),
                error: TaskError {
                    class: ErrorClass::Transient,
                    message: "boom".into(),
                },
                next_stage: false,
            },
        )
        .await
        .unwrap();
        b.create("acme", &queued.id, vec![queued.clone()], None)
            .await
            .unwrap();
        {
            let mut inner = b.lock();
            inner.delayed.clear();
            inner.ready.clear();
            inner.release(&held.task.id, held.attempt());
        }
        let mut total = Swept::default();
        for _ in 0..4 {
            let s = b.sweep(LEASE, 2).await.unwrap();
            assert!(s.examined <= 2, "{s:?}");
            total.examined += s.examined;
            total.requeued += s.requeued;
        }
        assert_eq!(total.requeued, 3, "{total:?}");
        assert_eq!(
            b.finish(
                &held,
                Outcome::Succeeded {
                    output: "old".into()
                }
            )
            .await
            .unwrap(),
            Applied::Stale
        );
        let mut attempts = Vec::new();
        for _ in 0..3 {
            let c = claim(&b).await;
            attempts.push((c.task.id.clone(), c.attempt()));
            b.finish(
                &c,
                Outcome::Succeeded {
                    output: "ok".into(),
                },
            )
            .await
            .unwrap();
        }
        attempts.sort();
        let mut expected = vec![
            (retried.id.clone(), 2),
            (running.id.clone(), 3),
            (queued.id.clone(), 1),
        ];
        expected.sort();
        assert_eq!(attempts, expected);
        assert_eq!(b.sweep(LEASE, 10).await.unwrap().repaired(), 0);
    }
}
