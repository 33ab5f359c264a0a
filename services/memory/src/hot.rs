//! The hot tier: recent memories per tenant, bounded by count and by time.
//!
//! [`HotTier`] is what every hot backend offers. [`LruHotTier`] keeps them in
//! this process (time is `tokio::time::Instant`, so tests drive it with
//! paused time); [`RedisHotTier`] keeps them in Redis hashes and sorted sets,
//! shared by every replica and surviving restarts.
//!
//! Nothing leaves the tier silently: what overflow pushes out is handed back
//! by [`HotTier::put`], and what outlived its hot time is listed by
//! [`HotTier::due`] and removed only after the caller moved it to long-term
//! memory ([`HotTier::remove`]), so a crash in between repeats the move
//! (an idempotent upsert) rather than losing the memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use amaos_mesh::redis_conn::Conn;
use futures::future::BoxFuture;
use redis::{AsyncCommands, Script};
use tokio::time::Instant;

use crate::item::{Filter, Stored, now_ms};

/// How long an idempotency key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A tier backend failed.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct TierError {
    /// The backend.
    pub backend: &'static str,
    /// What went wrong.
    pub message: String,
}

impl TierError {
    /// An error of `backend`.
    pub fn new(backend: &'static str, message: impl ToString) -> Self {
        Self {
            backend,
            message: message.to_string(),
        }
    }
}

/// What every hot-tier backend offers. Every call is scoped to one tenant
/// but [`HotTier::due`], which serves the lifecycle sweep.
pub trait HotTier: Send + Sync {
    /// The backend's name, for errors and metrics.
    fn name(&self) -> &'static str;
    /// Stores `stored`, replacing one with the same id and restarting its
    /// hot time; returns what overflow pushed out (oldest written first).
    fn put<'a>(
        &'a self,
        tenant: &'a str,
        stored: Stored,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>>;
    /// The tenant's memories matching `filter`, newest first, at most `limit`.
    fn scan<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>>;
    /// Up to `limit` memories (of any tenant) whose hot time is up, left in
    /// place until [`HotTier::remove`]d.
    fn due(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(String, Stored)>, TierError>>;
    /// Removes these memories of the tenant; how many were there.
    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>>;
    /// Records idempotency `key` → `id` for [`KEY_TTL`] unless the key is
    /// recorded already; returns the id recorded first.
    fn claim_key<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, TierError>>;
    /// How many memories the tenant has in this tier.
    fn len<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>>;
}

struct Slot {
    stored: Stored,
    due: Instant,
    /// When it was written (larger is newer).
    written: u64,
}

#[derive(Default)]
struct Tenant {
    slots: HashMap<String, Slot>,
    /// Oldest written first.
    order: BTreeMap<u64, String>,
    keys: HashMap<String, (String, Instant)>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Tenant>,
    clock: u64,
}

/// The in-process hot tier: per tenant at most `capacity` memories, each
/// hot for `ttl` after its last write; overflow pushes out the least
/// recently written.
pub struct LruHotTier {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
}

impl LruHotTier {
    /// A tier keeping at most `capacity` memories per tenant for `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_now(&self, tenant: &str, stored: Stored) -> Vec<Stored> {
        let now = Instant::now();
        let mut state = self.lock();
        state.clock += 1;
        let tick = state.clock;
        let t = state.tenants.entry(tenant.to_owned()).or_default();
        let id = stored.item.id.clone();
        if let Some(old) = t.slots.remove(&id) {
            t.order.remove(&old.written);
        }
        let mut out = Vec::new();
        while t.slots.len() >= self.capacity {
            let Some((_, oldest)) = t.order.pop_first() else {
                break;
            };
            if let Some(slot) = t.slots.remove(&oldest) {
                out.push(slot.stored);
            }
        }
        t.order.insert(tick, id.clone());
        t.slots.insert(
            id,
            Slot {
                stored,
                due: now + self.ttl,
                written: tick,
            },
        );
        out
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, TierError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl HotTier for LruHotTier {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn put<'a>(
        &'a self,
        tenant: &'a str,
        stored: Stored,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>> {
        ready(self.put_now(tenant, stored))
    }

    fn scan<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>> {
        let state = self.lock();
        let found = state.tenants.get(tenant).map_or_else(Vec::new, |t| {
            t.order
                .values()
                .rev()
                .filter_map(|id| t.slots.get(id))
                .filter(|s| filter.matches(&s.stored.item))
                .take(limit)
                .map(|s| s.stored.clone())
                .collect()
        });
        ready(found)
    }

    fn due(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(String, Stored)>, TierError>> {
        let now = Instant::now();
        let state = self.lock();
        let found = state
            .tenants
            .iter()
            .flat_map(|(tenant, t)| {
                t.slots
                    .values()
                    .filter(move |s| s.due <= now)
                    .map(move |s| (tenant.clone(), s.stored.clone()))
            })
            .take(limit)
            .collect();
        ready(found)
    }

    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>> {
        let mut state = self.lock();
        let mut n = 0;
        if let Some(t) = state.tenants.get_mut(tenant) {
            for id in ids {
                if let Some(slot) = t.slots.remove(id) {
                    t.order.remove(&slot.written);
                    n += 1;
                }
            }
            t.keys.retain(|_, (id, _)| !ids.contains(id));
            if t.slots.is_empty() && t.keys.is_empty() {
                state.tenants.remove(tenant);
            }
        }
        ready(n)
    }

    fn claim_key<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, TierError>> {
        let now = Instant::now();
        let mut state = self.lock();
        let t = state.tenants.entry(tenant.to_owned()).or_default();
        t.keys.retain(|_, (_, until)| *until > now);
        let first = t
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| (id.to_owned(), now + KEY_TTL))
            .0
            .clone();
        ready(first)
    }

    fn len<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>> {
        ready(
            self.lock()
                .tenants
                .get(tenant)
                .map_or(0, |t| t.slots.len() as u64),
        )
    }
}

/// Stores one memory and pushes out the oldest written beyond capacity.
/// KEYS: items hash, order zset, due zset. ARGV: id, json, now, due, capacity, tenant.
/// Returns the JSON of every memory pushed out.
const PUT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6] .. '\31' .. ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
local out = {}
if over > 0 then
  local ids = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', KEYS[1], id)
    if json then table.insert(out, json) end
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], ARGV[6] .. '\31' .. id)
  end
