//! `amaos up`: all six services and the REST gateway in one process, each
//! on its own loopback listener, talking real gRPC to each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use amaos_mesh::config::{Config, EmbedderBackend};
use amaos_mesh::metrics::{self, Metrics};
use amaos_mesh::{BoxError, client};
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The services, in start order; the REST gateway last, in front of them.
pub const SERVICES: [&str; 7] = [
    "auth",
    "router",
    "memory",
    "tools",
    "agents",
    "orchestrator",
    "gateway",
];

/// A running mesh.
pub struct Mesh {
    /// The config the services run with (URLs point at the bound listeners).
    pub config: Config,
    /// `(service, gRPC address, admin address)`, in start order.
    pub addresses: Vec<(&'static str, SocketAddr, Option<SocketAddr>)>,
    /// Where the first admin key was written, when this start created it.
    pub bootstrap_key_file: Option<PathBuf>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), BoxError>>)>,
}

fn url_of(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    match addr {
        SocketAddr::V6(_) if !addr.ip().is_unspecified() => {
            format!("http://[{host}]:{}", addr.port())
        }
        _ => format!("http://{host}:{}", addr.port()),
    }
}

async fn bind(service: &str, addr: SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{service}: cannot listen on {addr}: {e}").into())
}

/// What the mesh needs on this machine besides its config, checked before
/// anything binds or starts: the embedding model (when memory embeds with
/// it) and the sandbox helper (unless `tools.allow_no_sandbox`). A missing
/// piece is named with the command that provides it.
pub fn preflight(config: &Config) -> Result<(), BoxError> {
    if config.memory.embedder == EmbedderBackend::Minilm {
        amaos_memory::embed::check_model(&config.memory.model_dir(&config.data_dir))?;
    }
    if !config.tools.allow_no_sandbox {
        amaos_tools::sandbox_helper(&config.tools)?;
    }
    Ok(())
}

impl Mesh {
    /// Checks what the mesh needs ([`preflight`]), binds every listener,
    /// opens the auth store, starts every service and waits until an agents
    /// worker is registered with the router.
    pub async fn start(mut config: Config, shutdown: CancellationToken) -> Result<Self, BoxError> {
        preflight(&config)?;
        amaos_mesh::install_crypto_provider();
        // Every trail writer of the mesh keys and anchors as configured.
        amaos_mesh::audit::configure(&config);
        // One policy for the mesh's services, its own: another mesh in this
        // process has another.
        let policy = amaos_mesh::policy::Policy::load(
            config.auth.rbac_model.clone(),
            config.auth.rbac_policy.clone(),
            std::time::Duration::from_secs(2),
            Some(config.audit_file()),
            shutdown.clone(),
        )
        .map_err(|e| format!("config key `auth.rbac_policy`: {e}"))?;
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for service in SERVICES {
            let (listen, admin) = match service {
                "auth" => (config.auth.listen, config.auth.admin_listen),
                "router" => (config.router.listen, config.router.admin_listen),
                "memory" => (config.memory.listen, config.memory.admin_listen),
                "tools" => (config.tools.listen, config.tools.admin_listen),
                "agents" => (config.agents.listen, config.agents.admin_listen),
                "gateway" => (config.gateway.listen, config.gateway.admin_listen),
                _ => (config.orchestrator.listen, config.orchestrator.admin_listen),
            };
            let listener = bind(service, listen).await?;
            let local = listener.local_addr()?;
            let admin_listener = match admin {
                Some(addr) => Some(bind(&format!("{service} admin"), addr).await?),
                None => None,
            };
            let admin_local = admin_listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?;
            let url = url_of(local);
            match service {
                "auth" => config.auth.url = url,
                "router" => config.router.url = url,
                "memory" => config.memory.url = url,
                "tools" => config.tools.url = url,
                "agents" => config.agents.url = url,
                "gateway" => config.gateway.url = url,
                _ => config.orchestrator.url = url,
            }
            addresses.push((service, local, admin_local));
            listeners.push((service, listener, admin_listener));
        }

        let opened = amaos_auth::open(&config, policy.clone()).await?;
        let mut tasks = Vec::new();
        for (service, listener, admin_listener) in listeners {
            let metrics = Metrics::with_telemetry(service, &config.telemetry);
            if let Some(admin_listener) = admin_listener {
                tokio::spawn(metrics::serve_admin(
                    admin_listener,
                    metrics.clone(),
                    shutdown.clone(),
                ));
            }
            let c = config.clone();
            let stop = shutdown.clone();
            let handle = match service {
                "auth" => {
                    let state = opened.state.clone();
                    tokio::spawn(async move {
                        amaos_auth::serve_state(state, &c, listener, metrics, stop).await
                    })
                }
                "router" => tokio::spawn(amaos_router::serve(
                    c,
                    policy.clone(),
                    listener,
                    metrics,
                    stop,
                )),
                "memory" => tokio::spawn(amaos_memory::serve(
                    c,
                    policy.clone(),
                    listener,
                    metrics,
                    stop,
                )),
                "tools" => tokio::spawn(amaos_tools::serve(
                    c,
                    policy.clone(),
                    listener,
                    metrics,
                    stop,
                )),
                "agents" => tokio::spawn(amaos_agents::serve(c, listener, metrics, stop)),
                "gateway" => tokio::spawn(amaos_gateway::serve(c, listener, metrics, stop)),
                _ => tokio::spawn(amaos_orchestrator::serve(
                    c,
                    policy.clone(),
                    listener,
                    metrics,
                    stop,
                )),
            };
            tasks.push((service, handle));
        }
        let mut mesh = Self {
            config,
            addresses,
            bootstrap_key_file: opened.bootstrap_key_file,
            tasks,
        };
        mesh.wait_for_worker(Duration::from_secs(15)).await?;
        Ok(mesh)
    }

