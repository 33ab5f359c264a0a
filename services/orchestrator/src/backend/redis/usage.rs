//! Usage in Redis, shared by every replica: one hash per tenant and UTC
//! day (`P:usage:<tenant>:<day>`, fields `<team>|<field>`), one per task
//! (`P:usage:task:<tenant>:<task>`), and the set of tenants with usage
//! (`P:usage:tenants`). Additions are `HINCRBY`/`HINCRBYFLOAT` in one
//! transaction, so replicas adding at once lose nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use amaos_mesh::redis_conn::Conn;

use super::RedisBackend;
use crate::backend::BackendError;
use crate::usage::{Day, DayRow, FieldValue, MAX_TENANTS, Usage, UsageStore};

/// Usage kept in Redis.
#[derive(Clone)]
pub struct RedisUsage {
    conn: Conn,
    prefix: String,
    retention: Duration,
}

impl RedisBackend {
    /// A usage store over this backend's connection and prefix, keeping
    /// days for `retention`.
    pub fn usage_store(&self, retention: Duration) -> RedisUsage {
        RedisUsage {
            conn: self.conn.clone(),
            prefix: self.prefix.clone(),
            retention,
        }
    }
}

impl RedisUsage {
    fn day_key(&self, tenant: &str, day: Day) -> String {
        format!("{}:usage:{tenant}:{day}", self.prefix)
    }

    fn task_key(&self, tenant: &str, task_id: &str) -> String {
        format!("{}:usage:task:{tenant}:{task_id}", self.prefix)
    }

    fn tenants_key(&self) -> String {
        format!("{}:usage:tenants", self.prefix)
    }
}

fn incr(pipe: &mut redis::Pipeline, key: &str, field: &str, value: FieldValue) {
    match value {
        FieldValue::Int(0) => {}
        FieldValue::Int(n) => {
            pipe.cmd("HINCRBY").arg(key).arg(field).arg(n).ignore();
        }
        FieldValue::Float(x) => {
            if x != 0.0 {
                pipe.cmd("HINCRBYFLOAT").arg(key).arg(field).arg(x).ignore();
            }
        }
    }
}

#[tonic::async_trait]
impl UsageStore for RedisUsage {
    async fn add(
        &self,
        tenant: &str,
        team: &str,
        task_id: &str,
        day: Day,
        usage: &Usage,
    ) -> Result<(), BackendError> {
        let day_key = self.day_key(tenant, day);
        let task_key = self.task_key(tenant, task_id);
        let ttl = self.retention.as_secs().max(1);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (field, value) in usage.fields() {
            incr(&mut pipe, &day_key, &format!("{team}|{field}"), value);
            incr(&mut pipe, &task_key, field, value);
        }
        pipe.cmd("EXPIRE").arg(&day_key).arg(ttl).ignore();
        pipe.cmd("EXPIRE").arg(&task_key).arg(ttl).ignore();
        pipe.cmd("SADD")
            .arg(self.tenants_key())
            .arg(tenant)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn days(
        &self,
        tenants: &[String],
        from: Day,
        to: Day,
    ) -> Result<Vec<DayRow>, BackendError> {
        let mut keys = Vec::new();
        for tenant in tenants {
            for d in from.0..=to.0 {
                keys.push((tenant.clone(), Day(d)));
            }
        }
        let mut rows = Vec::new();
        // A few hundred hashes per round trip.
        for chunk in keys.chunks(256) {
            let mut pipe = redis::pipe();
            for (tenant, day) in chunk {
                pipe.cmd("HGETALL").arg(self.day_key(tenant, *day));
            }
            let hashes: Vec<BTreeMap<String, String>> =
                pipe.query_async(&mut self.conn.clone()).await?;
            for ((tenant, day), hash) in chunk.iter().zip(hashes) {
                let mut teams: BTreeMap<String, Usage> = BTreeMap::new();
                for (field, value) in hash {
                    if let Some((team, name)) = field.rsplit_once('|') {
                        teams
                            .entry(team.to_owned())
                            .or_default()
                            .set_field(name, &value);
                    }
                }
                rows.extend(teams.into_iter().map(|(team, usage)| DayRow {
                    tenant: tenant.clone(),
                    team,
                    day: *day,
                    usage,
                }));
            }
        }
        Ok(rows)
    }

    async fn tenants(&self) -> Result<Vec<String>, BackendError> {
        let mut tenants = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.tenants_key())
                .arg(cursor)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut self.conn.clone())
                .await?;
            tenants.extend(page);
            cursor = next;
            if cursor == 0 || tenants.len() >= MAX_TENANTS {
                break;
            }
        }
        tenants.sort();
        tenants.dedup();
        tenants.truncate(MAX_TENANTS);
        Ok(tenants)
    }

    async fn task(&self, tenant: &str, task_id: &str) -> Result<Option<Usage>, BackendError> {
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.task_key(tenant, task_id))
            .query_async(&mut self.conn.clone())
            .await?;
        if hash.is_empty() {
            return Ok(None);
        }
        let mut usage = Usage::default();
        for (field, value) in hash {
            usage.set_field(&field, &value);
        }
        Ok(Some(usage))
    }
}
