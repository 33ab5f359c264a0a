//! The router: the registry of agents workers and the choice of which one
//! runs a team. It stays off the data path: the orchestrator calls the chosen
//! worker itself.
//!
//! # Layout
//!
//! - [`registry`]: registration, heartbeats with a TTL, and the routing policy
//!   (power of two choices on load relative to capacity, or rendezvous hashing
//!   on a session key), skipping workers whose breaker is open.
//! - [`breaker`]: circuit breakers per worker and per team.
//! - [`backend`]: the registry as a trait; [`redis_registry`]: its Redis
//!   backend, shared by router replicas.
//! - [`error`]: the router's errors and their mapping to gRPC codes.
//! - this file: the gRPC service and [`serve`].

pub mod backend;
pub mod breaker;
pub mod error;
pub mod redis_registry;
pub mod registry;

use std::sync::Arc;

use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages};
use amaos_proto::router::v1 as pb;
use amaos_proto::router::v1::router_service_server::{RouterService, RouterServiceServer};
use amaos_proto::time::{proto_duration, timestamp};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::backend::WorkerRegistry;
use crate::breaker::State;
use crate::error::RouterError;
use crate::registry::{BreakerPolicy, Registration, Registry, RouteQuery, WorkerView};
use amaos_mesh::config::StoreBackend;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The router's gRPC service.
#[derive(Clone)]
pub struct Router {
    registry: Arc<dyn WorkerRegistry>,
    heartbeat_interval: std::time::Duration,
    ttl: std::time::Duration,
    open_breakers: Family<ScopeLabel, Gauge>,
}

/// The label of the breaker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

impl Router {
    /// A router over `registry`, reporting breakers in `metrics`.
    pub fn new(config: &Config, metrics: &Metrics, registry: Arc<dyn WorkerRegistry>) -> Self {
        let open_breakers = Family::<ScopeLabel, Gauge>::default();
        metrics.register(
            "router_breakers_tripped",
            "circuit breakers open or half-open, by scope (worker, team)",
            open_breakers.clone(),
        );
        Self {
            registry,
            heartbeat_interval: config.router.heartbeat_interval,
            ttl: config.router.worker_ttl,
            open_breakers,
        }
    }
}

/// Opens the configured registry: in-process, or Redis shared by replicas.
pub async fn open_registry(config: &Config) -> Result<Arc<dyn WorkerRegistry>, RouterError> {
    let r = &config.router;
    let policy = BreakerPolicy {
        failures: r.breaker_failures,
        cool_down: r.breaker_cool_down,
    };
    Ok(match r.backend {
        StoreBackend::Memory => {
            Arc::new(Registry::with_breakers(r.worker_ttl, r.max_workers, policy))
        }
        StoreBackend::Redis => Arc::new(
            redis_registry::RedisRegistry::connect(
                &r.redis_url,
                &r.redis_prefix,
                r.worker_ttl,
                r.max_workers,
                policy,
            )
            .await?,
        ),
    })
}

fn breaker_to(state: State) -> pb::BreakerState {
    match state {
        State::Closed => pb::BreakerState::Closed,
        State::Open => pb::BreakerState::Open,
        State::HalfOpen => pb::BreakerState::HalfOpen,
    }
}

fn to_proto(w: WorkerView, breaker: State) -> pb::Worker {
    let state = if w.expired {
        pb::WorkerState::Expired
    } else if w.draining {
        pb::WorkerState::Draining
    } else {
        pb::WorkerState::Live
    };
    let Registration {
        address,
        teams,
        capabilities,
        capacity,
        labels,
    } = w.registration;
    pb::Worker {
        worker_id: w.worker_id,
        address,
        teams,
        capabilities,
        capacity,
        in_flight: w.in_flight,
        state: state as i32,
        breaker: breaker_to(breaker) as i32,
        registered_at: Some(timestamp(w.registered_at)),
        last_heartbeat_at: Some(timestamp(w.last_heartbeat_at)),
        labels,
    }
}

fn check_address(address: &str) -> Result<(), RouterError> {
    let uri: http::Uri = address.parse().map_err(|e| RouterError::InvalidArgument {
        field: "address",
        message: format!("not a URL: {e}"),
    })?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(RouterError::InvalidArgument {
            field: "address",
            message: "must be an http:// or https:// URL".into(),
        }),
    }
}

