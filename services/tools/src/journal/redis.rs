//! The journal in Redis, shared by every tools replica and kept across
//! restarts. One hash per (tenant, key) — `fp` (the call's fingerprint),
//! `owner` (the attempt that reserved it) and, once recorded, `result` — under
//! `<prefix>:tools:journal:<sha256 of tenant and key>`; a reservation expires
//! with its lease (`PEXPIRE`), a recorded result with the journal's TTL. Every
//! change is one Lua script, so two replicas never both reserve a key. A
//! sorted set of recorded keys by time keeps at most `max_entries` results.
//! Results are sealed at rest with [`Sealer`] (the tenant as key context)
//! when a sealer is given.

use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::redis_conn::Conn;
use amaos_mesh::seal::Sealer;
use redis::Script;
use sha2::{Digest, Sha256};

use super::{Journal, JournalError, JournalLimits, Recorded, Reserve, hex};

/// KEYS[1] the entry; ARGV fingerprint, owner, lease in ms.
const RESERVE: &str = r"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'reserved'}
end
if fp ~= ARGV[1] then return {'conflict'} end
local result = redis.call('HGET', KEYS[1], 'result')
if result then return {'recorded', result} end
if redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'reserved'}
end
return {'pending'}
";

/// KEYS[1] the entry; ARGV owner, lease in ms.
const RENEW: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HEXISTS', KEYS[1], 'result') == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS[1] the entry; ARGV owner.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HEXISTS', KEYS[1], 'result') == 0 then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS[1] the entry, KEYS[2] the index of recorded entries; ARGV
/// fingerprint, owner, result, TTL in ms, most entries kept.
const RECORD: &str = r"
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp then
  if fp ~= ARGV[1] then return 'conflict' end
  if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 'recorded' end
  if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 'lost' end
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'result', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'ok'
";

/// The Redis journal.
pub struct RedisJournal {
    conn: Conn,
    prefix: String,
    limits: JournalLimits,
    sealer: Option<Arc<Sealer>>,
    reserve: Script,
    renew: Script,
    release: Script,
    record: Script,
}

fn store(e: impl std::fmt::Display) -> JournalError {
    amaos_mesh::metrics::redis_error();
    JournalError::Store(e.to_string())
}

impl RedisJournal {
    /// Connects to `url`; keys go under `<prefix>:tools:journal`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: JournalLimits,
    ) -> Result<Self, JournalError> {
        let (_, conn) = amaos_mesh::redis_conn::connect(url).await.map_err(store)?;
        Ok(Self {
            conn,
            prefix: format!("{prefix}:tools:journal"),
            limits,
            sealer: None,
            reserve: Script::new(RESERVE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            record: Script::new(RECORD),
        })
    }

    /// Stores results sealed with `sealer` from now on; results stored in
    /// clear before stay readable.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// The entry of (`tenant`, `key`): both hashed, so neither can reach
    /// into another tenant's keys.
    fn entry(&self, tenant: &str, key: &str) -> String {
        let mut h = Sha256::new();
        h.update((tenant.len() as u64).to_be_bytes());
        h.update(tenant.as_bytes());
        h.update(key.as_bytes());
        format!("{}:{}", self.prefix, hex(&h.finalize()))
    }

    fn index(&self) -> String {
        format!("{}-index", self.prefix)
    }

    fn ms(d: Duration) -> u64 {
        (d.as_millis() as u64).max(1)
    }

    fn seal(&self, tenant: &str, result: &serde_json::Value) -> Result<String, JournalError> {
        let text = result.to_string();
        match &self.sealer {
            Some(sealer) => sealer.seal(tenant, &text).map_err(store),
            None => Ok(text),
        }
    }

    fn open(&self, tenant: &str, stored: &str) -> Result<serde_json::Value, JournalError> {
        let text = match &self.sealer {
            _ if !Sealer::is_sealed(stored.as_bytes()) => stored.to_owned(),
            Some(sealer) => sealer.open(tenant, stored).map_err(store)?,
            None => {
                return Err(store(
                    "a recorded result is sealed but encryption is off (tools.journal_encrypt)",
                ));
            }
        };
        serde_json::from_str(&text).map_err(|e| store(format!("a recorded result: {e}")))
    }
}

#[tonic::async_trait]
impl Journal for RedisJournal {
    fn limits(&self) -> JournalLimits {
        self.limits
    }

    async fn reserve(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &[u8; 32],
        owner: &str,
    ) -> Result<Reserve, JournalError> {
        let reply: Vec<String> = self
            .reserve
            .key(self.entry(tenant, key))
            .arg(hex(fingerprint))
            .arg(owner)
            .arg(Self::ms(self.limits.lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        match reply.first().map(String::as_str) {
            Some("reserved") => Ok(Reserve::Reserved),
            Some("recorded") => Ok(Reserve::Recorded(
                self.open(tenant, reply.get(1).map_or("", String::as_str))?,
            )),
            Some("pending") => Ok(Reserve::Pending),
            Some("conflict") => Ok(Reserve::Conflict),
            other => Err(store(format!("unexpected reply {other:?}"))),
        }
    }

    async fn renew(&self, tenant: &str, key: &str, owner: &str) -> Result<bool, JournalError> {
        let renewed: i64 = self
            .renew
            .key(self.entry(tenant, key))
            .arg(owner)
            .arg(Self::ms(self.limits.lease))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        Ok(renewed == 1)
    }

    async fn record(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        result: &serde_json::Value,
    ) -> Result<Recorded, JournalError> {
        let reply: String = self
            .record
            .key(self.entry(tenant, key))
            .key(self.index())
            .arg(hex(fingerprint))
            .arg(owner)
            .arg(self.seal(tenant, result)?)
            .arg(Self::ms(self.limits.ttl))
            .arg(self.limits.max_entries)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        match reply.as_str() {
            "ok" => Ok(Recorded::Stored),
            "recorded" => Ok(Recorded::AlreadyRecorded),
            "lost" => Ok(Recorded::Lost),
            "conflict" => Ok(Recorded::Conflict),
            other => Err(store(format!("unexpected reply {other:?}"))),
        }
    }

    async fn release(&self, tenant: &str, key: &str, owner: &str) -> Result<(), JournalError> {
        let _: i64 = self
            .release
            .key(self.entry(tenant, key))
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store)?;
        Ok(())
    }
}
