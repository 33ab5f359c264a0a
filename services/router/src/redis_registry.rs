//! The worker registry in Redis, shared by every router replica.
//!
//! Keys under the prefix `P`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:router:workers` | hash | worker id → registration (JSON) |
//! | `P:router:beats` | sorted set | worker id by last heartbeat (ms) |
//! | `P:router:load` | hash | worker id → runs in flight (reported, plus routes since) |
//! | `P:router:draining` | set | workers draining |
//! | `P:router:breakers:worker`, `…:team` | hash | key → `failures:open_until_ms:probing` |
//!
//! Breaker changes are Lua scripts using the server's clock, so replicas
//! agree. They are [`amaos_mesh::breaker::Breaker`]'s state machine written
//! for the server — the hash holds that breaker's parts, `open_until_ms` 0
//! for closed — and the tests below run both from the same states and
//! require the same result.

use std::collections::{HashMap, HashSet};
use std::ops::Add;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amaos_mesh::breaker::Breaker;

use amaos_mesh::redis_conn::Conn;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::backend::WorkerRegistry;
use crate::breaker::State;
use crate::error::RouterError;
use crate::registry::{
    ANY_INLINE, BreakerPolicy, Outcome, Registration, RouteQuery, WorkerView, pick,
};

/// Records an outcome (ARGV[2]: `1` success, `0` failure, `t` trip: open
/// at once; ARGV[3] the failures that open, ARGV[4] the cool-down in ms):
/// [`Breaker::record`] and [`Breaker::trip`]; returns 0 closed, 1 open.
const RECORD: &str = r#"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '0:0:0'
local failures, open_until = string.match(cur, '^(%d+):(%d+)')
failures = tonumber(failures) + 1
if ARGV[2] == 't' then failures = math.max(failures, tonumber(ARGV[3])) end
open_until = tonumber(open_until)
if open_until > 0 or failures >= tonumber(ARGV[3]) then
  open_until = now + tonumber(ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], failures .. ':' .. open_until .. ':0')
if open_until > now then return 1 end
return 0
"#;

/// Admits a call (ARGV[2]: the cool-down in ms): [`Breaker::admit`]; returns
/// -1 when admitted, else the ms until a probe may pass.
const ADMIT: &str = r#"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return -1 end
local failures, open_until, probing = string.match(cur, '^(%d+):(%d+):(%d+)')
open_until = tonumber(open_until)
if open_until == 0 then return -1 end
if now < open_until then return open_until - now end
-- Half-open: one probe, and the next only a cool-down later, so a probe
-- whose outcome is never reported does not wedge the breaker.
redis.call('HSET', KEYS[1], ARGV[1], failures .. ':' .. (now + tonumber(ARGV[2])) .. ':1')
return -1
"#;

#[derive(Serialize, Deserialize)]
struct Stored {
    address: String,
    teams: Vec<String>,
    capabilities: Vec<String>,
    capacity: u32,
    labels: HashMap<String, String>,
    registered_at_ms: u64,
    #[serde(default)]
    owner: String,
}

/// The Redis registry.
pub struct RedisRegistry {
    conn: Conn,
    prefix: String,
    ttl: Duration,
    max_workers: usize,
    policy: BreakerPolicy,
    record: Script,
    admit: Script,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn store_error(e: redis::RedisError) -> RouterError {
    amaos_mesh::metrics::redis_error();
    RouterError::Store(e.to_string())
}

/// A moment in milliseconds since the Unix epoch: the clock of the
/// breakers kept in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Millis(u64);

impl Add<Duration> for Millis {
    type Output = Millis;

    fn add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis() as u64))
    }
}