    /// Waits until the router lists a live agents worker.
    async fn wait_for_worker(&mut self, limit: Duration) -> Result<(), BoxError> {
        let mut router = RouterServiceClient::new(
            client::Dialer::new(&self.config, "cli")?.channel("router", &self.config.router.url)?,
        );
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.tasks.iter().position(|(_, t)| t.is_finished()) {
                // Say why: the service's own error, not only that it stopped.
                let (service, task) = self.tasks.swap_remove(i);
                let reason = match task.await {
                    Ok(Ok(())) => "it stopped without an error".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => format!("it panicked: {error}"),
                };
                return Err(
                    format!("{service} stopped while the mesh was starting: {reason}").into(),
                );
            }
            // Listing workers is for operators: ask with the local admin key.
            let mut request = tonic::Request::new(router::ListWorkersRequest {
                team: String::new(),
                include_expired: false,
            });
            if let Ok(key) = std::fs::read_to_string(self.config.data_dir.join("admin.key")) {
                let _ = amaos_mesh::caller::set_bearer(request.metadata_mut(), key.trim());
            }
            let listed = router.list_workers(request).await;
            if listed.is_ok_and(|r| !r.into_inner().workers.is_empty()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("no agents worker registered with the router in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for every service to stop; the first error wins. A service that
    /// stops on its own takes the others down with it.
    pub async fn wait(self, shutdown: CancellationToken) -> Result<(), BoxError> {
        let waits = self.tasks.into_iter().map(|(service, task)| {
            let shutdown = shutdown.clone();
            async move {
                let result = match task.await {
                    Ok(result) => result,
                    Err(join) => Err(format!("panicked: {join}").into()),
                };
                if !shutdown.is_cancelled() {
                    tracing::error!(service, "stopped unexpectedly; stopping the mesh");
                    shutdown.cancel();
                }
                (service, result)
            }
        });
        let mut first = None;
        for (service, result) in futures::future::join_all(waits).await {
            if let Err(error) = result {
                tracing::error!(service, %error, "service stopped with an error");
                first.get_or_insert_with(|| format!("{service}: {error}"));
            }
        }
        match first {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}
