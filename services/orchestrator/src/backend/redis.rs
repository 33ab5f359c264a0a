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
//! Every multi-key change is one Lua script; a task's JSON changes only by
//! compare-and-set on `ver`, so concurrent replicas never lose an update.
//! Blocking reads (`XREAD`/`XREADGROUP ... BLOCK`) run on their own pooled
//! connections without the client's 0.5 s response timeout, bounded by
//! their block plus a margin instead. A delayed-set member is removed only
//! with the score its remover read, so a newer schedule always survives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amaos_mesh::seal::Sealer;
use amaos_proto::orchestrator::v1 as pb;
use prost::Message;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, FromRedisValue, Script};

use super::{
    Applied, BackendError, BackendLimits, Claim, Claimed, EventsPage, Lease, Outcome, Record,
    Swept, TaskBackend, event, state_event,
};
use crate::task::{ErrorClass, Task, TaskError, TaskState};

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
/// Blocking reads (watchers waiting for events) at once; more poll instead,
/// so thousands of watchers do not open thousands of connections.
const MAX_BLOCKING_READS: usize = 256;

/// Compare-and-set of a task, appending events; optionally takes it out of
/// the delayed set (only with the score its caller saw, else nothing changes:
/// -4), changes the tenant's running count (refusing over the cap), acks a
/// queue entry, queues the task itself or schedules it for later, records
/// the queue entry that now stands for the task (`entry`), releases
/// dependents, and sets expiry — all in one step, so no crash can leave half
/// of it.
const CAS: &str = r#"
local t = KEYS[1]
local cur = redis.call('HGET', t, 'ver')
if cur ~= ARGV[1] then return -1 end
if ARGV[14] ~= '' then
  local score = redis.call('ZSCORE', KEYS[5], ARGV[13])
  if not score or tonumber(score) ~= tonumber(ARGV[14]) then return -4 end
  redis.call('ZREM', KEYS[5], ARGV[13])
end
local delta = tonumber(ARGV[5])
if delta > 0 then
  local running = tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '0')
  if running >= tonumber(ARGV[6]) then return -2 end
end
if delta ~= 0 then redis.call('HINCRBY', KEYS[3], ARGV[7], delta) end
local seq = tonumber(redis.call('HGET', t, 'seq') or '0')
local i = 16
local n = tonumber(ARGV[i])
for k = 1, n do
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[i + k])
end
i = i + n + 1
redis.call('HSET', t, 'data', ARGV[2], 'state', ARGV[3], 'attempt', ARGV[4], 'ver', tonumber(cur) + 1, 'seq', seq)
if ARGV[9] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[8], ARGV[9])
  redis.call('XDEL', KEYS[4], ARGV[9])
end
if ARGV[10] ~= '' then
  redis.call('HSET', t, 'entry', redis.call('XADD', KEYS[4], '*', 'id', ARGV[10]))
elseif ARGV[15] ~= '' then
  redis.call('HSET', t, 'entry', ARGV[15])
end
if ARGV[12] ~= '0' then redis.call('ZADD', KEYS[5], ARGV[12], ARGV[13]) end
local nd = tonumber(ARGV[i])
for k = 1, nd do
  local dk = KEYS[5 + 2 * k - 1]
  local de = KEYS[5 + 2 * k]
  local id = ARGV[i + 2 * k - 1]
  local blob = ARGV[i + 2 * k]
  local waiting = redis.call('HINCRBY', dk, 'waiting', -1)
  if waiting <= 0 and redis.call('HGET', dk, 'state') == 'Pending' then
    local dseq = tonumber(redis.call('HGET', dk, 'seq') or '0') + 1
    redis.call('XADD', de, '0-' .. dseq, 'e', blob)
    redis.call('HSET', dk, 'state', 'Queued', 'seq', dseq)
    redis.call('HINCRBY', dk, 'ver', 1)
    redis.call('HSET', dk, 'entry', redis.call('XADD', KEYS[4], '*', 'id', id))
  end