/// The breaker stored as `failures:open_until_ms:probing`; closed when
/// absent or unreadable.
fn stored_breaker(stored: Option<&str>) -> Breaker<Millis> {
    let mut parts = stored.unwrap_or_default().split(':');
    let mut next = || {
        parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (failures, open_until, probing) = (next(), next(), next());
    Breaker::from_parts(
        u32::try_from(failures).unwrap_or(u32::MAX),
        (open_until > 0).then_some(Millis(open_until)),
        probing == 1,
    )
}

/// A breaker's state at `now` (ms) from its stored form.
fn breaker_state(stored: Option<&str>, now: u64) -> State {
    stored_breaker(stored).state(Millis(now))
}

/// Workers, heartbeats, loads and draining ids, as read in one round trip.
type Everything = (
    HashMap<String, String>,
    Vec<(String, u64)>,
    HashMap<String, u32>,
    HashSet<String>,
);

struct Snapshot {
    workers: Vec<(String, Stored)>,
    beats: HashMap<String, u64>,
    loads: HashMap<String, u32>,
    draining: HashSet<String>,
}

impl RedisRegistry {
    /// Connects to `url`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        max_workers: usize,
        policy: BreakerPolicy,
    ) -> Result<Self, RouterError> {
        let (_, conn) = amaos_mesh::redis_conn::connect(url)
            .await
            .map_err(RouterError::Store)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            max_workers,
            policy,
            record: Script::new(RECORD),
            admit: Script::new(ADMIT),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:router:{name}", self.prefix)
    }

    /// Drops workers silent for ten TTLs, then reads everything.
    async fn snapshot(&self) -> Result<Snapshot, RouterError> {
        let mut conn = self.conn.clone();
        let gone_before = now_ms().saturating_sub(self.ttl.as_millis() as u64 * 10);
        let gone: Vec<String> = conn
            .zrangebyscore(self.key("beats"), 0, gone_before)
            .await
            .map_err(store_error)?;
        if !gone.is_empty() {
            let _: () = redis::pipe()
                .hdel(self.key("workers"), &gone)
                .hdel(self.key("load"), &gone)
                .zrem(self.key("beats"), &gone)
                .srem(self.key("draining"), &gone)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
        }
        let (workers, beats, loads, draining): Everything = redis::pipe()
            .hgetall(self.key("workers"))
            .zrange_withscores(self.key("beats"), 0, -1)
            .hgetall(self.key("load"))
            .smembers(self.key("draining"))
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        let mut workers: Vec<(String, Stored)> = workers
            .into_iter()
            .filter_map(|(id, json)| serde_json::from_str(&json).ok().map(|s| (id, s)))
            .collect();
        workers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Snapshot {
            workers,
            beats: beats.into_iter().collect(),
            loads,
            draining,
        })
    }

    fn view(&self, id: &str, stored: &Stored, snapshot: &Snapshot, now: u64) -> WorkerView {
        let beat = snapshot.beats.get(id).copied().unwrap_or(0);
        WorkerView {
            worker_id: id.to_owned(),
            registration: Registration {
                address: stored.address.clone(),
                teams: stored.teams.clone(),
                capabilities: stored.capabilities.clone(),
                capacity: stored.capacity,
                labels: stored.labels.clone(),
                owner: stored.owner.clone(),
            },
            in_flight: snapshot.loads.get(id).copied().unwrap_or(0),
            draining: snapshot.draining.contains(id),
            expired: now.saturating_sub(beat) > self.ttl.as_millis() as u64,
            registered_at: at(stored.registered_at_ms),
            last_heartbeat_at: at(beat),
        }
    }

    async fn breakers(&self, scope: &str, keys: &[String]) -> Result<Vec<State>, RouterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.key(&format!("breakers:{scope}")))
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let now = now_ms();
        Ok(stored
            .iter()
            .map(|s| breaker_state(s.as_deref(), now))
            .collect())
    }

    /// Admits a call to `key` of `scope`; `Err(wait)` when its breaker is open.
    async fn admit_call(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Result<(), Duration>, RouterError> {
        let result: i64 = self
            .admit
            .key(self.key(&format!("breakers:{scope}")))
            .arg(key)
            .arg(self.policy.cool_down.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(if result < 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(result as u64))
        })
    }
}

fn serves(stored: &Stored, team: &str, inline: bool) -> bool {
    stored
        .teams
        .iter()
        .any(|t| t == team || (inline && t == ANY_INLINE))
}

