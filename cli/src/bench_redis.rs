//! What a benchmark run cost the Redis server: commands by name and the
//! server's CPU time, read from `INFO` before and after the run. The figures
//! are the whole server's, so a run on a Redis that others use at the same
//! time counts their work too.

use std::collections::BTreeMap;

/// The server's counters at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerStats {
    /// Calls per command name (commands run by scripts included).
    calls: BTreeMap<String, u64>,
    /// The server's user and system CPU seconds.
    cpu_seconds: f64,
}

/// What the server did between two readings, per finished task.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServerCost {
    /// Commands the server ran, scripts' own calls included.
    pub commands_per_task: f64,
    /// The server's CPU time, ms.
    pub cpu_ms_per_task: f64,
    /// The most called commands, lowercase, with calls per task.
    pub top: Vec<(String, f64)>,
}

impl ServerStats {
    /// Reads the counters of the server at `url`.
    pub(crate) async fn read(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let commands: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        Ok(Self::parse(&commands, &cpu))
    }

    fn parse(commandstats: &str, cpu: &str) -> Self {
        let calls = commandstats
            .lines()
            .filter_map(|line| {
                let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect();
        let field = |key: &str| {
            cpu.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            calls,
            cpu_seconds: field("used_cpu_sys") + field("used_cpu_user"),
        }
    }

    /// What the server did from `before` to `self`, per one of `tasks`.
    pub(crate) fn since(&self, before: &Self, tasks: u64) -> ServerCost {
        let per = |n: f64| n / tasks.max(1) as f64;
        let mut top: Vec<(String, f64)> = self
            .calls
            .iter()
            .map(|(name, &after)| {
                let then = before.calls.get(name).copied().unwrap_or(0);
                (name.clone(), per(after.saturating_sub(then) as f64))
            })
            // The readings' own INFO calls are not the run's.
            .filter(|(name, n)| *n > 0.0 && name != "info")
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let commands_per_task = top.iter().map(|(_, n)| n).sum();
        top.truncate(8);
        ServerCost {
            commands_per_task,
            cpu_ms_per_task: per(1000.0 * (self.cpu_seconds - before.cpu_seconds).max(0.0)),
            top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_and_differenced_per_task() {
        let before = ServerStats::parse(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00\r\ncmdstat_info:calls=3,usec=1\r\n",
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.5\r\n",
        );
        let after = ServerStats::parse(
            "cmdstat_evalsha:calls=30,usec=90\r\ncmdstat_xadd:calls=40,usec=9\r\ncmdstat_info:calls=9,usec=1\r\n",
            "used_cpu_sys:2.0\r\nused_cpu_user:3.0\r\n",
        );
        let cost = after.since(&before, 10);
        assert_eq!(cost.commands_per_task, 6.0);
        assert!((cost.cpu_ms_per_task - 100.0).abs() < 1e-9, "{cost:?}");
        assert_eq!(
            cost.top,
            vec![("xadd".to_string(), 4.0), ("evalsha".to_string(), 2.0)]
        );
    }
}
