//! Reading a task, and changing it by compare-and-set on its version: the
//! one way a task's data changes after it is created.

use super::codec::{parse_state, state_name};
use super::{GROUP, RedisBackend};
use crate::backend::BackendError;
use crate::task::Task;

/// A task as loaded, with what a compare-and-set needs.
pub(super) struct Loaded {
    pub(super) task: Task,
    pub(super) ver: String,
}

/// A change to make with compare-and-set.
pub(super) struct Change {
    pub(super) events: Vec<Vec<u8>>,
    pub(super) running_delta: i64,
    pub(super) ack: Option<String>,
    pub(super) enqueue: bool,
    /// Schedule the task in the delayed set at this time (ms).
    pub(super) delay_until_ms: Option<u64>,
    /// Take the task out of the delayed set, only if its score is still this
    /// one (as read); else change nothing ([`Cas::Moved`]).
    pub(super) unschedule: Option<String>,
    /// The queue entry that now holds the task (a claim's or takeover's).
    pub(super) entry: Option<String>,
    pub(super) release: Vec<(String, Vec<u8>)>,
    pub(super) expire: bool,
}

impl Change {
    pub(super) fn events(events: Vec<Vec<u8>>) -> Self {
        Self {
            events,
            running_delta: 0,
            ack: None,
            enqueue: false,
            delay_until_ms: None,
            unschedule: None,
            entry: None,
            release: Vec::new(),
            expire: false,
        }
    }
}

/// What a compare-and-set did.
pub(super) enum Cas {
    Done,
    Conflict,
    OverCap,
    /// Its delayed-set score is no longer the one read: someone rescheduled it.
    Moved,
}

impl RedisBackend {
    pub(super) async fn load(&self, id: &str) -> Result<Option<Loaded>, BackendError> {
        type Fields = (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (data, state, ver, worker): Fields = redis::cmd("HMGET")
            .arg(self.key("task", id))
            .arg("data")
            .arg("state")
            .arg("ver")
            .arg("worker")
            .query_async(&mut self.conn.clone())
            .await?;
        let (Some(data), Some(state), Some(ver)) = (data, state, ver) else {
            return Ok(None);
        };
        let data = self.open(id, data)?;
        let mut task: Task = serde_json::from_slice(&data)
            .map_err(|e| BackendError::Unavailable(format!("task {id} is corrupt: {e}")))?;
        if let Some(state) = parse_state(&state) {
            task.state = state;
        }
        if let Some(worker) = worker {
            task.worker_id = worker;
        }
        Ok(Some(Loaded { task, ver }))
    }

    /// The start of a change to task `id` from a state where `expected`
    /// holds: the task as this replica last stored it when that state
    /// qualifies, else as Redis has it. The compare-and-set decides whether
    /// the remembered version is current; anything decided without one (a
    /// queue entry dropped as "not queued", an attempt called taken over) is
    /// decided only on what Redis has.
    pub(super) async fn load_for_change(
        &self,
        id: &str,
        expected: impl Fn(&Task) -> bool,
    ) -> Result<Option<Loaded>, BackendError> {
        match self.recent.get(id) {
            Some(loaded) if expected(&loaded.task) => Ok(Some(loaded)),
            _ => self.load(id).await,
        }
    }

    pub(super) async fn cas(
        &self,
        loaded: &Loaded,
        task: &Task,
        change: Change,
    ) -> Result<Cas, BackendError> {
        let data =
            serde_json::to_vec(task).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let data = self.seal(&task.id, data)?;
        let size = data.len();
        let mut invocation = self.scripts.cas.prepare_invoke();
        invocation
            .key(self.key("task", &task.id))
            .key(self.key("events", &task.id))
            .key(self.running())
            .key(self.queue())
            .key(self.delayed());
        for (dependent, _) in &change.release {
            invocation
                .key(self.key("task", dependent))
                .key(self.key("events", dependent));
        }
        invocation
            .arg(&loaded.ver)
            .arg(data)
            .arg(state_name(task.state))
            .arg(task.attempt)
            .arg(change.running_delta)
            .arg(self.limits.max_running_per_tenant)
            .arg(&task.tenant)
            .arg(GROUP)
            .arg(change.ack.as_deref().unwrap_or(""))
            .arg(if change.enqueue { task.id.as_str() } else { "" })
            .arg(if change.expire {
                self.limits.retention.as_secs().max(1)
            } else {
                0
            })
            .arg(change.delay_until_ms.unwrap_or(0))
            .arg(&task.id)
            .arg(change.unschedule.as_deref().unwrap_or(""))
            .arg(change.entry.as_deref().unwrap_or(""))
            .arg(change.events.len());
        for e in &change.events {
            invocation.arg(e.as_slice());
        }
        invocation.arg(change.release.len());
        for (dependent, e) in &change.release {
            invocation.arg(dependent).arg(e.as_slice());
        }
        let result = invocation.invoke_async::<i64>(&mut self.conn.clone()).await;
        // Dependents released here changed under their versions.
        for (dependent, _) in &change.release {
            self.recent.forget(dependent);
        }
        let outcome = match result {
            Ok(-1) => Cas::Conflict,
            Ok(-2) => Cas::OverCap,
            Ok(-4) => Cas::Moved,
            Ok(_) => Cas::Done,
            Err(e) => {
                // Whether it was applied is unknown.
                self.recent.forget(&task.id);
                return Err(e.into());
            }
        };
        match (&outcome, loaded.ver.parse::<u64>()) {
            (Cas::Done, Ok(ver)) if size <= super::RECENT_MAX_BYTES => {
                self.recent.put(task, ver + 1)
            }
            _ => self.recent.forget(&task.id),
        }
        Ok(outcome)
    }
}
