//! The router: the registry of agents workers and the choice of which one
//! runs a team. It stays off the data path: the orchestrator calls the chosen
//! worker itself.
//!
//! # Layout
//!
//! - [`registry`]: registration, heartbeats with a TTL, and the routing policy
//!   (power of two choices on load relative to capacity, or rendezvous hashing
//!   on a session key), skipping workers whose breaker is open.
//! - [`breaker`]: circuit breakers per worker and per team
//!   (`amaos_mesh::breaker`'s state machine, keyed and bounded).
//! - [`backend`]: the registry as a trait; [`redis_registry`]: its Redis
//!   backend, shared by router replicas.
//! - [`error`]: the router's errors and their mapping to gRPC codes.
//! - this file: the gRPC service and [`serve`].

pub mod backend;
pub mod breaker;
pub mod error;
pub mod redis_registry;
pub mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::authn::Authenticator;
use amaos_mesh::config::{Cidr, Limits};
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages};
use amaos_mesh::{identity, policy};
use amaos_proto::router::v1 as pb;
use amaos_proto::router::v1::router_service_server::{RouterService, RouterServiceServer};
use amaos_proto::time::{proto_duration, timestamp};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::backend::WorkerRegistry;
use crate::breaker::State;
use crate::error::RouterError;
use crate::registry::{BreakerPolicy, Outcome, Registration, Registry, RouteQuery, WorkerView};
use amaos_mesh::config::StoreBackend;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The router's gRPC service. Every call is authenticated: workers register
/// and heartbeat with the `worker` service identity (only for worker ids
/// they registered), the orchestrator alone routes and reports outcomes, and
/// listing workers takes the orchestrator or a caller allowed to read
/// `workers` (operators and admins).
#[derive(Clone)]
pub struct Router {
    registry: Arc<dyn WorkerRegistry>,
    authn: Arc<Authenticator>,
    /// The RBAC policy listing workers is held to.
    policy: policy::Policy,
    networks: Arc<[Cidr]>,
    max_per_identity: usize,
    heartbeat_interval: std::time::Duration,
    ttl: std::time::Duration,
    open_breakers: Family<ScopeLabel, Gauge>,
    decisions: Family<DecisionLabels, prometheus_client::metrics::counter::Counter>,
    live: Family<TeamLabel, Gauge>,
    metrics: Metrics,
}

/// The label of the breaker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

/// The labels of routing decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DecisionLabels {
    team: String,
    outcome: &'static str,
}

/// The label of the live-worker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TeamLabel {
    team: String,
}

/// How often the live-worker and breaker gauges are measured.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

