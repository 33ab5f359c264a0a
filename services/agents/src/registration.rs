//! Keeping this worker in the router's registry: register, heartbeat with the
//! current load, register again when the router forgot us, and announce
//! draining on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use amaos_mesh::client::MeshChannel;
use amaos_mesh::retry::Backoff;
use amaos_proto::router::v1 as pb;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use tokio_util::sync::CancellationToken;

/// The longest wait between attempts to register with an unreachable router.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(1);

/// What the worker tells the router about itself.
#[derive(Clone)]
pub struct Announcement {
    /// The worker id (stable for the process).
    pub worker_id: String,
    /// Where it is reached.
    pub address: String,
    /// Teams it serves.
    pub teams: Vec<String>,
    /// Runs it takes at once.
    pub capacity: u32,
}

/// Registers and heartbeats until `shutdown`, then sends a draining heartbeat.
pub async fn keep_registered(
    mut router: RouterServiceClient<MeshChannel>,
    me: Announcement,
    in_flight: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let mut interval = Duration::from_secs(5);
    let mut registered = false;
    loop {
        let result = if registered {
            router
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: me.worker_id.clone(),
                    in_flight: in_flight.load(Ordering::Relaxed),
                    draining: false,
                })
                .await
                .map(|_| ())
        } else {
            router
                .register_worker(pb::RegisterWorkerRequest {
                    worker_id: me.worker_id.clone(),
                    address: me.address.clone(),
                    teams: me.teams.clone(),
                    capabilities: vec!["tools".into(), "memory".into()],
                    capacity: me.capacity,
                    labels: Default::default(),
                    idempotency_key: String::new(),
                })
                .await
                .map(|response| {
                    if let Some(d) = response
                        .into_inner()
                        .heartbeat_interval
                        .as_ref()
                        .and_then(amaos_proto::time::duration)
                    {
                        interval = d.max(Duration::from_millis(50));
                    }
                    tracing::info!(worker_id = %me.worker_id, "registered with the router");
                })
        };
        let wait = match result {
            Ok(()) => {
                registered = true;
                failures = 0;
                interval
            }
            Err(status) => {
                if status.code() == tonic::Code::NotFound {
                    registered = false;
                }
                tracing::warn!(code = ?status.code(), message = status.message(), "router unreachable; retrying");
                // Until the router knows us we are not routable, so keep
                // trying at least once a second; after that, a failed
                // heartbeat waits no longer than the heartbeat interval.
                let cap = if registered {
                    interval
                } else {
                    interval.min(MAX_REGISTER_BACKOFF)
                };
                failures = failures.saturating_add(1);
                Backoff::doubling(Duration::from_millis(200), cap).wait(failures)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if registered {
        let _ = router
            .heartbeat(pb::HeartbeatRequest {
                worker_id: me.worker_id.clone(),
                in_flight: in_flight.load(Ordering::Relaxed),
                draining: true,
            })
            .await;
    }
}
