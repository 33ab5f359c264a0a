//! The queue: claims, takeovers of expired leases, renewals, hand-backs and
//! promotion of delayed retries.

use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use super::store::{Cas, Change};
use super::{
    CAP_DEFER_MS, CAS_RETRIES, CLAIM_BLOCK_MS, GROUP, RELEASED_IDLE_MS, RedisBackend, now_ms,
};
use crate::backend::{
    Applied, BackendError, Claim, Claimed, Lease, QueueStats, state_event, takeover_reason,
};
use crate::task::{Task, TaskState};

impl RedisBackend {
    /// The queue's depth and the age of its oldest undelivered entry: the
    /// stream holds undelivered entries and delivered ones not yet acked
    /// (acked entries are deleted), the group knows how many are pending
    /// and the last id it delivered, and an entry's id is its enqueue time.
    pub(super) async fn measure_queue(&self) -> Result<QueueStats, BackendError> {
        let mut conn = self.conn.clone();
        let (length, delayed, groups): (u64, u64, redis::streams::StreamInfoGroupsReply) =
            redis::pipe()
                .cmd("XLEN")
                .arg(self.queue())
                .cmd("ZCARD")
                .arg(self.delayed())
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(self.queue())
                .query_async(&mut conn)
                .await?;
        let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else {
            return Ok(QueueStats {
                depth: delayed,
                oldest: Duration::ZERO,
            });
        };
        let pending = group.pending as u64;
        let waiting = length.saturating_sub(pending);
        let mut oldest = Duration::ZERO;
        if waiting > 0 {
            let first: redis::streams::StreamRangeReply = conn
                .xrange_count(
                    self.queue(),
                    format!("({}", group.last_delivered_id),
                    "+",
                    1,
                )
                .await?;
            if let Some(entry) = first.ids.first()
                && let Some(ms) = entry.id.split('-').next().and_then(|m| m.parse().ok())
            {
                oldest = Duration::from_millis(now_ms().saturating_sub(ms));
            }
        }
        Ok(QueueStats {
            depth: waiting + delayed,
            oldest,
        })
    }