impl Router {
    /// A router over `registry`, authenticating callers with `authn` and
    /// authorizing them by `policy`, reporting breakers in `metrics`.
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        registry: Arc<dyn WorkerRegistry>,
        authn: Arc<Authenticator>,
        policy: policy::Policy,
    ) -> Self {
        let open_breakers = Family::<ScopeLabel, Gauge>::default();
        metrics.register(
            "router_breakers_tripped",
            "circuit breakers open or half-open, by scope (worker, team)",
            open_breakers.clone(),
        );
        let decisions = Family::default();
        metrics.register(
            "router_decisions",
            "Route calls by team and outcome (routed, no_worker, error)",
            decisions.clone(),
        );
        let live = Family::default();
        metrics.register(
            "router_live_workers",
            "live workers not draining, by team they serve (measured every 5 s)",
            live.clone(),
        );
        Self {
            registry,
            authn,
            policy,
            // Validated with the config.
            networks: config
                .router
                .worker_networks
                .iter()
                .filter_map(|n| Cidr::parse(n))
                .collect(),
            max_per_identity: config.router.max_workers_per_identity,
            heartbeat_interval: config.router.heartbeat_interval,
            ttl: config.router.worker_ttl,
            open_breakers,
            decisions,
            live,
            metrics: metrics.clone(),
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
        owner: _,
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

/// Checks that `address` is an http(s) URL whose host resolves only to
/// addresses inside `networks`: the orchestrator sends task input and run
/// tokens there.
async fn check_address(address: &str, networks: &[Cidr]) -> Result<(), RouterError> {
    if address.len() > 2048 {
        return Err(RouterError::InvalidArgument {
            field: "address",
            message: "must be at most 2048 bytes".into(),
        });
    }
    let uri: http::Uri = address.parse().map_err(|e| RouterError::InvalidArgument {
        field: "address",
        message: format!("not a URL: {e}"),
    })?;
    let (Some(scheme @ ("http" | "https")), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(RouterError::InvalidArgument {
            field: "address",
            message: "must be an http:// or https:// URL".into(),
        });
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ips: Vec<std::net::IpAddr> = match host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default(),
    };
    if ips.is_empty() {
        return Err(RouterError::AddressNotAllowed(format!(
            "`{host}` does not resolve"
        )));
    }
    match ips
        .iter()
        .find(|ip| !networks.iter().any(|n| n.contains(**ip)))
    {
        Some(outside) => Err(RouterError::AddressNotAllowed(format!(
            "{outside} is outside the networks workers may register in (router.worker_networks)"
        ))),
        None => Ok(()),
    }
}

impl Router {
    /// Sets the breaker gauge from the registry.
    async fn measure_breakers(&self) -> Result<(), RouterError> {
        let (workers, teams) = self.registry.tripped().await?;
        self.open_breakers
            .get_or_create(&ScopeLabel { scope: "worker" })
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        self.open_breakers
            .get_or_create(&ScopeLabel { scope: "team" })
            .set(i64::try_from(teams).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Measures live workers per team and the breakers every
    /// [`GAUGES_EVERY`] until `shutdown` (breakers close with time, not only
    /// on reports). A team no longer served drops to 0.
    async fn measure(self, shutdown: CancellationToken) {
        let mut teams_seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            match self.registry.list(None, false).await {
                Ok(workers) => {
                    let mut live: HashMap<String, i64> = HashMap::new();
                    for worker in workers.iter().filter(|w| !w.expired && !w.draining) {
                        for team in &worker.registration.teams {
                            *live.entry(self.metrics.team(team)).or_default() += 1;
                        }
                    }
                    for team in teams_seen.iter() {
                        if !live.contains_key(team) {
                            self.live
                                .get_or_create(&TeamLabel { team: team.clone() })
                                .set(0);
                        }
                    }
                    for (team, count) in live {
                        self.live
                            .get_or_create(&TeamLabel { team: team.clone() })
                            .set(count);
                        teams_seen.insert(team);
                    }
                }
                Err(error) => tracing::debug!(%error, "measuring live workers failed"),
            }
            if let Err(error) = self.measure_breakers().await {
                tracing::debug!(%error, "measuring breakers failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(GAUGES_EVERY) => {}
            }
        }
    }
}

#[tonic::async_trait]
impl RouterService for Router {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        identity::require_service(
            self.authn.verifier(),
            request.metadata(),
            identity::ORCHESTRATOR,
        )
        .await?;
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
        let routed = self
            .registry
            .route(&RouteQuery {
                team: &team,
                inline_spec,
                required_capabilities: &required_capabilities,
                session_key: &session_key,
                exclude: &exclude_worker_ids,
            })
            .await;
        let outcome = match &routed {
            Ok(_) => "routed",
            Err(RouterError::NoLiveWorker(_)) => "no_worker",
            Err(_) => "error",
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                team: self.metrics.team(&team),
                outcome,
            })
            .inc();
        let worker = routed?;
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
        let me =
            identity::require_service(self.authn.verifier(), request.metadata(), identity::WORKER)
                .await?;
        let pb::RegisterWorkerRequest {
            worker_id,
            address,
            teams,
            capabilities,
            capacity,
            labels,
            idempotency_key: _,
        } = request.into_inner();
        check_address(&address, &self.networks).await?;
        if worker_id.len() > 128 {
            return Err(RouterError::InvalidArgument {
                field: "worker_id",
                message: "must be at most 128 bytes".into(),
            }
            .into());
        }
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
        let owned = self
            .registry
            .list(None, true)
            .await?
            .into_iter()
            .filter(|w| {
                w.registration.owner == me.principal
                    && w.worker_id != worker_id
                    && w.registration.address != address
            })
            .count();
        if owned >= self.max_per_identity {
            return Err(RouterError::IdentityFull(self.max_per_identity).into());
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
                    owner: me.principal.clone(),
                },
            )
            .await?;
        tracing::info!(%worker_id, owner = %me.principal, "worker registered");
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
        let me =
            identity::require_service(self.authn.verifier(), request.metadata(), identity::WORKER)
                .await?;
        let pb::HeartbeatRequest {
            worker_id,
            in_flight,
            draining,
        } = request.into_inner();
        let expires_at = self
            .registry
            .heartbeat(&worker_id, &me.principal, in_flight, draining)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: Some(timestamp(expires_at)),
        }))
    }

    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        identity::require_service(
            self.authn.verifier(),
            request.metadata(),
            identity::ORCHESTRATOR,
        )
        .await?;
        let pb::ReportOutcomeRequest {
            worker_id,
            team,
            success,
            error,
            scope,
        } = request.into_inner();
        let outcome = match (success, pb::FailureScope::try_from(scope)) {
            (true, _) => Outcome::Success,
            (false, Ok(pb::FailureScope::Team)) => Outcome::TeamFailure,
            (false, Ok(pb::FailureScope::Unreachable)) => Outcome::Unreachable,
            (false, Ok(pb::FailureScope::Worker | pb::FailureScope::Unspecified) | Err(_)) => {
                Outcome::WorkerFailure
            }
        };
        if worker_id.is_empty() || team.is_empty() {
            return Err(RouterError::InvalidArgument {
                field: "worker_id",
                message: "name the worker and the team".into(),
            }
            .into());
        }
        let (worker, team_state) = self.registry.report(&worker_id, &team, outcome).await?;
        if worker == State::Open || team_state == State::Open {
            tracing::warn!(%worker_id, %team, %error, ?worker, team_breaker = ?team_state, "circuit breaker open");
        }
        self.measure_breakers().await?;
        Ok(Response::new(pb::ReportOutcomeResponse {
            worker_breaker: breaker_to(worker) as i32,
            team_breaker: breaker_to(team_state) as i32,
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.may_list(request.metadata()).await?;
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

impl Router {
    /// Workers' addresses and load are for the orchestrator and operators.
    async fn may_list(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if metadata.contains_key(identity::SERVICE_HEADER) {
            identity::require_service(self.authn.verifier(), metadata, identity::ORCHESTRATOR)
                .await?;
            return Ok(());
        }
        let caller = self.authn.caller(metadata).await?;
        match self.policy.allows(
            &caller.principal,
            &caller.roles,
            &caller.tenant,
            "workers",
            "read",
        ) {
            Some(_) => Ok(()),
            None => Err(Status::permission_denied(format!(
                "roles [{}] may not list workers; operators and admins may",
                caller.roles.join(", ")
            ))),
        }
    }
}

/// The router, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(router: Router, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "router",
        limit_messages!(RouterServiceServer::new(router), limits),
    )
}

/// Serves the router on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: policy::Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let registry = open_registry(&config).await?;
    let dialer = amaos_mesh::client::Dialer::new(&config, "router")?;
    let authn = Arc::new(Authenticator::from_auth(
        &dialer,
        &config.auth.url,
        config.auth.key_cache_ttl,
    )?);
    let router = Router::new(&config, &metrics, registry, authn, policy);
    tokio::spawn(router.clone().measure(shutdown.clone()));
    let service = grpc_service(router, &config.limits);
    amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await?;
    Ok(())
}
