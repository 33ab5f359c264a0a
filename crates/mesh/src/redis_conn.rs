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

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one command may take before the call fails.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `url` and a managed connection to it.
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), String> {
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
    Ok((client, conn))
}
