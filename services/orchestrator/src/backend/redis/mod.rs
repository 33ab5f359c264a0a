//! The Redis backend, shared by every orchestrator replica.
//!
//! Keys (all under the configured prefix `P`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:task:<id>` | hash | `data` (the task as JSON), `state` (authoritative), `attempt`, `ver`, `seq`, `waiting` (unfinished dependencies), `tenant`, `entry` (the queue entry that last queued it or holds its attempt), `released` (an attempt that handed its lease back) |
//! | `P:events:<id>` | stream | the task's events; entry id `0-<seq>`, field `e` = encoded `TaskEvent` |
//! | `P:tasks:<tenant>` | sorted set | task ids (all score 0, so lexical order = UUIDv7 = creation order) |
//! | `P:queue` | stream + group `dispatchers` | ready tasks; a pending entry is a leased attempt (renewed ones belong to consumer `renewer`, released ones to `released`, idle for years so any XAUTOCLAIM takes them) |
//! | `P:delayed` | sorted set | retries and deferred claims by due time (ms) |
//! | `P:running` | hash | attempts running per tenant |
//! | `P:idem:<tenant>:<key>` | string, 24 h TTL | the task or workflow id of an idempotency key |
//! | `P:wf:<id>` | hash | a workflow's tenant and members |
//! | `P:rate:<key>` | string | GCRA theoretical arrival time |
//!
//! Every multi-key change is one Lua script (`lua/*.lua`, see [`scripts`]); a task's JSON changes only by
//! compare-and-set on `ver`, so concurrent replicas never lose an update.
//! A claim's blocking read (`XREADGROUP ... BLOCK`) runs on its own pooled
//! connection without the client's response timeout, bounded by its block
//! plus a margin instead. Watchers of a task's events wait on the replica's
//! one subscription ([`notify`]): the scripts that append events `PUBLISH`
//! on the channel named after the event stream. A delayed-set member is removed only
//! with the score its remover read, so a newer schedule always survives.
//!
//! The code is split by concern: [`keys`] (key naming), [`codec`] (state
//! names, sealing), [`store`] (load and compare-and-set), [`queue`] (claim,
//! reclaim, renew, release, promote), [`lifecycle`] (create, record, finish,
//! cancel, timeouts, the cascade to dependents), [`read`] (get, list,
//! events), [`sweep`], and [`rate`] (the [`RedisRateLimiter`]).

mod codec;
mod keys;
mod lifecycle;
mod notify;
mod queue;
mod rate;
mod read;
mod recent;
mod scripts;
mod store;
mod sweep;
mod usage;

pub use rate::RedisRateLimiter;
pub use usage::RedisUsage;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amaos_mesh::redis_conn::Conn;
use amaos_mesh::seal::Sealer;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};

use super::{
    Applied, BackendError, BackendLimits, Claim, Claimed, EventsPage, Lease, Outcome, QueueStats,
    Record, Swept, TaskBackend,
};
use crate::task::{Task, TaskState};
use scripts::Scripts;
use sweep::SweepCursor;

const GROUP: &str = "dispatchers";
const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;
const CAP_DEFER_MS: u64 = 50;
/// How long one claim waits for work.
const CLAIM_BLOCK_MS: u64 = 200;
/// Compare-and-set retries before giving up on a contended task.
const CAS_RETRIES: usize = 32;
/// The idle time a released lease gets: longer than any lease (ten years).
const RELEASED_IDLE_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// The message of a task that did not start before its deadline.
const NOT_STARTED: &str = "the task did not start before its deadline";
/// How much longer than its `BLOCK` a blocking read may take to answer before
/// it is given up (and its connection dropped).
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// Blocking connections kept for reuse.
const MAX_IDLE_BLOCKING: usize = 64;
/// Tasks a replica remembers as it last stored them ([`recent::Recent`]).
const RECENT_TASKS: usize = 1024;
/// Tasks whose stored data is larger than this are not remembered: the
/// memory [`RECENT_TASKS`] takes stays under 16 MiB.
const RECENT_MAX_BYTES: usize = 16 * 1024;
/// How long a watcher without a confirmed subscription (Redis unreachable)
/// pauses before it reads again.
const POLL_PAUSE: Duration = Duration::from_millis(100);

