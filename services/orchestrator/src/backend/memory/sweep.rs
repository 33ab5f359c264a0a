//! The sweep: the in-process backend cannot strand a task (every change is
//! under one lock), but it repairs one all the same, a few at a time.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::ops::Bound;
use std::time::{Duration, SystemTime};

use super::MemoryBackend;
use crate::backend::{BackendError, DEADLINE_WHILE_WAITING, Swept};
use crate::task::{ErrorClass, TaskError, TaskState};

impl MemoryBackend {
    /// One bounded step of the sweep: up to `limit` tasks after the cursor.
    pub(super) async fn sweep_some(
        &self,
        _lease: Duration,
        limit: usize,
    ) -> Result<Swept, BackendError> {
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
        } else {
            swept.pass_ended = true;
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
            if task.state == TaskState::InputRequired {
                // It waits for a person, in no structure by design, until its
                // deadline or its approval's expiry.
                if task.deadline <= now {
                    inner.time_out_because(&id, DEADLINE_WHILE_WAITING, max);
                    swept.timed_out += 1;
                    continue;
                }
                let mut next = task.clone();
                if let Some(reason) = next.expire_approval(now)
                    && let Some(e) = inner.tasks.get_mut(&id)
                {
                    e.task = next;
                    inner.set_state(&id, TaskState::Queued, &reason, max);
                    inner.ready.push_back(id);
                    swept.expired += 1;
                    wake = true;
                }
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
}
