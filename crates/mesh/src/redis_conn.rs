//! The one way a backend connects to Redis: a multiplexed, reconnecting
//! connection whose answers may take up to [`RESPONSE_TIMEOUT`].
//!
//! The client's own default gives up on an answer after half a second. On a
//! loaded machine (Redis sharing cores with the services, a burst of
//! scripts) answers take longer than that without anything being wrong, and
//! every backend turned that into a failure: a tool call's journal
//! reservation, a task's state change, a registry read. Long blocking reads
//! use connections of their own without a response timeout.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A backend's connection: managed, and counted in the process's
/// `redis_round_trips` and `redis_commands` metrics.
pub type Conn = Counted<ConnectionManager>;

/// A connection whose round trips and commands are counted
/// ([`crate::metrics::redis_sent`]), so the benchmark and the dashboards can
/// say what a task costs in Redis traffic.
#[derive(Clone)]
pub struct Counted<C>(C);

impl<C> Counted<C> {
    /// Counts what goes through `conn`.
    pub fn new(conn: C) -> Self {
        Self(conn)
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for Counted<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        crate::metrics::redis_sent(1);
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // A transaction is MULTI, the commands and EXEC: count what Redis runs.
        crate::metrics::redis_sent(pipeline.len() as u64);
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// How long one command may take before the call fails.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `url` and a managed connection to it.
pub async fn connect(url: &str) -> Result<(redis::Client, Conn), String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| format!("no answer from {url} within {}s", CONNECT_TIMEOUT.as_secs()))?
    .map_err(|e| format!("{url}: {e}"))?;
    Ok((client, Counted(conn)))
}