/// The Redis backend.
pub struct RedisBackend {
    client: redis::Client,
    conn: Conn,
    blocking: Mutex<Vec<MultiplexedConnection>>,
    /// The replica's one subscription that wakes watchers of events.
    notifier: notify::Notifier,
    prefix: String,
    limits: BackendLimits,
    /// The Lua scripts.
    scripts: Scripts,
    /// Where the sweep's SCAN of task keys stands, and the keys it returned
    /// that a bounded sweep has not examined yet.
    sweep_cursor: Mutex<SweepCursor>,
    /// Seals task data and event payloads at rest, when encryption is on.
    sealer: Option<Arc<Sealer>>,
    /// The tasks this replica stored last, for its next change to them.
    recent: recent::Recent,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl RedisBackend {
    /// Connects to `url` and prepares the queue's consumer group.
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: BackendLimits,
    ) -> Result<Self, BackendError> {
        let (client, conn) = amaos_mesh::redis_conn::connect(url)
            .await
            .map_err(BackendError::Unavailable)?;
        let backend = Self {
            notifier: notify::Notifier::start(client.clone()),
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            prefix: prefix.to_owned(),
            limits,
            scripts: Scripts::load(),
            sweep_cursor: Mutex::new(SweepCursor::default()),
            sealer: None,
            recent: recent::Recent::new(RECENT_TASKS),
        };
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(backend.queue())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut backend.conn.clone())
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(backend)
    }

    /// A connection for blocking reads. It has no response timeout: the
    /// client's default (0.5 s) is shorter than a watcher's `XREAD BLOCK`,
    /// and a long-poll that found nothing must end empty, not in an error.
    /// [`Self::blocking`] bounds each read by its block plus [`BLOCK_MARGIN`].
    async fn blocking_conn(&self) -> Result<MultiplexedConnection, BackendError> {
        if let Some(conn) = self
            .blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Runs `cmd`, a read that blocks the server for up to `block`, on a
    /// blocking connection; the connection goes back to the pool only after
    /// a clean answer.
    async fn blocking<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> Result<T, BackendError> {
        let mut conn = self.blocking_conn().await?;
        let limit = block + BLOCK_MARGIN;
        amaos_mesh::metrics::redis_sent(1);
        match tokio::time::timeout(limit, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.return_conn(conn);
                Ok(value)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BackendError::Unavailable(format!(
                "a blocking read got no answer within {limit:?}"
            ))),
        }
    }

    fn return_conn(&self, conn: MultiplexedConnection) {
        let mut pool = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_BLOCKING {
            pool.push(conn);
        }
    }
}

#[tonic::async_trait]
impl TaskBackend for RedisBackend {
    async fn create(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        self.create_tasks(tenant, handle, tasks, idempotency_key)
            .await
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Task>, BackendError> {
        self.get_task(tenant, id).await
    }

    async fn workflow(
        &self,
        tenant: &str,
        workflow_id: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        self.workflow_members(tenant, workflow_id).await
    }

    async fn list(
        &self,
        tenant: &str,
        before: Option<&str>,
        state: Option<TaskState>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Task>, BackendError> {
        self.list_tasks(tenant, before, state, team, limit).await
    }

    async fn claim(&self, consumer: &str, lease: Duration) -> Result<Claimed, BackendError> {
        self.claim_next(consumer, lease).await
    }

    async fn reclaim(
        &self,
        consumer: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BackendError> {
        self.take_over(consumer, lease, limit).await
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<Lease, BackendError> {
        self.renew_lease(claim, lease).await
    }

    async fn record(
        &self,
        id: &str,
        attempt: u32,
        record: Record,
    ) -> Result<Applied, BackendError> {
        self.record_attempt(id, attempt, record).await
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Applied, BackendError> {
        self.finish_attempt(claim, outcome).await
    }

    async fn decide(
        &self,
        tenant: &str,
        id: &str,
        approval_id: &str,
        decision: &crate::task::Decision,
    ) -> Result<Option<Result<(crate::task::Decided, Task), crate::task::Refused>>, BackendError>
    {
        self.decide_approval(tenant, id, approval_id, decision)
            .await
    }

    async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Option<Task>, BackendError> {
        self.cancel_task(tenant, id, reason).await
    }

    async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        self.read_events(tenant, id, after, wait).await
    }

    async fn promote(&self) -> Result<usize, BackendError> {
        self.promote_due().await
    }

    async fn release(&self, claim: &Claim) -> Result<Applied, BackendError> {
        self.release_lease(claim).await
    }

    async fn sweep(&self, lease: Duration, limit: usize) -> Result<Swept, BackendError> {
        self.sweep_some(lease, limit).await
    }

    async fn queue_stats(&self) -> Result<QueueStats, BackendError> {
        self.measure_queue().await
    }
}
