//! Reads: tasks, workflows, listings and event logs.

use std::time::Duration;

use super::MemoryBackend;
use crate::backend::{BackendError, EventsPage};
use crate::task::{Task, TaskState};

impl MemoryBackend {
    /// A task of `tenant`.
    pub(super) async fn get_task(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Task>, BackendError> {
        Ok(self
            .lock()
            .tasks
            .get(id)
            .filter(|e| e.task.tenant == tenant)
            .map(|e| e.task.clone()))
    }

    /// A workflow's members of `tenant`, by key.
    pub(super) async fn workflow_members(
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

    /// Tasks of `tenant`, newest first, filtered.
    pub(super) async fn list_tasks(
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

    /// Events of a task of `tenant` after `after`, waiting up to `wait`.
    pub(super) async fn read_events(
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
}