end
local ttl = tonumber(ARGV[11])
if ttl > 0 then
  redis.call('EXPIRE', t, ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return seq
"#;

/// Appends run events of the current attempt of an unfinished task, or
/// (with no events) records the attempt's worker.
const RECORD: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'seq')
if not st[1] then return -1 end
if st[1] == 'Succeeded' or st[1] == 'Failed' or st[1] == 'Cancelled' or st[1] == 'TimedOut' or st[1] == 'NeedsReview' then return -1 end
if st[2] ~= ARGV[1] then return -1 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'worker', ARGV[3]) end
local seq = tonumber(st[3] or '0')
local max = tonumber(ARGV[2])
for i = 4, #ARGV do
  if seq >= max then
    redis.call('HSET', KEYS[1], 'seq', seq)
    return -3
  end
  seq = seq + 1
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[i])
end
redis.call('HSET', KEYS[1], 'seq', seq)
return seq
"#;

/// Resets a lease's idle time if the attempt is still the task's current one
/// and has not handed its lease back.
const RENEW: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'released')
if not st[1] then return 0 end
if st[1] == 'Succeeded' or st[1] == 'Failed' or st[1] == 'Cancelled' or st[1] == 'TimedOut' or st[1] == 'NeedsReview' then return 2 end
if st[2] ~= ARGV[1] or st[3] == ARGV[1] then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
"#;

/// Hands a running attempt's lease back: its pending entry moves to the
/// `released` consumer with an idle time longer than any lease, so the next
/// XAUTOCLAIM of any replica takes it over; `released` = the attempt, so its
/// renewals fail from now on.
const RELEASE: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if st[1] ~= 'Running' or st[2] ~= ARGV[1] then return 0 end
local moved = redis.call('XCLAIM', KEYS[2], ARGV[2], 'released', 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
if #moved == 0 then return 0 end
redis.call('HSET', KEYS[1], 'released', ARGV[1])
return 1
"#;

/// Where an unfinished task stands: `held` when it is in the delayed set or
/// its queue entry waits in the stream or is pending (a lease), `unknown` for
/// a RUNNING task stored before tasks recorded their entry, else stranded: a
/// QUEUED one is queued again here (`requeued`), others are left to a
/// compare-and-set (`stranded`).
const SWEEP: &str = r#"
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local st = redis.call('HMGET', KEYS[1], 'state', 'entry')
local state = st[1]
if not state or state == 'Succeeded' or state == 'Failed' or state == 'Cancelled' or state == 'TimedOut' or state == 'NeedsReview' then return 'held' end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 'held' end
local e = st[2]
if e then
  if #redis.call('XPENDING', KEYS[2], ARGV[2], e, e, 1) > 0 then return 'held' end
  if #redis.call('XRANGE', KEYS[2], e, e) > 0 then
    local last = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f['name'] == ARGV[2] then last = f['last-delivered-id'] end
    end
    if not last or after(e, last) then return 'held' end
  end
elseif state == 'Running' then
  return 'unknown'
end
if state == 'Queued' then
  redis.call('HSET', KEYS[1], 'entry', redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]))
  return 'requeued'
end
return 'stranded'
"#;

/// Removes up to ARGV[3] consumers of group ARGV[1] idle longer than ARGV[2]
/// ms with nothing pending (in one step, so none is handed an entry first).
const DEAD_CONSUMERS: &str = r#"
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  if removed >= tonumber(ARGV[3]) then break end
  local f = {}
  for k = 1, #c, 2 do f[c[k]] = c[k + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"#;

/// Takes task ARGV[1] out of the delayed set if its score is still ARGV[2]
/// (a newer schedule stays), and queues it when it is QUEUED (deferred by its
/// tenant's running cap). 1 when queued.
const UNSCHEDULE: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[3], 'state') == 'Queued' then
  redis.call('HSET', KEYS[3], 'entry', redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]))
  return 1
