//! A task's life outside the queue: creation, the log of an attempt, how an
//! attempt ends, cancellation, timeouts and the cascade to dependents.

use std::time::SystemTime;

use amaos_proto::orchestrator::v1 as pb;
use redis::AsyncCommands;

use super::codec::state_name;
use super::store::{Cas, Change, Loaded};
use super::{CAS_RETRIES, IDEMPOTENCY_TTL_S, NOT_STARTED, RedisBackend, now_ms};
use crate::backend::{Applied, BackendError, Claim, Outcome, Record, state_event};
use crate::task::{Decided, Decision, ErrorClass, Refused, Task, TaskError, TaskState};

impl RedisBackend {
    /// Stores new tasks (and a workflow's members) in one script; the id stored
    /// before under the same idempotency key when there is one.
    pub(super) async fn create_tasks(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let mut invocation = self.scripts.create.prepare_invoke();
        invocation
            .key(self.key(
                "idem",
                &format!("{tenant}:{}", idempotency_key.unwrap_or("")),
            ))
            .key(self.key("tasks", tenant))
            .key(self.queue());
        for task in &tasks {
            invocation
                .key(self.key("task", &task.id))
                .key(self.key("events", &task.id));
        }
        invocation
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(handle)
            .arg(IDEMPOTENCY_TTL_S)
            .arg(tasks.len());
        let mut stored_now = Vec::new();
        for task in &tasks {
            let ready = task.depends_on.is_empty();
            let mut stored = task.clone();
            stored.state = if ready {
                TaskState::Queued
            } else {
                TaskState::Pending
            };
            let data = serde_json::to_vec(&stored)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            let data = self.seal(&task.id, data)?;
            if data.len() <= super::RECENT_MAX_BYTES {
                stored_now.push(stored.clone());
            }
            let mut events = vec![self.blob(
                &task.id,
                state_event(None, TaskState::Pending, "accepted", 0),
            )?];
            if ready {
                events.push(self.blob(
                    &task.id,
                    state_event(
                        Some(TaskState::Pending),
                        TaskState::Queued,
                        "ready to run",
                        0,
                    ),
                )?);
            }
            invocation
                .arg(&task.id)
                .arg(data)
                .arg(state_name(stored.state))
                .arg(task.depends_on.len())
                .arg(tenant)
                .arg(events.len());
            for e in &events {
                invocation.arg(e.as_slice());
            }
        }
        let existing: String = invocation.invoke_async(&mut self.conn.clone()).await?;
        if !existing.is_empty() {
            return Ok(Some(existing));
        }
        for task in &stored_now {
            self.recent.put(task, 0);
        }
        if let Some(first) = tasks.first().filter(|t| !t.workflow_id.is_empty()) {
            let members: Vec<(String, String)> = tasks
                .iter()
                .map(|t| (t.workflow_key.clone(), t.id.clone()))
                .collect();
            let members = serde_json::to_string(&members)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            let _: () = self
                .conn
                .clone()
                .hset_multiple(
                    self.key("wf", &first.workflow_id),
                    &[("tenant", tenant), ("members", &members)],
                )
                .await?;
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
        let (worker, events) = match record {
            Record::Worker(worker) => (worker, Vec::new()),
            Record::Run(runs) => (
                String::new(),
                runs.into_iter()
                    .map(|run| self.blob(id, pb::task_event::Kind::RunEvent(run)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let mut invocation = self.scripts.record.prepare_invoke();
        invocation
            .key(self.key("task", id))
            .key(self.key("events", id))
            .arg(attempt)
            .arg(self.limits.max_events_per_task)
            .arg(worker);
        for e in &events {
            invocation.arg(e.as_slice());
        }
        let result: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match result {
            -1 => Applied::Stale,
            -3 => Applied::LogFull,
            _ => Applied::Recorded,
        })
    }

    /// Ends a claimed attempt as the dispatcher decided.
    pub(super) async fn finish_attempt(
        &self,
        claim: &Claim,
        outcome: Outcome,
    ) -> Result<Applied, BackendError> {
        let id = &claim.task.id;
        let attempt = claim.attempt();
        for _ in 0..CAS_RETRIES {
            let ours = |t: &Task| t.attempt == attempt;
            let Some(loaded) = self.load_for_change(id, ours).await? else {
                self.ack(&claim.entry).await?;
                return Ok(Applied::Stale);
            };
            if loaded.task.attempt != attempt {
                // Taken over: the new owner holds the entry and the slot.
                return Ok(Applied::Stale);
            }
            let mut next = loaded.task.clone();
            let now = SystemTime::now();
            next.updated_at = now;
            let mut change = Change::events(Vec::new());
            change.running_delta = -1;
            change.ack = Some(claim.entry.clone());
            if next.state.is_terminal() {
                // Cancelled meanwhile: only free the slot and the entry.
                if let Cas::Done = self.cas(&loaded, &next, change).await? {
                    return Ok(Applied::Stale);
                }
                continue;
            }
            let from = next.state;
            let mut cascade = None;
            match &outcome {
                Outcome::Succeeded { output } => {
                    next.output = Some(output.clone());
                    next.error = None;
                    next.state = TaskState::Succeeded;
                    next.finished_at = Some(now);
                    change.expire = true;
                    change.events.push(self.blob(
                        id,
                        state_event(
                            Some(from),
                            TaskState::Succeeded,
                            "the team finished",
                            attempt,
                        ),
                    )?);
                    for dependent in &next.dependents {
                        change.release.push((
                            dependent.clone(),
                            self.blob(
                                dependent,
                                state_event(
                                    Some(TaskState::Pending),
                                    TaskState::Queued,
                                    "its dependencies succeeded",
                                    0,
                                ),
                            )?,
                        ));
                    }
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
                    next.error = Some(error.clone());
                    if *next_stage {
                        next.stage += 1;
                        next.stage_attempts = 0;
                    }
                    next.state = TaskState::Pending;
                    change.delay_until_ms = Some(now_ms() + after.as_millis() as u64);
                    change.events.push(self.blob(
                        id,
                        state_event(Some(from), TaskState::Pending, &reason, attempt),
                    )?);
                }
                Outcome::AwaitInput(approval) => {
                    let reason = format!(
                        "attempt {attempt} waits for a person to approve `{}` (approval {})",
                        approval.tool, approval.id
                    );
                    next.approvals.push((**approval).clone());
                    next.state = TaskState::InputRequired;
                    change.events.push(self.blob(
                        id,
                        state_event(Some(from), TaskState::InputRequired, &reason, attempt),
                    )?);
                }
                Outcome::Finished { state, error } => {
                    next.error = Some(error.clone());
                    next.state = *state;
                    next.finished_at = Some(now);
                    change.expire = true;
                    change.events.push(
                        self.blob(id, state_event(Some(from), *state, &error.message, attempt))?,
                    );
                    cascade = Some(error.message.clone());
                }
            }
            match self.cas(&loaded, &next, change).await? {
                Cas::Done => {}
                Cas::Conflict | Cas::OverCap | Cas::Moved => continue,
            }
            if let Some(message) = cascade {
                self.end_dependents(
                    &next,
                    TaskState::Failed,
                    &format!("did not succeed: {message}"),
                )
                .await?;
            }
            return Ok(Applied::Recorded);
        }
        Err(BackendError::Unavailable(format!(
            "task {id} is too contended to finish"
        )))
    }

    /// Records a decision on a task waiting for one, and queues the task.
    pub(super) async fn decide_approval(
        &self,
        tenant: &str,
        id: &str,
        approval_id: &str,
        decision: &Decision,
    ) -> Result<Option<Result<(Decided, Task), Refused>>, BackendError> {
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
                return Ok(None);
            };
            if loaded.task.tenant != tenant {
                return Ok(None);
            }
            let mut next = loaded.task.clone();
            let decided = match next.decide(approval_id, decision, SystemTime::now()) {
                Ok(decided) => decided,
                Err(refused) => return Ok(Some(Err(refused))),
            };
            if let Cas::Done = self.resume(&loaded, &mut next, &decided).await? {
                return Ok(Some(Ok((decided, next))));
            }
        }
        Err(BackendError::Unavailable(format!(
            "task {id} is too contended to decide"
        )))
    }

    /// Queues `next` (decided from INPUT_REQUIRED) to resume.
    pub(super) async fn resume(
        &self,
        loaded: &Loaded,
        next: &mut Task,
        decided: &Decided,
    ) -> Result<Cas, BackendError> {
        let reason = decided.reason();
        next.state = TaskState::Queued;
        next.updated_at = SystemTime::now();
        let mut change = Change::events(vec![self.blob(
            &next.id,
            state_event(
                Some(TaskState::InputRequired),
                TaskState::Queued,
                reason,
                next.attempt,
            ),
        )?]);
        change.enqueue = true;
        self.cas(loaded, next, change).await
    }

    /// Cancels an unfinished task of `tenant` and its dependents.
    pub(super) async fn cancel_task(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Option<Task>, BackendError> {
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
                return Ok(None);
            };
            if loaded.task.tenant != tenant {
                return Ok(None);
            }
            if loaded.task.state.is_terminal() {
                return Ok(Some(loaded.task));
            }
            let mut next = loaded.task.clone();
            let now = SystemTime::now();
            next.error = Some(TaskError {
                class: ErrorClass::Cancelled,
                message: reason.to_owned(),
            });
            let from = next.state;
            next.state = TaskState::Cancelled;
            next.finished_at = Some(now);
            next.updated_at = now;
            let mut change = Change::events(vec![self.blob(
                id,
                state_event(Some(from), TaskState::Cancelled, reason, next.attempt),
            )?]);
            change.expire = true;
            if let Cas::Done = self.cas(&loaded, &next, change).await? {
                self.end_dependents(&next, TaskState::Cancelled, "was cancelled")
                    .await?;
                return Ok(Some(next));
            }
        }
        Err(BackendError::Unavailable(format!(
            "task {id} is too contended to cancel"
        )))
    }

    /// Ends every unfinished dependent of `task`, transitively.
    pub(super) async fn end_dependents(
        &self,
        task: &Task,
        state: TaskState,
        why: &str,
    ) -> Result<(), BackendError> {
        let mut stack = vec![(task.workflow_key.clone(), task.dependents.clone())];
        while let Some((key, dependents)) = stack.pop() {
            for dependent in dependents {
                for _ in 0..CAS_RETRIES {
                    let Some(loaded) = self.load(&dependent).await? else {
                        break;
                    };
                    if loaded.task.state.is_terminal() {
                        break;
                    }
                    let mut next = loaded.task.clone();
                    let message = format!("dependency `{key}` {why}");
                    next.error = Some(TaskError {
                        class: ErrorClass::Invalid,
                        message: message.clone(),
                    });
                    let events = vec![self.blob(
                        &next.id,
                        state_event(Some(next.state), state, &message, next.attempt),
                    )?];
                    next.state = state;
                    next.finished_at = Some(SystemTime::now());
                    next.updated_at = SystemTime::now();
                    let mut change = Change::events(events);
                    change.expire = true;
                    if let Cas::Done = self.cas(&loaded, &next, change).await? {
                        stack.push((next.workflow_key.clone(), next.dependents.clone()));
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends a PENDING or QUEUED task TIMED_OUT (acking `ack`), then fails its
    /// dependents.
    pub(super) async fn time_out(
        &self,
        loaded: &Loaded,
        ack: Option<&str>,
    ) -> Result<Cas, BackendError> {
        self.time_out_because(loaded, ack, NOT_STARTED).await
    }

    /// Ends an unstarted task (PENDING, QUEUED or INPUT_REQUIRED: it holds
    /// no slot) TIMED_OUT for `why` (acking `ack`), then fails its dependents.
    pub(super) async fn time_out_because(
        &self,
        loaded: &Loaded,
        ack: Option<&str>,
        why: &str,
    ) -> Result<Cas, BackendError> {
        let mut next = loaded.task.clone();
        let now = SystemTime::now();
        next.error = Some(TaskError {
            class: ErrorClass::Transient,
            message: why.to_owned(),
        });
        next.state = TaskState::TimedOut;
        next.finished_at = Some(now);
        next.updated_at = now;
        let mut change = Change::events(vec![self.blob(
            &next.id,
            state_event(
                Some(loaded.task.state),
                TaskState::TimedOut,
                why,
                next.attempt,
            ),
        )?]);
        change.ack = ack.map(str::to_owned);
        change.expire = true;
        let done = self.cas(loaded, &next, change).await?;
        if let Cas::Done = done {
            self.end_dependents(&next, TaskState::Failed, &format!("did not succeed: {why}"))
                .await?;
        }
        Ok(done)
    }
}
