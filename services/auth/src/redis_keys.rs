//! The API key store in Redis, shared by auth replicas.
//!
//! Layout, every key under one hash tag so a cluster keeps them in one slot:
//!
//! - `<p>:key:<id>`: a hash with `data` (the key's JSON, written once),
//!   `tenant`, `revoked` and `used` (ms since the epoch);
//! - `<p>:prefix:<prefix>`: the key id for a public prefix;
//! - `<p>:all` and `<p>:tenant:<tenant>`: key ids by creation time;
//! - `<p>:idem:<tenant>:<idempotency key>`: the key id a request created.
//!
//! Creation is one Lua script (idempotency, the size cap, the prefix and the
//! indexes move together); revocation is `HSETNX`, so the first revocation
//! time stays.

use amaos_mesh::redis_conn::Conn;
use redis::Script;

use crate::error::AuthError;
use crate::keys::{KeyBackend, MAX_KEYS, NewKey, StoredKey, mint, now_ms, split_key};

const CREATE: &str = r#"
local p, id, json, tenant, prefix, created, max, idem =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
if idem ~= '' then
  local existing = redis.call('GET', p .. ':idem:' .. tenant .. ':' .. idem)
  if existing then return {0, existing} end
end
if redis.call('ZCARD', p .. ':all') >= max then return {-1, ''} end
if redis.call('SET', p .. ':prefix:' .. prefix, id, 'NX') == false then return {-2, ''} end
redis.call('HSET', p .. ':key:' .. id, 'data', json, 'tenant', tenant)
redis.call('ZADD', p .. ':all', created, id)
redis.call('ZADD', p .. ':tenant:' .. tenant, created, id)
if idem ~= '' then redis.call('SET', p .. ':idem:' .. tenant .. ':' .. idem, id) end
return {1, id}
"#;

/// API keys in Redis.
pub struct RedisKeys {
    conn: Conn,
    prefix: String,
    create: Script,
}

fn store_error(e: impl std::fmt::Display) -> AuthError {
    AuthError::Store(format!("redis: {e}"))
}

impl RedisKeys {
    /// Connects to the Redis at `url`, keeping keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, AuthError> {
        let (_, conn) = amaos_mesh::redis_conn::connect(url)
            .await
            .map_err(store_error)?;
        Ok(Self {
            conn,
            prefix: format!("{prefix}:{{apikeys}}"),
            create: Script::new(CREATE),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:key:{id}", self.prefix)
    }

    async fn load(&self, id: &str) -> Result<Option<StoredKey>, AuthError> {
        let (data, revoked, used): (Option<String>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key(id))
            .arg("data")
            .arg("revoked")
            .arg("used")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let Some(data) = data else {
            return Ok(None);
        };
        let mut key: StoredKey = serde_json::from_str(&data)
            .map_err(|e| store_error(format!("key {id} is corrupt: {e}")))?;
        key.revoked_at_ms = revoked;
        key.last_used_at_ms = used;
        Ok(Some(key))
    }

    async fn ids(&self, index: &str) -> Result<Vec<String>, AuthError> {
        redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }
}

#[tonic::async_trait]
impl KeyBackend for RedisKeys {
    async fn is_empty(&self) -> Result<bool, AuthError> {
        let count: u64 = redis::cmd("ZCARD")
            .arg(format!("{}:all", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(count == 0)
    }

    async fn create(&self, new: NewKey<'_>) -> Result<(StoredKey, Option<String>), AuthError> {
        let (key, secret) = mint(new).await?;
        let json = serde_json::to_string(&key).map_err(store_error)?;
        let (code, id): (i64, String) = self
            .create
            .arg(&self.prefix)
            .arg(&key.key_id)
            .arg(json)
            .arg(&key.tenant)
            .arg(&key.prefix)
            .arg(key.created_at_ms)
            .arg(MAX_KEYS)
            .arg(key.idempotency_key.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match code {
            1 => Ok((key, Some(secret))),
            0 => {
                let existing = self.load(&id).await?.ok_or_else(|| {
                    store_error(format!("key {id} of an idempotency key is gone"))
                })?;
                Ok((existing, None))
            }
            -1 => Err(AuthError::Store(format!(
                "the store holds its maximum of {MAX_KEYS} keys"
            ))),
            _ => Err(store_error("a key prefix collided; retry")),
        }
    }

    async fn list(
        &self,
        tenant: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<StoredKey>, AuthError> {
        let index = match tenant {
            Some(t) => format!("{}:tenant:{t}", self.prefix),
            None => format!("{}:all", self.prefix),
        };
        let mut keys = Vec::new();
        for id in self.ids(&index).await? {
            if let Some(key) = self.load(&id).await?
                && (include_revoked || key.revoked_at_ms.is_none())
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn revoke(&self, key_id: &str, tenant: Option<&str>) -> Result<StoredKey, AuthError> {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(self.key(key_id))
            .arg("tenant")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match owner {
            Some(owner) if tenant.is_none_or(|t| t == owner) => {}
            _ => return Err(AuthError::KeyNotFound(key_id.to_owned())),
        }
        let _: i64 = redis::cmd("HSETNX")
            .arg(self.key(key_id))
            .arg("revoked")
            .arg(now_ms())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        self.load(key_id)
            .await?
            .ok_or_else(|| AuthError::KeyNotFound(key_id.to_owned()))
    }

    async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        let Some((prefix, secret)) = split_key(presented) else {
            crate::keys::verify_decoy("").await;
            return Err(AuthError::InvalidKey);
        };
        let id: Option<String> = redis::cmd("GET")
            .arg(format!("{}:prefix:{prefix}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        let key = match id {
            Some(id) => self.load(&id).await?,
            None => None,
        };
        let Some(key) = key else {
            crate::keys::verify_decoy(secret).await;
            return Err(AuthError::InvalidKey);
        };
        if !crate::keys::verify_secret(secret, &key.hash).await {
            return Err(AuthError::InvalidKey);
        }
        // Read again: the key may have been revoked while its hash was checked.
        let now = now_ms();
        let mut key = self.load(&key.key_id).await?.ok_or(AuthError::InvalidKey)?;
        if !key.usable(now) {
            return Err(AuthError::InvalidKey);
        }
        let _: i64 = redis::cmd("HSET")
            .arg(self.key(&key.key_id))
            .arg("used")
            .arg(now)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        key.last_used_at_ms = Some(now);
        Ok(key)
    }
}
