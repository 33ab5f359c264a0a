//! A connection balancer in front of a service's replicas, as a Kubernetes
//! Service (kube-proxy) is: each new TCP connection goes to the next
//! replica that accepts it, and a replica that refuses is skipped. Calls
//! are balanced per connection, not per request — what a cluster without
//! Linkerd gives, and why `limits.connections_per_service` spreads a
//! caller's calls over several connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A balancer listening on one address, forwarding to replicas; stops when
/// dropped.
pub(super) struct Balancer {
    /// The service it stands for.
    pub(super) service: &'static str,
    /// Connections forwarded to each backend, in the order of `backends`.
    forwarded: Arc<[AtomicUsize]>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Balancer {
    /// Listens on `listen` (a `host:port` free now) and forwards to
    /// `backends` round robin.
    pub(super) async fn start(
        service: &'static str,
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
    ) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("balancer for {service} on {listen}: {e}"))?;
        let backends: Arc<[SocketAddr]> = backends.into();
        let forwarded: Arc<[AtomicUsize]> = backends.iter().map(|_| AtomicUsize::new(0)).collect();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let forwarded = forwarded.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(inbound, backends.clone(), forwarded.clone(), start));
                }
            }
        });
        Ok(Self {
            service,
            forwarded,
            task,
        })
    }

    /// Connections forwarded so far to each replica.
    pub(super) fn forwarded(&self) -> Vec<usize> {
        self.forwarded
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// Joins `inbound` to the first backend from `start` on that accepts a
/// connection; drops it when none does (the caller sees the connection
/// close, as when a Service has no ready endpoint).
async fn forward(
    mut inbound: TcpStream,
    backends: Arc<[SocketAddr]>,
    forwarded: Arc<[AtomicUsize]>,
    start: usize,
) {
    let _ = inbound.set_nodelay(true);
    for i in 0..backends.len() {
        let at = (start + i) % backends.len();
        let connect = TcpStream::connect(backends[at]);
        let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(1), connect).await
        else {
            continue;
        };
        let _ = outbound.set_nodelay(true);
        forwarded[at].fetch_add(1, Ordering::Relaxed);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    }
}