end
return 0
"#;

/// Stores new tasks under an idempotency key, atomically.
const CREATE: &str = r#"
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
local n = tonumber(ARGV[4])
local i = 5
for k = 1, n do
  local tk = KEYS[3 + 2 * k - 1]
  local ek = KEYS[3 + 2 * k]
  local id, data, state, waiting, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local nev = tonumber(ARGV[i + 5])
  redis.call('HSET', tk, 'data', data, 'state', state, 'attempt', 0, 'ver', 0, 'seq', nev, 'waiting', waiting, 'tenant', tenant)
  for e = 1, nev do
    redis.call('XADD', ek, '0-' .. e, 'e', ARGV[i + 5 + e])
  end
  redis.call('ZADD', KEYS[2], 0, id)
  if state == 'Queued' then redis.call('HSET', tk, 'entry', redis.call('XADD', KEYS[3], '*', 'id', id)) end
  i = i + 6 + nev
end
return ''
"#;

/// One GCRA step with the server's clock.
const RATE: &str = r#"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - tolerance
if now + 0.000001 < allow_at then return tostring(allow_at - now) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000) + 1000)
return ''
"#;

/// Where the sweep's walk over task keys stands between calls.
#[derive(Default)]
struct SweepCursor {
    cursor: u64,
    /// Keys the last SCAN returned past the sweep's limit.
    pending: std::collections::VecDeque<String>,
}

/// The Redis backend.
pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    blocking: Mutex<Vec<MultiplexedConnection>>,
    blocking_reads: tokio::sync::Semaphore,
    prefix: String,
    limits: BackendLimits,
    cas: Script,
    record: Script,
    renew: Script,
    create: Script,
    rate: Script,
    unschedule: Script,
    release: Script,
    sweep: Script,
    dead_consumers: Script,
    /// Where the sweep's SCAN of task keys stands, and the keys it returned
    /// that a bounded sweep has not examined yet.
    sweep_cursor: Mutex<SweepCursor>,
    /// Seals task data and event payloads at rest, when encryption is on.
    sealer: Option<Arc<Sealer>>,
}

/// A task as loaded, with what a compare-and-set needs.
struct Loaded {
    task: Task,
    ver: String,
}

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "Pending",
        TaskState::Queued => "Queued",
        TaskState::Running => "Running",
        TaskState::Succeeded => "Succeeded",
        TaskState::Failed => "Failed",
        TaskState::Cancelled => "Cancelled",
        TaskState::TimedOut => "TimedOut",
        TaskState::NeedsReview => "NeedsReview",
    }
}

