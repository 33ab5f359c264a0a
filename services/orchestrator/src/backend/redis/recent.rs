//! The tasks this replica stored or changed last, each with its version: the
//! next change to one of them (a claim after a submit on the same replica, a
//! finish after a claim) starts from here instead of reading the task back,
//! one round trip, a decryption and a parse fewer.
//!
//! It is only ever a guess: every change is a compare-and-set on the
//! version, so an entry another replica has made stale fails its CAS, is
//! forgotten, and the change reads the task as it would have without it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::store::Loaded;
use crate::task::Task;

/// A bounded map of task id → (task, version), oldest stored first out.
pub(super) struct Recent {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// id → (task, version, when stored).
    tasks: HashMap<String, (Task, u64, u64)>,
    /// (id, when stored), oldest first; entries stored again since are
    /// skipped when they come up.
    order: VecDeque<(String, u64)>,
    clock: u64,
}

impl Recent {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// `task` is stored at version `ver`; a finished task is forgotten (no
    /// change follows it).
    pub(super) fn put(&self, task: &Task, ver: u64) {
        if task.state.is_terminal() {
            self.forget(&task.id);
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.clock += 1;
        let now = inner.clock;
        inner
            .tasks
            .insert(task.id.clone(), (task.clone(), ver, now));
        inner.order.push_back((task.id.clone(), now));
        while inner.tasks.len() > self.cap {
            let Some((id, at)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .tasks
                .get(&id)
                .is_some_and(|(_, _, stored)| *stored == at)
            {
                inner.tasks.remove(&id);
            }
        }
        // Ids stored again leave old places in the order: compact it before
        // it outgrows the map by much.
        if inner.order.len() > self.cap.saturating_mul(4) {
            let Inner { tasks, order, .. } = &mut *inner;
            order.retain(|(id, at)| tasks.get(id).is_some_and(|(_, _, s)| s == at));
        }
    }

    /// The task as this replica last stored it, if it still remembers it.
    pub(super) fn get(&self, id: &str) -> Option<Loaded> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tasks.get(id).map(|(task, ver, _)| Loaded {
            task: task.clone(),
            ver: ver.to_string(),
        })
    }

    pub(super) fn forget(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tasks.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.tasks.len(), inner.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskState;

    fn task(id: &str, state: TaskState) -> Task {
        let mut t = Task::sample("acme");
        t.id = id.into();
        t.state = state;
        t
    }

    #[test]
    fn it_is_bounded_oldest_first_and_forgets_finished_tasks() {
        let recent = Recent::new(2);
        recent.put(&task("a", TaskState::Queued), 0);
        recent.put(&task("b", TaskState::Queued), 0);
        recent.put(&task("a", TaskState::Running), 1);
        recent.put(&task("c", TaskState::Queued), 0);
        // b was the oldest stored; a was stored again after it.
        assert!(recent.get("b").is_none());
        assert_eq!(recent.get("a").unwrap().ver, "1");
        assert_eq!(recent.get("a").unwrap().task.state, TaskState::Running);
        recent.put(&task("a", TaskState::Succeeded), 2);
        assert!(recent.get("a").is_none());
        assert!(recent.get("c").is_some());
        for i in 0..100 {
            recent.put(&task("c", TaskState::Running), i);
        }
        let (tasks, order) = recent.len();
        assert!(tasks <= 2 && order <= 8, "{tasks} tasks, {order} in order");
    }
}
