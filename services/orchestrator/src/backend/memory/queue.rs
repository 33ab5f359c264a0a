//! The queue: claims, takeovers of expired leases, renewals, hand-backs and
//! promotion of delayed retries.

use std::cmp::Reverse;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{CAP_DEFER, LeaseEntry, MemoryBackend};
use crate::backend::{Applied, BackendError, Claim, Claimed, Lease, takeover_reason};
use crate::task::TaskState;

impl MemoryBackend {
    /// Starts an attempt of the next ready task, waiting briefly for one.
    pub(super) async fn claim_next(
        &self,
        consumer: &str,
        lease: Duration,
    ) -> Result<Claimed, BackendError> {
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

    /// Takes over attempts whose lease expired, each with a new attempt.
    pub(super) async fn take_over(
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

    /// Extends a lease while the attempt is current.
    pub(super) async fn renew_lease(
        &self,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Lease, BackendError> {
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

    /// Queues the delayed tasks whose time has come.
    pub(super) async fn promote_due(&self) -> Result<usize, BackendError> {
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

    /// Hands a running attempt's lease back.
    pub(super) async fn release_lease(&self, claim: &Claim) -> Result<Applied, BackendError> {
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
}
