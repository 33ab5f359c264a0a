//! Reads: tasks, workflows, listings and event logs (long-polled).

use std::time::Duration;

use amaos_proto::orchestrator::v1 as pb;
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

use super::codec::parse_state;
use super::{POLL_PAUSE, RedisBackend};
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
    ///
    /// A long-poll registers with the replica's [`Notifier`] before it
    /// reads, so an event appended after the read wakes it; it holds no
    /// connection while it waits.
    ///
    /// [`Notifier`]: super::notify::Notifier
    pub(super) async fn read_events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        let stream = self.key("events", id);
        if wait.is_zero() {
            return Ok(self
                .page(tenant, id, &stream, after)
                .await?
                .map(|(page, _)| page));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let watch = self.notifier.watch(&stream).await;
        loop {
            let notified = watch.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some((page, terminal)) = self.page(tenant, id, &stream, after).await? else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if !page.events.is_empty() || terminal || now >= deadline {
                return Ok(Some(page));
            }
            // Without a confirmed subscription no message may come: pause
            // briefly instead, so the caller polls at a bounded rate. A
            // wake-up with nothing new (a reconnection) waits again.
            let pause = if watch.live {
                deadline - now
            } else {
                (deadline - now).min(POLL_PAUSE)
            };
            let _ = tokio::time::timeout(pause, notified).await;
        }
    }

    /// One round trip, one moment: who owns the task, where it stands, and
    /// its events after `after`. A task finished at that moment has all its
    /// events in the stream, so the page says whether it is the last without
    /// another read. None when the task is not `tenant`'s; the flag says
    /// whether the task had finished.
    async fn page(
        &self,
        tenant: &str,
        id: &str,
        stream: &str,
        after: u64,
    ) -> Result<Option<(EventsPage, bool)>, BackendError> {
        type Head = (Option<String>, Option<String>, Option<u64>);
        let ((owner, state, seq), range): (Head, StreamRangeReply) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(self.key("task", id))
            .arg("tenant")
            .arg("state")
            .arg("seq")
            .add_command(range_after(stream, after))
            .query_async(&mut self.conn.clone())
            .await?;
        if owner.as_deref() != Some(tenant) {
            return Ok(None);
        }
        let terminal = state
            .as_deref()
            .and_then(parse_state)
            .is_some_and(TaskState::is_terminal);
        let events: Vec<pb::TaskEvent> = range
            .ids
            .iter()
            .filter_map(|e| self.decode_event(id, e))
            .collect();
        let last = events.last().map(|e| e.sequence).unwrap_or(after);
        Ok(Some((
            EventsPage {
                finished: terminal && seq.is_none_or(|s| last >= s),
                events,
            },
            terminal,
        )))
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