#[tonic::async_trait]
impl WorkerRegistry for RedisRegistry {
    async fn register(
        &self,
        worker_id: Option<String>,
        registration: Registration,
    ) -> Result<String, RouterError> {
        let mut conn = self.conn.clone();
        let worker_id = worker_id.unwrap_or_else(amaos_mesh::new_id);
        let all: HashMap<String, String> = conn
            .hgetall(self.key("workers"))
            .await
            .map_err(store_error)?;
        let previous = all.get(&worker_id).cloned();
        if let Some(stored) = previous
            .as_deref()
            .and_then(|p| serde_json::from_str::<Stored>(p).ok())
            && stored.owner != registration.owner
        {
            return Err(RouterError::NotOwner(worker_id));
        }
        // A worker restarted at the same address replaces its dead self.
        let replaced: Vec<&String> = all
            .iter()
            .filter(|(id, json)| {
                **id != worker_id
                    && serde_json::from_str::<Stored>(json).is_ok_and(|s| {
                        s.address == registration.address && s.owner == registration.owner
                    })
            })
            .map(|(id, _)| id)
            .collect();
        if !replaced.is_empty() {
            let _: () = redis::pipe()
                .hdel(self.key("workers"), &replaced)
                .zrem(self.key("beats"), &replaced)
                .hdel(self.key("load"), &replaced)
                .srem(self.key("draining"), &replaced)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
        }
        if previous.is_none() {
            let count: usize = conn.hlen(self.key("workers")).await.map_err(store_error)?;
            if count >= self.max_workers {
                return Err(RouterError::RegistryFull(self.max_workers));
            }
        }
        let registered_at_ms = previous
            .as_deref()
            .and_then(|p| serde_json::from_str::<Stored>(p).ok())
            .map(|s| s.registered_at_ms)
            .unwrap_or_else(now_ms);
        let Registration {
            address,
            teams,
            capabilities,
            capacity,
            labels,
            owner,
        } = registration;
        let stored = Stored {
            address,
            teams,
            capabilities,
            capacity,
            labels,
            registered_at_ms,
            owner,
        };
        let json = serde_json::to_string(&stored).map_err(|e| RouterError::Store(e.to_string()))?;
        let _: () = redis::pipe()
            .hset(self.key("workers"), &worker_id, json)
            .zadd(self.key("beats"), &worker_id, now_ms())
            .hset(self.key("load"), &worker_id, 0)
            .srem(self.key("draining"), &worker_id)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(worker_id)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        owner: &str,
        in_flight: u32,
        draining: bool,
    ) -> Result<SystemTime, RouterError> {
        let mut conn = self.conn.clone();
        let known: Option<String> = conn
            .hget(self.key("workers"), worker_id)
            .await
            .map_err(store_error)?;
        let Some(known) = known else {
            return Err(RouterError::WorkerNotFound(worker_id.to_owned()));
        };
        if serde_json::from_str::<Stored>(&known)
            .map(|s| s.owner)
            .unwrap_or_default()
            != owner
        {
            return Err(RouterError::NotOwner(worker_id.to_owned()));
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.zadd(self.key("beats"), worker_id, now)
            .hset(self.key("load"), worker_id, in_flight);
        if draining {
            pipe.sadd(self.key("draining"), worker_id);
        } else {
            pipe.srem(self.key("draining"), worker_id);
        }
        let _: () = pipe.query_async(&mut conn).await.map_err(store_error)?;
        Ok(at(now) + self.ttl)
    }

    async fn route(&self, query: &RouteQuery<'_>) -> Result<WorkerView, RouterError> {
        if let Err(wait) = self.admit_call("team", query.team).await? {
            return Err(RouterError::TeamBreakerOpen(query.team.to_owned(), wait));
        }
        let snapshot = self.snapshot().await?;
        let now = now_ms();
        let ttl = self.ttl.as_millis() as u64;
        let mut candidates: Vec<&(String, Stored)> = snapshot
            .workers
            .iter()
            .filter(|(id, s)| {
                serves(s, query.team, query.inline_spec)
                    && now.saturating_sub(snapshot.beats.get(id).copied().unwrap_or(0)) <= ttl
                    && !snapshot.draining.contains(id)
                    && !query.exclude.contains(id)
                    && query
                        .required_capabilities
                        .iter()
                        .all(|c| s.capabilities.contains(c))
            })
            .collect();
        let ids: Vec<String> = candidates.iter().map(|(id, _)| id.clone()).collect();
        let states = self.breakers("worker", &ids).await?;
        let mut open = states.iter().map(|s| *s == State::Open);
        candidates.retain(|_| !open.next().unwrap_or(false));
        while !candidates.is_empty() {
            let ids: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
            let loads: Vec<f64> = candidates
                .iter()
                .map(|(id, s)| {
                    f64::from(snapshot.loads.get(id).copied().unwrap_or(0))
                        / f64::from(s.capacity.max(1))
                })
                .collect();
            let i = pick(&ids, &loads, query.session_key);
            let (id, stored) = candidates[i];
            if self.admit_call("worker", id).await?.is_ok() {
                let _: () = self
                    .conn
                    .clone()
                    .hincr(self.key("load"), id, 1)
                    .await
                    .map_err(store_error)?;
                let mut view = self.view(id, stored, &snapshot, now);
                view.in_flight += 1;
                return Ok(view);
            }
            candidates.swap_remove(i);
        }
        let known = snapshot
            .workers
            .iter()
            .any(|(_, s)| serves(s, query.team, query.inline_spec));
        Err(if known {
            RouterError::NoLiveWorker(query.team.to_owned())
        } else {
            RouterError::UnknownTeam(query.team.to_owned())
        })
    }

    async fn list(
        &self,
        team: Option<&str>,
        include_expired: bool,
    ) -> Result<Vec<WorkerView>, RouterError> {
        let snapshot = self.snapshot().await?;
        let now = now_ms();
        Ok(snapshot
            .workers
            .iter()
            .filter(|(_, s)| team.is_none_or(|t| serves(s, t, false)))
            .map(|(id, s)| self.view(id, s, &snapshot, now))
            .filter(|w| include_expired || !w.expired)
            .collect())
    }

    async fn report(
        &self,
        worker_id: &str,
        team: &str,
        outcome: Outcome,
    ) -> Result<(State, State), RouterError> {
        // What each breaker records: `None` leaves it as it is.
        let (worker, team_change) = match outcome {
            Outcome::Success => (Some("1"), Some("1")),
            Outcome::WorkerFailure => (Some("0"), None),
            Outcome::Unreachable => (Some("t"), None),
            Outcome::TeamFailure => (None, Some("0")),
        };
        let mut states = [State::Closed; 2];
        for (i, (scope, key, change)) in
            [("worker", worker_id, worker), ("team", team, team_change)]
                .into_iter()
                .enumerate()
        {
            let Some(change) = change else {
                states[i] = self
                    .breakers(scope, &[key.to_owned()])
                    .await?
                    .pop()
                    .unwrap_or(State::Closed);
                continue;
            };
            let code: i64 = self
                .record
                .key(self.key(&format!("breakers:{scope}")))
                .arg(key)
                .arg(change)
                .arg(self.policy.failures)
                .arg(self.policy.cool_down.as_millis() as u64)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            states[i] = if code == 1 {
                State::Open
            } else {
                State::Closed
            };
        }
        Ok((states[0], states[1]))
    }

    async fn worker_breakers(&self, worker_ids: &[String]) -> Result<Vec<State>, RouterError> {
        self.breakers("worker", worker_ids).await
    }

    async fn tripped(&self) -> Result<(usize, usize), RouterError> {
        let mut counts = [0usize; 2];
        for (i, scope) in ["worker", "team"].into_iter().enumerate() {
            let all: HashMap<String, String> = self
                .conn
                .clone()
                .hgetall(self.key(&format!("breakers:{scope}")))
                .await
                .map_err(store_error)?;
            let now = now_ms();
            counts[i] = all
                .values()
                .filter(|v| breaker_state(Some(v), now) != State::Closed)
                .count();
        }
        Ok((counts[0], counts[1]))
    }
}

#[cfg(test)]
mod tests;