    pub(super) async fn ack(&self, entry: &str) -> Result<(), BackendError> {
        let _: () = redis::pipe()
            .cmd("XACK")
            .arg(self.queue())
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(self.queue())
            .arg(entry)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Starts an attempt of a queued task taken from the queue entry `entry`.
    pub(super) async fn begin(
        &self,
        id: &str,
        entry: &str,
        consumer: &str,
    ) -> Result<Option<Claim>, BackendError> {
        for _ in 0..CAS_RETRIES {
            let queued = |t: &Task| t.state == TaskState::Queued;
            let Some(loaded) = self.load_for_change(id, queued).await? else {
                self.ack(entry).await?;
                return Ok(None);
            };
            if loaded.task.state != TaskState::Queued {
                // A duplicate entry, or a task cancelled while queued.
                self.ack(entry).await?;
                return Ok(None);
            }
            if loaded.task.deadline <= SystemTime::now() {
                match self.time_out(&loaded, Some(entry)).await? {
                    Cas::Done => return Ok(None),
                    _ => continue,
                }
            }
            let mut next = loaded.task.clone();
            next.attempt += 1;
            next.stage_attempts += 1;
            next.state = TaskState::Running;
            let now = SystemTime::now();
            next.updated_at = now;
            next.started_at.get_or_insert(now);
            let reason = format!("attempt {} claimed by {consumer}", next.attempt);
            let mut change = Change::events(vec![self.blob(
                id,
                state_event(
                    Some(TaskState::Queued),
                    TaskState::Running,
                    &reason,
                    next.attempt,
                ),
            )?]);
            change.running_delta = 1;
            change.entry = Some(entry.to_owned());
            match self.cas(&loaded, &next, change).await? {
                Cas::Done => {
                    return Ok(Some(Claim {
                        task: next,
                        entry: entry.to_owned(),
                    }));
                }
                Cas::OverCap => {
                    let _: () = self
                        .conn
                        .clone()
                        .zadd(self.delayed(), id, now_ms() + CAP_DEFER_MS)
                        .await?;
                    self.ack(entry).await?;
                    return Ok(None);
                }
                Cas::Conflict | Cas::Moved => continue,
            }
        }
        Err(BackendError::Unavailable(format!(
            "task {id} is too contended to claim"
        )))
    }

    /// Reads the next queue entry for `consumer` and starts its attempt.
    pub(super) async fn claim_next(
        &self,
        consumer: &str,
        _lease: Duration,
    ) -> Result<Claimed, BackendError> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(CLAIM_BLOCK_MS)
            .arg("STREAMS")
            .arg(self.queue())
            .arg(">");
        let reply: Option<StreamReadReply> = self
            .blocking(&read, Duration::from_millis(CLAIM_BLOCK_MS))
            .await?;
        let Some(entry) = reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(Claimed::Empty);
        };
        let Some(id) = entry
            .map
            .get("id")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        else {
            self.ack(&entry.id).await?;
            return Ok(Claimed::Empty);
        };
        Ok(match self.begin(&id, &entry.id, consumer).await? {
            Some(claim) => Claimed::Attempt(Box::new(claim)),
            None => Claimed::Empty,
        })
    }

    /// Takes over queue entries whose lease expired, each with a new attempt.
    pub(super) async fn take_over(
        &self,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BackendError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.queue())
            .arg(GROUP)
            .arg(consumer)
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut claims = Vec::new();
        for entry in reply.claimed {
            let Some(id) = entry
                .map
                .get("id")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            else {
                self.ack(&entry.id).await?;
                continue;
            };
            for _ in 0..CAS_RETRIES {
                let Some(loaded) = self.load(&id).await? else {
                    self.ack(&entry.id).await?;
                    break;
                };
                let mut next = loaded.task.clone();
                if next.state == TaskState::Queued {
                    // Its claimer died before starting it: start it now.
                    if let Some(claim) = self.begin(&id, &entry.id, consumer).await? {
                        claims.push(claim);
                    }
                    break;
                }
                if next.state != TaskState::Running {
                    // Finished while its dispatcher was gone: free the slot and the entry.
                    let mut change = Change::events(Vec::new());
                    change.running_delta = -1;
                    change.ack = Some(entry.id.clone());
                    if let Cas::Done = self.cas(&loaded, &next, change).await? {
                        break;
                    }
                    continue;
                }
                let stalled = next.attempt;
                let released: Option<u32> = self
                    .conn
                    .clone()
                    .hget(self.key("task", &id), "released")
                    .await?;
                next.attempt += 1;
                next.stage_attempts += 1;
                next.updated_at = SystemTime::now();
                let reason = takeover_reason(stalled, released == Some(stalled));
                let mut change = Change::events(vec![self.blob(
                    &id,
                    state_event(
                        Some(TaskState::Running),
                        TaskState::Running,
                        &reason,
                        next.attempt,
                    ),
                )?]);
                change.entry = Some(entry.id.clone());
                if let Cas::Done = self.cas(&loaded, &next, change).await? {
                    claims.push(Claim {
                        task: next,
                        entry: entry.id.clone(),
                    });
                    break;
                }
            }
        }
        Ok(claims)
    }

    /// Resets a lease's idle time while the attempt is current.
    pub(super) async fn renew_lease(
        &self,
        claim: &Claim,
        _lease: Duration,
    ) -> Result<Lease, BackendError> {
        let result: i64 = self
            .scripts
            .renew
            .key(self.key("task", &claim.task.id))
            .key(self.queue())
            .arg(claim.attempt())
            .arg(GROUP)
            .arg("renewer")
            .arg(&claim.entry)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match result {
            1 => Lease::Held,
            2 => Lease::Finished,
            _ => Lease::Lost,
        })
    }

    /// Queues the delayed tasks whose time has come.
    pub(super) async fn promote_due(&self) -> Result<usize, BackendError> {
        // With the scores seen: a member is taken out of the delayed set only
        // while its score is still the one read, in the same script that
        // queues it, so a retry rescheduled meanwhile (the new attempt failed
        // fast) keeps its new schedule.
        let due: Vec<(String, String)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.delayed())
            .arg(0)
            .arg(now_ms())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(500)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut moved = 0;
        for (id, score) in due {
            for _ in 0..CAS_RETRIES {
                let loaded = self.load(&id).await?;
                let Some(loaded) = loaded.filter(|l| l.task.state == TaskState::Pending) else {
                    // Deferred by its tenant's running cap (QUEUED): queue it
                    // again; finished, running or gone: drop the member.
                    let queued: i64 = self
                        .scripts
                        .unschedule
                        .key(self.delayed())
                        .key(self.queue())
                        .key(self.key("task", &id))
                        .arg(&id)
                        .arg(&score)
                        .invoke_async(&mut self.conn.clone())
                        .await?;
                    moved += queued as usize;
                    break;
                };
                let mut next = loaded.task.clone();
                next.state = TaskState::Queued;
                let reason = format!("retrying after attempt {}", next.attempt);
                let mut change = Change::events(vec![self.blob(
                    &id,
                    state_event(
                        Some(TaskState::Pending),
                        TaskState::Queued,
                        &reason,
                        next.attempt,
                    ),
                )?]);
                change.enqueue = true;
                change.unschedule = Some(score.clone());
                match self.cas(&loaded, &next, change).await? {
                    Cas::Done => {
                        moved += 1;
                        break;
                    }
                    Cas::Moved => break,
                    Cas::Conflict | Cas::OverCap => continue,
                }
            }
        }
        Ok(moved)
    }

    /// Hands a running attempt's lease back.
    pub(super) async fn release_lease(&self, claim: &Claim) -> Result<Applied, BackendError> {
        let released: i64 = self
            .scripts
            .release
            .key(self.key("task", &claim.task.id))
            .key(self.queue())
            .arg(claim.attempt())
            .arg(GROUP)
            .arg(&claim.entry)
            .arg(RELEASED_IDLE_MS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if released == 1 {
            Applied::Recorded
        } else {
            Applied::Stale
        })
    }
}