end
return out
"#;

/// The hot tier in Redis: per tenant a hash of memories (JSON) and a sorted
/// set by write time; one sorted set of due times across tenants for the
/// sweep; idempotency keys as strings with a TTL.
pub struct RedisHotTier {
    conn: Conn,
    prefix: String,
    capacity: usize,
    ttl: Duration,
    put: Script,
}

fn redis_error(e: impl ToString) -> TierError {
    amaos_mesh::metrics::redis_error();
    TierError::new("redis", e)
}

impl RedisHotTier {
    /// Connects to `url`; every key starts with `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        capacity: usize,
        ttl: Duration,
    ) -> Result<Self, TierError> {
        let (_, conn) = amaos_mesh::redis_conn::connect(url)
            .await
            .map_err(redis_error)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            capacity: capacity.max(1),
            ttl,
            put: Script::new(PUT),
        })
    }

    fn key(&self, tenant: &str, name: &str) -> String {
        // Tenant ids are validated names, so they cannot forge a key.
        format!("{}:memory:hot:{{{tenant}}}:{name}", self.prefix)
    }

    fn due_key(&self) -> String {
        format!("{}:memory:hot:due", self.prefix)
    }

    fn parse(json: &str) -> Result<Stored, TierError> {
        serde_json::from_str(json)
            .map_err(|e| redis_error(format!("a stored memory is unreadable: {e}")))
    }
}

impl HotTier for RedisHotTier {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn put<'a>(
        &'a self,
        tenant: &'a str,
        stored: Stored,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&stored).map_err(redis_error)?;
            let now = now_ms();
            let out: Vec<String> = self
                .put
                .key(self.key(tenant, "items"))
                .key(self.key(tenant, "order"))
                .key(self.due_key())
                .arg(&stored.item.id)
                .arg(json)
                .arg(now)
                .arg(now + self.ttl.as_millis() as u64)
                .arg(self.capacity)
                .arg(tenant)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
            out.iter().map(|j| Self::parse(j)).collect()
        })
    }

    fn scan<'a>(
        &'a self,
        tenant: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, TierError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // The tier is bounded by capacity, so reading it whole is bounded too.
            let ids: Vec<String> = conn
                .zrevrange(self.key(tenant, "order"), 0, -1)
                .await
                .map_err(redis_error)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let jsons: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.key(tenant, "items"))
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let mut out = Vec::new();
            for json in jsons.into_iter().flatten() {
                let stored = Self::parse(&json)?;
                if filter.matches(&stored.item) {
                    out.push(stored);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn due(&self, limit: usize) -> BoxFuture<'_, Result<Vec<(String, Stored)>, TierError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let members: Vec<String> = conn
                .zrangebyscore_limit(self.due_key(), 0, now_ms(), 0, limit as isize)
                .await
                .map_err(redis_error)?;
            let mut out = Vec::new();
            for member in members {
                let Some((tenant, id)) = member.split_once('\u{1f}') else {
                    let _: () = conn
                        .zrem(self.due_key(), &member)
                        .await
                        .map_err(redis_error)?;
                    continue;
                };
                let json: Option<String> = conn
                    .hget(self.key(tenant, "items"), id)
                    .await
                    .map_err(redis_error)?;
                match json {
                    Some(json) => out.push((tenant.to_owned(), Self::parse(&json)?)),
                    // Removed meanwhile: nothing left to move.
                    None => {
                        let _: () = conn
                            .zrem(self.due_key(), &member)
                            .await
                            .map_err(redis_error)?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn remove<'a>(
        &'a self,
        tenant: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, TierError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            let members: Vec<String> = ids.iter().map(|id| format!("{tenant}\u{1f}{id}")).collect();
            let (removed, _, _): (u64, u64, u64) = redis::pipe()
                .atomic()
                .hdel(self.key(tenant, "items"), ids)
                .zrem(self.key(tenant, "order"), ids)
                .zrem(self.due_key(), &members)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
            Ok(removed)
        })
    }

    fn claim_key<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, TierError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let name = self.key(tenant, &format!("key:{key}"));
            let set: bool = redis::cmd("SET")
                .arg(&name)
                .arg(id)
                .arg("NX")
                .arg("EX")
                .arg(KEY_TTL.as_secs())
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(redis_error)?
                .is_some();
            if set {
                return Ok(id.to_owned());
            }
            let first: Option<String> = conn.get(&name).await.map_err(redis_error)?;
            Ok(first.unwrap_or_else(|| id.to_owned()))
        })
    }

    fn len<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<u64, TierError>> {
        Box::pin(async move {
            self.conn
                .clone()
                .hlen(self.key(tenant, "items"))
                .await
                .map_err(redis_error)
        })
    }
}
