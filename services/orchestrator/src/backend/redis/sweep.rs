//! The sweep: repairs what a crash between two writes can leave behind,
//! a bounded step at a time.

use std::time::{Duration, SystemTime};

use super::store::{Cas, Change};
use super::{CAS_RETRIES, GROUP, RedisBackend};
use crate::backend::{BackendError, DEADLINE_WHILE_WAITING, Swept, state_event};
use crate::task::{Decided, Task, TaskState};

/// Where the sweep's walk over task keys stands between calls.
#[derive(Default)]
pub(super) struct SweepCursor {
    cursor: u64,
    /// Keys the last SCAN returned past the sweep's limit.
    pending: std::collections::VecDeque<String>,
}

impl RedisBackend {
    /// One task of the sweep.
    pub(super) async fn sweep_task(&self, id: &str, swept: &mut Swept) -> Result<(), BackendError> {
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
                return Ok(());
            };
            let task = &loaded.task;
            if task.state.is_terminal() {
                return Ok(());
            }
            if task.state == TaskState::InputRequired {
                // It waits for a person, in no structure by design, until its
                // deadline or its approval's expiry.
                let now = SystemTime::now();
                if task.deadline <= now {
                    match self
                        .time_out_because(&loaded, None, DEADLINE_WHILE_WAITING)
                        .await?
                    {
                        Cas::Done => {
                            swept.timed_out += 1;
                            return Ok(());
                        }
                        _ => continue,
                    }
                }
                let mut next = task.clone();
                let Some(reason) = next.expire_approval(now) else {
                    return Ok(());
                };
                match self
                    .resume(&loaded, &mut next, &Decided::Expired(reason))
                    .await?
                {
                    Cas::Done => {
                        swept.expired += 1;
                        return Ok(());
                    }
                    _ => continue,
                }
            }
            let waiting = matches!(task.state, TaskState::Pending | TaskState::Queued);
            if waiting && task.deadline <= SystemTime::now() {
                match self.time_out(&loaded, None).await? {
                    Cas::Done => {
                        swept.timed_out += 1;
                        return Ok(());
                    }
                    _ => continue,
                }
            }
            if task.state == TaskState::Pending && !task.depends_on.is_empty() {
                let mut unfinished = false;
                for dep in &task.depends_on {
                    let failed = match self.load(dep).await? {
                        // Expired after its retention without releasing us.
                        None => Some((
                            Task {
                                workflow_key: dep.clone(),
                                dependents: vec![id.to_owned()],
                                ..task.clone()
                            },
                            TaskState::Failed,
                            "is gone".to_owned(),
                        )),
                        Some(d) if d.task.state == TaskState::Cancelled => {
                            Some((d.task, TaskState::Cancelled, "was cancelled".to_owned()))
                        }
                        Some(d)
                            if d.task.state.is_terminal()
                                && d.task.state != TaskState::Succeeded =>
                        {
                            let message = d
                                .task
                                .error
                                .as_ref()
                                .map(|e| e.message.clone())
                                .unwrap_or_default();
                            Some((
                                d.task,
                                TaskState::Failed,
                                format!("did not succeed: {message}"),
                            ))
                        }
                        Some(d) => {
                            unfinished |= !d.task.state.is_terminal();
                            None
                        }
                    };
                    if let Some((dependency, state, why)) = failed {
                        // The cascade from `dependency` was cut short: finish it.
                        self.end_dependents(&dependency, state, &why).await?;
                        swept.ended += 1;
                        return Ok(());
                    }
                }
                if unfinished {
                    return Ok(());
                }
            }
            let verdict: String = self
                .scripts
                .sweep
                .key(self.key("task", id))
                .key(self.queue())
                .key(self.delayed())
                .arg(id)
                .arg(GROUP)
                .invoke_async(&mut self.conn.clone())
                .await?;
            match verdict.as_str() {
                "requeued" => {
                    swept.requeued += 1;
                    return Ok(());
                }
                "stranded" => {}
                _ => return Ok(()),
            }
            // PENDING (a lost retry, or released dependents never queued) or
            // RUNNING without its queue entry: queue it again, with a new
            // attempt number for a RUNNING one, fencing out its holder.
            let mut next = loaded.task.clone();
            let mut change = Change::events(Vec::new());
            let reason = if next.state == TaskState::Running {
                change.running_delta = -1;
                next.attempt += 1;
                format!("attempt {} holds no lease: queued again", task.attempt)
            } else {
                "it was in no queue: queued again".to_owned()
            };
            change.events.push(self.blob(
                id,
                state_event(Some(next.state), TaskState::Queued, &reason, next.attempt),
            )?);
            next.state = TaskState::Queued;
            next.updated_at = SystemTime::now();
            change.enqueue = true;
            if let Cas::Done = self.cas(&loaded, &next, change).await? {
                swept.requeued += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    /// One bounded step of the sweep: up to `limit` task keys, then dead consumers.
    pub(super) async fn sweep_some(
        &self,
        lease: Duration,
        limit: usize,
    ) -> Result<Swept, BackendError> {
        let limit = limit.max(1);
        let mut swept = Swept::default();
        let (cursor, mut due) = {
            let mut state = self.sweep_cursor.lock().unwrap_or_else(|e| e.into_inner());
            let take = state.pending.len().min(limit);
            (
                state.cursor,
                state.pending.drain(..take).collect::<Vec<_>>(),
            )
        };
        if due.len() < limit {
            let pattern: String = self
                .key("task", "")
                .chars()
                .flat_map(|c| {
                    let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
                    escape.then_some('\\').into_iter().chain(std::iter::once(c))
                })
                .chain(std::iter::once('*'))
                .collect();
            // COUNT is how many slots SCAN walks, not how many keys match: a
            // keyspace shared with other data is walked quickly, and what
            // matches past `limit` waits for the next call, never skipped.
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(limit.saturating_mul(10).clamp(100, 10_000))
                .query_async(&mut self.conn.clone())
                .await?;
            let mut state = self.sweep_cursor.lock().unwrap_or_else(|e| e.into_inner());
            state.cursor = next;
            let mut keys = keys.into_iter();
            due.extend(keys.by_ref().take(limit - due.len()));
            // Bounded: one SCAN reply at most, replaced before it could grow.
            state.pending.extend(keys);
            swept.pass_ended = next == 0 && state.pending.is_empty();
        }
        let task_prefix = self.key("task", "");
        for key in &due {
            let Some(id) = key.strip_prefix(&task_prefix) else {
                continue;
            };
            swept.examined += 1;
            self.sweep_task(id, &mut swept).await?;
        }
        let idle = lease.saturating_mul(10).as_millis() as u64;
        let removed: i64 = self
            .scripts
            .dead_consumers
            .key(self.queue())
            .arg(GROUP)
            .arg(idle)
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await?;
        swept.consumers_removed = removed as usize;
        Ok(swept)
    }
}