fn parse_state(name: &str) -> Option<TaskState> {
    Some(match name {
        "Pending" => TaskState::Pending,
        "Queued" => TaskState::Queued,
        "Running" => TaskState::Running,
        "Succeeded" => TaskState::Succeeded,
        "Failed" => TaskState::Failed,
        "Cancelled" => TaskState::Cancelled,
        "TimedOut" => TaskState::TimedOut,
        "NeedsReview" => TaskState::NeedsReview,
        _ => return None,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The key context of everything stored for task `id`: a sealed value
/// copied to another task does not open.
fn context(id: &str) -> String {
    format!("task/{id}")
}

/// A change to make with compare-and-set.
struct Change {
    events: Vec<Vec<u8>>,
    running_delta: i64,
    ack: Option<String>,
    enqueue: bool,
    /// Schedule the task in the delayed set at this time (ms).
    delay_until_ms: Option<u64>,
    /// Take the task out of the delayed set, only if its score is still this
    /// one (as read); else change nothing ([`Cas::Moved`]).
    unschedule: Option<String>,
    /// The queue entry that now holds the task (a claim's or takeover's).
    entry: Option<String>,
    release: Vec<(String, Vec<u8>)>,
    expire: bool,
}

impl Change {
    fn events(events: Vec<Vec<u8>>) -> Self {
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
enum Cas {
    Done,
    Conflict,
    OverCap,
    /// Its delayed-set score is no longer the one read: someone rescheduled it.
    Moved,
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
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            blocking_reads: tokio::sync::Semaphore::new(MAX_BLOCKING_READS),
            prefix: prefix.to_owned(),
            limits,
            cas: Script::new(CAS),
            record: Script::new(RECORD),
            renew: Script::new(RENEW),
            create: Script::new(CREATE),
            rate: Script::new(RATE),
            unschedule: Script::new(UNSCHEDULE),
            release: Script::new(RELEASE),
            sweep: Script::new(SWEEP),
            dead_consumers: Script::new(DEAD_CONSUMERS),
            sweep_cursor: Mutex::new(SweepCursor::default()),
            sealer: None,
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

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    fn delayed(&self) -> String {
        format!("{}:delayed", self.prefix)
    }

    fn running(&self) -> String {
        format!("{}:running", self.prefix)
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

    /// Stores task data and event payloads sealed with `sealer` from now on;
    /// values stored in clear before stay readable.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// What is stored for `plain` of task `id`: sealed when encryption is on.
    fn seal(&self, id: &str, plain: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        match &self.sealer {
            Some(sealer) => sealer
                .seal_bytes(&context(id), &plain)
                .map(String::into_bytes)
                .map_err(|e| BackendError::Unavailable(e.to_string())),
            None => Ok(plain),
        }
    }

    /// The plain bytes of what is stored for task `id`.
    fn open(&self, id: &str, stored: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        match &self.sealer {
            _ if !Sealer::is_sealed(&stored) => Ok(stored),
            Some(sealer) => sealer
                .open_bytes(&context(id), &stored)
                .map_err(|e| BackendError::Unavailable(format!("task {id}: {e}"))),
            None => Err(BackendError::Unavailable(format!(
                "task {id} is sealed but encryption is off (orchestrator.encrypt)"
            ))),
        }
    }

    /// An event without its sequence number (the stream id carries it),
    /// encoded and sealed.
    fn blob(&self, id: &str, kind: pb::task_event::Kind) -> Result<Vec<u8>, BackendError> {
        self.seal(id, event(id, 0, kind).encode_to_vec())
    }

    fn decode_event(&self, id: &str, entry: &redis::streams::StreamId) -> Option<pb::TaskEvent> {
        let sequence: u64 = entry.id.strip_prefix("0-")?.parse().ok()?;
        let stored: Vec<u8> = redis::from_redis_value_ref(entry.map.get("e")?).ok()?;
        let bytes = match self.open(id, stored) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(task_id = id, sequence, %error, "an event does not open; skipped");
                return None;
            }
        };
        let mut event = pb::TaskEvent::decode(bytes.as_slice()).ok()?;
        event.sequence = sequence;
        event.task_id = id.to_owned();
        Some(event)
    }

    async fn load(&self, id: &str) -> Result<Option<Loaded>, BackendError> {
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

    async fn cas(&self, loaded: &Loaded, task: &Task, change: Change) -> Result<Cas, BackendError> {
        let data =
            serde_json::to_vec(task).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let data = self.seal(&task.id, data)?;
        let mut invocation = self.cas.prepare_invoke();
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
        let result: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match result {
            -1 => Cas::Conflict,
            -2 => Cas::OverCap,
            -4 => Cas::Moved,
            _ => Cas::Done,
        })
    }

    async fn ack(&self, entry: &str) -> Result<(), BackendError> {
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

    /// Ends every unfinished dependent of `task`, transitively.
    async fn end_dependents(
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
    async fn time_out(&self, loaded: &Loaded, ack: Option<&str>) -> Result<Cas, BackendError> {
        let mut next = loaded.task.clone();
        let now = SystemTime::now();
        next.error = Some(TaskError {
            class: ErrorClass::Transient,
            message: NOT_STARTED.to_owned(),
        });
        next.state = TaskState::TimedOut;
        next.finished_at = Some(now);
        next.updated_at = now;
        let mut change = Change::events(vec![self.blob(
            &next.id,
            state_event(
                Some(loaded.task.state),
                TaskState::TimedOut,
                NOT_STARTED,
                next.attempt,
            ),
        )?]);
        change.ack = ack.map(str::to_owned);
        change.expire = true;
        let done = self.cas(loaded, &next, change).await?;
        if let Cas::Done = done {
            self.end_dependents(
                &next,
                TaskState::Failed,
                &format!("did not succeed: {NOT_STARTED}"),
            )
            .await?;
        }
        Ok(done)
    }

    /// One task of the sweep.
    async fn sweep_task(&self, id: &str, swept: &mut Swept) -> Result<(), BackendError> {
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
                return Ok(());
            };
            let task = &loaded.task;
            if task.state.is_terminal() {
                return Ok(());
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

    /// Starts an attempt of a queued task taken from the queue entry `entry`.
    async fn begin(
        &self,
        id: &str,
        entry: &str,
        consumer: &str,
    ) -> Result<Option<Claim>, BackendError> {
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
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

    async fn list_ids(
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

#[tonic::async_trait]
impl TaskBackend for RedisBackend {
    async fn create(
        &self,
        tenant: &str,
        handle: &str,
        tasks: Vec<Task>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let mut invocation = self.create.prepare_invoke();
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

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Task>, BackendError> {
        Ok(self
            .load(id)
            .await?
            .map(|l| l.task)
            .filter(|t| t.tenant == tenant))
    }

    async fn workflow(
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

    async fn list(
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

    async fn claim(&self, consumer: &str, _lease: Duration) -> Result<Claimed, BackendError> {
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

    async fn reclaim(
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
                let reason = super::takeover_reason(stalled, released == Some(stalled));
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

    async fn renew(&self, claim: &Claim, _lease: Duration) -> Result<Lease, BackendError> {
        let result: i64 = self
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

    async fn record(
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
        let mut invocation = self.record.prepare_invoke();
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

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Applied, BackendError> {
        let id = &claim.task.id;
        let attempt = claim.attempt();
        for _ in 0..CAS_RETRIES {
            let Some(loaded) = self.load(id).await? else {
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

    async fn cancel(
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

    async fn events(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<EventsPage>, BackendError> {
        let (owner, state): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.key("task", id))
            .arg("tenant")
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await?;
        if owner.as_deref() != Some(tenant) {
            return Ok(None);
        }
        let was_terminal = state
            .as_deref()
            .and_then(parse_state)
            .is_some_and(TaskState::is_terminal);
        let stream = self.key("events", id);
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut events: Vec<pb::TaskEvent> = range
            .ids
            .iter()
            .filter_map(|e| self.decode_event(id, e))
            .collect();
        if events.is_empty() && !was_terminal && !wait.is_zero() {
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
                let range: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg(format!("(0-{after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.conn.clone())
                    .await?;
                events = range
                    .ids
                    .iter()
                    .filter_map(|e| self.decode_event(id, e))
                    .collect();
            }
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

    async fn promote(&self) -> Result<usize, BackendError> {
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

    async fn release(&self, claim: &Claim) -> Result<Applied, BackendError> {
        let released: i64 = self
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

    async fn sweep(&self, lease: Duration, limit: usize) -> Result<Swept, BackendError> {
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

    async fn rate_limit(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Option<Duration>, BackendError> {
        let interval = 1.0 / per_second.max(1e-9);
        let tolerance = interval * f64::from(burst.max(1));
        let wait: String = self
            .rate
            .key(self.key("rate", key))
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if wait.is_empty() {
            return Ok(None);
        }
        let seconds: f64 = wait.parse().unwrap_or(interval);
        Ok(Some(Duration::from_secs_f64(seconds.max(0.0))))
    }
}
