//! Reads: tasks, workflows, listings and event logs (long-polled).

use std::time::Duration;

use amaos_proto::orchestrator::v1 as pb;
use redis::AsyncCommands;
use redis::streams::{StreamRangeReply, StreamReadReply};

use super::RedisBackend;
use super::codec::parse_state;
use crate::backend::{BackendError, EventsPage};
use crate::task::{Task, TaskState};

impl RedisBackend {
    /// A task of `tenant`.
    pub(super) async fn get_task(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Task>, BackendError> {
        Ok(self
            .load(id)
            .await?
            .map(|l| l.task)
            .filter(|t| t.tenant == tenant))
    }

    /// A workflow's members of `tenant`, by key.
    pub(super) async fn workflow_members(
        &self,
        tenant: &str,
        workflow_id: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let (owner, members): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.key("wf", workflow_id))
            .arg("tenant")
            .arg("members")
            .query_async(&mut self.conn.clone())
            .await?;
        match (owner, members) {
            (Some(owner), Some(members)) if owner == tenant => Ok(Some(
                serde_json::from_str(&members)
                    .map_err(|e| BackendError::Unavailable(e.to_string()))?,
            )),
            _ => Ok(None),
        }
    }

    /// Tasks of `tenant`, newest first, filtered.
    pub(super) async fn list_tasks(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Task>, BackendError> {
        let mut out = Vec::new();
        let mut cursor = before.map(str::to_owned);
        // Filters may drop tasks; scan at most this many ids per page.
        let mut budget = 10_000usize;
        while out.len() < limit && budget > 0 {
            let batch = (limit - out.len()).clamp(16, 500);
            let ids = self.list_ids(tenant, cursor.as_deref(), batch).await?;
            if ids.is_empty() {
                break;
            }
            budget = budget.saturating_sub(ids.len());
            cursor = ids.last().cloned();
            for id in ids {
                match self.load(&id).await? {
                    Some(loaded) => {
                        let t = loaded.task;
                        if state.is_none_or(|s| t.state == s)
                            && team.is_none_or(|name| t.team == name)
                        {
                            out.push(t);
                            if out.len() == limit {
                                break;
                            }
                        }
                    }
                    // Expired after its retention: forget the id.
                    None => {
                        let _: () = self
                            .conn
                            .clone()
                            .zrem(self.key("tasks", tenant), &id)
                            .await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Events of a task of `tenant` after `after`, long-polling up to `wait`.
    pub(super) async fn read_events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        let stream = self.key("events", id);
        // One round trip, one moment: who owns the task, where it stands,
        // and its events after `after`. A task finished at that moment has
        // all its events in the stream, so the page says whether it is the
        // last without another read.
        type Head = (Option<String>, Option<String>, Option<u64>);
        let ((owner, state, seq), range): (Head, StreamRangeReply) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(self.key("task", id))
            .arg("tenant")
            .arg("state")
            .arg("seq")
            .add_command(range_after(&stream, after))
            .query_async(&mut self.conn.clone())
            .await?;
        if owner.as_deref() != Some(tenant) {
            return Ok(None);
        }
        let was_terminal = state
            .as_deref()
            .and_then(parse_state)
            .is_some_and(TaskState::is_terminal);
        let mut events: Vec<pb::TaskEvent> = range
            .ids
            .iter()
            .filter_map(|e| self.decode_event(id, e))
            .collect();
        if !events.is_empty() || was_terminal || wait.is_zero() {
            let last = events.last().map(|e| e.sequence).unwrap_or(after);
            return Ok(Some(EventsPage {
                finished: was_terminal && seq.is_none_or(|s| last >= s),
                events,
            }));
        }
        if let Ok(_slot) = self.blocking_reads.try_acquire() {
            // BLOCK 0 would mean forever.
            let block = wait.max(Duration::from_millis(1));
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(format!("0-{after}"));
            let reply: Option<StreamReadReply> = self.blocking(&read, block).await?;
            if let Some(reply) = reply {
                for key in reply.keys {
                    events.extend(key.ids.iter().filter_map(|e| self.decode_event(id, e)));
                }
            }
        } else {
            // Every blocking slot is taken: poll once after a short pause.
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
            let range: StreamRangeReply = range_after(&stream, after)
                .query_async(&mut self.conn.clone())
                .await?;
            events = range
                .ids
                .iter()
                .filter_map(|e| self.decode_event(id, e))
                .collect();
        }
        // Finished only once the log is read to its end.
        let (state, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key("task", id))
            .arg("state")
            .arg("seq")
            .query_async(&mut self.conn.clone())
            .await?;
        let last = events.last().map(|e| e.sequence).unwrap_or(after);
        let terminal = state
            .as_deref()
            .and_then(parse_state)
            .is_some_and(TaskState::is_terminal);
        Ok(Some(EventsPage {
            finished: terminal && seq.is_none_or(|s| last >= s),
            events,
        }))
    }

    pub(super) async fn list_ids(
        &self,
        tenant: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, BackendError> {
        let max = match before {
            Some(b) => format!("({b}"),
            None => "+".to_owned(),
        };
        Ok(redis::cmd("ZREVRANGEBYLEX")
            .arg(self.key("tasks", tenant))
            .arg(max)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?)
    }
}

/// The events of `stream` after sequence `after`, a page at most.
fn range_after(stream: &str, after: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream)
        .arg(format!("(0-{after}"))
        .arg("+")
        .arg("COUNT")
        .arg(1000);
    cmd
}