#[tonic::async_trait]
impl RouterService for Router {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let pb::RouteRequest {
            team,
            inline_spec,
            required_capabilities,
            session_key,
            exclude_worker_ids,
        } = request.into_inner();
        if team.is_empty() {
            return Err(RouterError::InvalidArgument {
                field: "team",
                message: "must not be empty".into(),
            }
            .into());
        }
        let worker = self
            .registry
            .route(&RouteQuery {
                team: &team,
                inline_spec,
                required_capabilities: &required_capabilities,
                session_key: &session_key,
                exclude: &exclude_worker_ids,
            })
            .await?;
        let reason = if session_key.is_empty() {
            "least loaded live worker"
        } else {
            "session affinity"
        };
        let breaker = self
            .registry
            .worker_breakers(std::slice::from_ref(&worker.worker_id))
            .await?
            .pop()
            .unwrap_or(State::Closed);
        Ok(Response::new(pb::RouteResponse {
            worker: Some(to_proto(worker, breaker)),
            reason: reason.into(),
        }))
    }

    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let pb::RegisterWorkerRequest {
            worker_id,
            address,
            teams,
            capabilities,
            capacity,
            labels,
            idempotency_key: _,
        } = request.into_inner();
        check_address(&address)?;
        if teams.is_empty() || teams.len() > 10_000 {
            return Err(RouterError::InvalidArgument {
                field: "teams",
                message: "a worker serves 1 to 10000 teams".into(),
            }
            .into());
        }
        if capacity == 0 {
            return Err(RouterError::InvalidArgument {
                field: "capacity",
                message: "must be at least 1".into(),
            }
            .into());
        }
        let worker_id = self
            .registry
            .register(
                Some(worker_id).filter(|id| !id.is_empty()),
                Registration {
                    address,
                    teams,
                    capabilities,
                    capacity,
                    labels,
                },
            )
            .await?;
        tracing::info!(%worker_id, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id,
            heartbeat_interval: Some(proto_duration(self.heartbeat_interval)),
            ttl: Some(proto_duration(self.ttl)),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let pb::HeartbeatRequest {
            worker_id,
            in_flight,
            draining,
        } = request.into_inner();
        let expires_at = self
            .registry
            .heartbeat(&worker_id, in_flight, draining)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: Some(timestamp(expires_at)),
        }))
    }

    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let pb::ReportOutcomeRequest {
            worker_id,
            team,
            success,
            error,
        } = request.into_inner();
        if worker_id.is_empty() || team.is_empty() {
            return Err(RouterError::InvalidArgument {
                field: "worker_id",
                message: "name the worker and the team".into(),
            }
            .into());
        }
        let (worker, team_state) = self.registry.report(&worker_id, &team, success).await?;
        if worker == State::Open || team_state == State::Open {
            tracing::warn!(%worker_id, %team, %error, ?worker, team_breaker = ?team_state, "circuit breaker open");
        }
        let (workers, teams) = self.registry.tripped().await?;
        self.open_breakers
            .get_or_create(&ScopeLabel { scope: "worker" })
            .set(workers as i64);
        self.open_breakers
            .get_or_create(&ScopeLabel { scope: "team" })
            .set(teams as i64);
        Ok(Response::new(pb::ReportOutcomeResponse {
            worker_breaker: breaker_to(worker) as i32,
            team_breaker: breaker_to(team_state) as i32,
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let pb::ListWorkersRequest {
            team,
            include_expired,
        } = request.into_inner();
        let team = Some(team.as_str()).filter(|t| !t.is_empty());
        let workers = self.registry.list(team, include_expired).await?;
        let ids: Vec<String> = workers.iter().map(|w| w.worker_id.clone()).collect();
        let breakers = self.registry.worker_breakers(&ids).await?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers
                .into_iter()
                .zip(breakers)
                .map(|(w, b)| to_proto(w, b))
                .collect(),
        }))
    }
}

/// The router, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(router: Router, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "router",
        limit_messages!(RouterServiceServer::new(router), limits),
    )
}

/// Serves the router on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let registry = open_registry(&config).await?;
    let service = grpc_service(Router::new(&config, &metrics, registry), &config.limits);
    amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await?;
    Ok(())
}
