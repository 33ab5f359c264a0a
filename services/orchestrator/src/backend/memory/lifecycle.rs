//! A task's life outside the queue: creation, the log of an attempt, how an
//! attempt ends, cancellation, timeouts and the cascade to dependents; the
//! helpers on [`Inner`] run under the backend's one lock.

use std::cmp::Reverse;
use std::time::SystemTime;

use amaos_proto::orchestrator::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Entry, IDEMPOTENCY_WINDOW, Inner, MemoryBackend};
use crate::backend::{Applied, BackendError, Claim, Outcome, Record, event, state_event};
use crate::task::{Decided, Decision, ErrorClass, Refused, Task, TaskError, TaskState};

impl Inner {
    /// Appends an event; terminal state changes are always kept.
    pub(super) fn push(
        &mut self,
        id: &str,
        kind: pb::task_event::Kind,
        max: usize,
        force: bool,
    ) -> Applied {
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
    pub(super) fn set_state(&mut self, id: &str, to: TaskState, reason: &str, max: usize) {
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

    pub(super) fn release(&mut self, id: &str, attempt: u32) {
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
    pub(super) fn release_dependents(&mut self, id: &str, max: usize) -> bool {
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
    pub(super) fn end_dependents(&mut self, id: &str, state: TaskState, why: &str, max: usize) {
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
    pub(super) fn time_out(&mut self, id: &str, max: usize) {
        self.time_out_because(id, "the task did not start before its deadline", max);
    }

    /// Ends a task past its deadline TIMED_OUT for `message`, failing its
    /// dependents.
    pub(super) fn time_out_because(&mut self, id: &str, message: &str, max: usize) {
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

    pub(super) fn evict_for(&mut self, room: usize, max_tasks: usize) -> Result<(), BackendError> {
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

impl MemoryBackend {
    /// Stores new tasks under `handle`, or returns the handle stored before
    /// under the same idempotency key.
    pub(super) async fn create_tasks(
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

    /// Appends to the log of a running attempt.
    pub(super) async fn record_attempt(
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

    /// Ends a claimed attempt as the dispatcher decided.
    pub(super) async fn finish_attempt(
        &self,
        claim: &Claim,
        outcome: Outcome,
    ) -> Result<Applied, BackendError> {
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
            Outcome::AwaitInput(approval) => {
                let reason = format!(
                    "attempt {attempt} waits for a person to approve `{}` (approval {})",
                    approval.tool, approval.id
                );
                if let Some(e) = inner.tasks.get_mut(id) {
                    e.task.approvals.push(*approval);
                }
                inner.set_state(id, TaskState::InputRequired, &reason, max);
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

    /// Records a decision on a task waiting for one, and queues the task.
    pub(super) async fn decide_approval(
        &self,
        tenant: &str,
        id: &str,
        approval_id: &str,
        decision: &Decision,
    ) -> Result<Option<Result<(Decided, Task), Refused>>, BackendError> {
        let max = self.limits.max_events_per_task;
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(id).filter(|e| e.task.tenant == tenant) else {
            return Ok(None);
        };
        let mut next = entry.task.clone();
        let decided = match next.decide(approval_id, decision, std::time::SystemTime::now()) {
            Ok(decided) => decided,
            Err(refused) => return Ok(Some(Err(refused))),
        };
        entry.task = next;
        inner.set_state(id, TaskState::Queued, decided.reason(), max);
        inner.ready.push_back(id.to_owned());
        let task = inner.tasks.get(id).map(|e| e.task.clone());
        drop(inner);
        self.ready.notify_one();
        Ok(task.map(|task| Ok((decided, task))))
    }

    /// Cancels an unfinished task of `tenant` and its dependents.
    pub(super) async fn cancel_task(
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
}
