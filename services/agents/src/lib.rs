//! The agents service: a worker that runs teams of LLM agents, one run per
//! RunTeam call, streamed as run events.
//!
//! # Layout
//!
//! - [`catalog`]: teams served by name, loaded from `agents.teams_dir`.
//! - [`provider`]: what every model speaks — messages, tool calls, replies,
//!   usage, errors, the [`ChatModel`](provider::ChatModel) trait. A leaf.
//! - `http`: what the HTTP providers share (an alias's
//!   `amaos_mesh::api_client` client — API keys, retries, bounded bodies —,
//!   server-sent events, costs); built on `provider`.
//! - [`openai`]: OpenAI-compatible Chat Completions; [`anthropic`]:
//!   Anthropic Messages. Built on `http` and `provider`.
//! - [`model`]: the router above the providers: the `replay` scripted model,
//!   the configured aliases with their fallback chains and breakers.
//! - [`engine`]: runs a team — crews, group chats, hybrids, the judge — with
//!   its calls to models, tools and memory (`engine/` holds one module per
//!   concern).
//! - [`graph`]: a team's shape as nodes and edges, for `TeamSummary.graph`.
//! - [`registration`]: registering and heartbeating with the router.
//! - [`remote`]: remote agents of other systems over A2A (`kind: a2a`).
//! - this file: the gRPC service, its errors and their mapping, [`serve`].
//!
//! The modules import each other without a cycle: `provider` ← `http` ←
//! `openai`, `anthropic` ← `model` ← this file; `engine` uses `provider`.

pub mod anthropic;
pub mod catalog;
pub mod engine;
pub mod graph;
mod http;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod provider;
pub mod registration;
pub mod remote;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use amaos_mesh::authn::Authenticator;
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::Limits;
use amaos_mesh::identity;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages, status};
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::agents_service_server::{AgentsService, AgentsServiceServer};
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use amaos_teams::{SpecErrors, TeamSpec};
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::engine::{Emitter, RunError, RunInput, Services};
use crate::model::{ModelSet, RunModels};

/// Events buffered per run before the engine waits for the caller.
/// Most approval decisions a run carries (the orchestrator keeps as many per task).
const MAX_APPROVALS: usize = 64;
const EVENT_BUFFER: usize = 64;

/// What can go wrong in the agents service before a run starts.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The team spec is invalid.
    #[error("{field}: {errors}")]
    InvalidSpec {
        /// The request field holding the spec.
        field: &'static str,
        /// Every problem, with lines.
        errors: SpecErrors,
    },
    /// No team of that name is served here.
    #[error("team `{0}` is not served by this worker")]
    UnknownTeam(String),
    /// The worker is running as many teams as it takes.
    #[error("this worker is running its capacity of {0} runs; retry on another worker or later")]
    AtCapacity(u32),
}

impl From<AgentsError> for Status {
    fn from(error: AgentsError) -> Self {
        let message = error.to_string();
        match error {
            AgentsError::InvalidArgument { field, message } => {
                status::invalid_field(field, message)
            }
            AgentsError::InvalidSpec { field, errors } => status::invalid_fields(
                message,
                errors
                    .0
                    .iter()
                    .map(|e| (e.path_within(field), e.to_string()))
                    .collect(),
            ),
            AgentsError::UnknownTeam(_) => Status::not_found(message),
            AgentsError::AtCapacity(_) => Status::resource_exhausted(message),
        }
    }
}

/// Parses an inline spec, enforcing the size limit.
pub fn parse_spec(
    yaml: &str,
    field: &'static str,
    max_bytes: usize,
) -> Result<TeamSpec, AgentsError> {
    if yaml.len() > max_bytes {
        return Err(AgentsError::InvalidArgument {
            field,
            message: format!("the spec is {} bytes; the limit is {max_bytes}", yaml.len()),
        });
    }
    amaos_teams::parse(yaml).map_err(|errors| AgentsError::InvalidSpec { field, errors })
}

/// The agents service.
#[derive(Clone)]
pub struct Agents {
    authn: Arc<Authenticator>,
    models: Arc<ModelSet>,
    metrics: metrics::AgentMetrics,
    catalog: Catalog,
    services: Services,
    permits: Arc<Semaphore>,
    capacity: u32,
    in_flight: Arc<AtomicU32>,
    max_steps: u32,
    max_spec_bytes: usize,
}

impl Agents {
    /// An agents service serving `catalog`, calling tools and memory as
    /// configured through `dialer`, with model API keys from `secrets`.
    pub fn new(
        config: &Config,
        dialer: &client::Dialer,
        catalog: Catalog,
        secrets: Arc<dyn amaos_mesh::secrets::SecretStore>,
        metrics: &Metrics,
    ) -> Result<Self, BoxError> {
        let agent_metrics = metrics::AgentMetrics::register(metrics);
        let tools = dialer.channel("tools", &config.tools.url)?;
        let memory = dialer.channel("memory", &config.memory.url)?;
        Ok(Self {
            authn: Arc::new(Authenticator::from_auth(
                dialer,
                &config.auth.url,
                config.auth.key_cache_ttl,
            )?),
            models: Arc::new(
                ModelSet::with_secrets(&config.models, Some(secrets.clone()))?
                    .with_metrics(agent_metrics.clone()),
            ),
            metrics: agent_metrics,
            catalog,
            services: Services {
                tools: ToolsServiceClient::new(tools),
                memory: MemoryServiceClient::new(memory),
                remotes: Arc::new(remote::Remotes::new(
                    &config.agents.a2a_remotes,
                    Some(&secrets),
                    config.limits.max_message_bytes,
                )?),
            },
            permits: Arc::new(Semaphore::new(config.agents.capacity as usize)),
            capacity: config.agents.capacity,
            in_flight: Arc::new(AtomicU32::new(0)),
            max_steps: config.agents.max_steps,
            max_spec_bytes: config.agents.max_spec_bytes,
        })
    }

    /// Runs in flight now.
    pub fn in_flight(&self) -> Arc<AtomicU32> {
        self.in_flight.clone()
    }
}

fn summary(spec: &TeamSpec) -> pb::TeamSummary {
    pb::TeamSummary {
        name: spec.name.clone(),
        description: spec.description.clone(),
        kind: spec.kind().into(),
        agents: spec.agents.iter().map(|a| a.name.clone()).collect(),
        graph: Some(graph::team_graph(spec)),
    }
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::RunTeamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentsService for Agents {
    type RunTeamStream = EventStream;

    async fn run_team(
        &self,
        request: Request<pb::RunTeamRequest>,
    ) -> Result<Response<Self::RunTeamStream>, Status> {
        // Only the orchestrator starts runs (after its submit checks, audit,
        // rate limits and capacity accounting), and only with the run token
        // it obtained for this very task and attempt.
        identity::require_service(
            self.authn.verifier(),
            request.metadata(),
            identity::ORCHESTRATOR,
        )
        .await?;
        let caller = self.authn.caller(request.metadata()).await?;
        let pb::RunTeamRequest {
            run_id,
            attempt,
            team,
            input,
            session_id,
            context,
            budget,
            model_alias_override,
            approvals,
        } = request.into_inner();
        if approvals.len() > MAX_APPROVALS {
            return Err(AgentsError::InvalidArgument {
                field: "approvals",
                message: format!("at most {MAX_APPROVALS} decisions"),
            }
            .into());
        }
        if run_id.is_empty() || run_id.len() > 128 {
            return Err(AgentsError::InvalidArgument {
                field: "run_id",
                message: "must be 1 to 128 characters".into(),
            }
            .into());
        }
        let scoped = caller
            .task
            .as_ref()
            .is_some_and(|run| run.task == run_id && run.attempt == attempt);
        if !scoped || !caller.has_role("agent") {
            return Err(Status::permission_denied(format!(
                "RunTeam needs the run token of task `{run_id}` attempt {attempt}"
            )));
        }
        if !model_alias_override.is_empty() && !self.models.knows(&model_alias_override) {
            return Err(AgentsError::InvalidArgument {
                field: "model_alias_override",
                message: format!("unknown model alias `{model_alias_override}`"),
            }
            .into());
        }
        let spec = match team {
            Some(pb::run_team_request::Team::TeamName(name)) => self
                .catalog
                .get(&name)
                .ok_or(AgentsError::UnknownTeam(name))?,
            Some(pb::run_team_request::Team::TeamSpecYaml(yaml)) => {
                let max = self.max_spec_bytes;
                let spec =
                    tokio::task::spawn_blocking(move || parse_spec(&yaml, "team_spec_yaml", max))
                        .await
                        .map_err(|_| Status::internal("the spec parser stopped"))??;
                Arc::new(spec)
            }
            None => {
                return Err(AgentsError::InvalidArgument {
                    field: "team",
                    message: "name a team or send a spec".into(),
                }
                .into());
            }
        };
        if model_alias_override.is_empty()
            && let Some((i, agent)) = spec
                .agents
                .iter()
                .enumerate()
                .find(|(_, a)| !self.models.knows(&a.model))
        {
            return Err(AgentsError::InvalidArgument {
                    field: "team",
                    message: format!(
                        "agents[{i}] (`{}`) uses model alias `{}`, which this worker does not have; configure [models.{}]",
                        agent.name, agent.model, agent.model
                    ),
                }
                .into());
        }
        if let Some(why) = spec.input.refuses(&input) {
            return Err(AgentsError::InvalidArgument {
                field: "input",
                message: why.into(),
            }
            .into());
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| AgentsError::AtCapacity(self.capacity))?;
        let budget = budget.unwrap_or_default();
        let run = RunInput {
            model_override: Some(model_alias_override).filter(|m| !m.is_empty()),
            tenant: caller.tenant.clone(),
            caller,
            run_id,
            attempt: attempt.max(1),
            input,
            session_id,
            context: context.into_iter().map(|c| (c.source, c.text)).collect(),
            max_steps: if budget.max_steps == 0 {
                self.max_steps
            } else {
                budget.max_steps.min(self.max_steps)
            },
            max_tokens: (budget.max_tokens > 0).then_some(budget.max_tokens),
            max_wall_time: budget
                .max_wall_time
                .as_ref()
                .and_then(amaos_proto::time::duration)
                .filter(|d| !d.is_zero())
                .into_iter()
                .chain(spec.budget.max_wall_time)
                .min(),
            approvals: approvals
                .into_iter()
                .map(|d| (d.call_id.clone(), d))
                .collect(),
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let services = self.services.clone();
        let models = self.models.clone();
        let in_flight = self.in_flight.clone();
        let agent_metrics = self.metrics.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        // The run goes on in a task of its own, under this RPC's span.
        let parent = tracing::Span::current();
        tokio::spawn(async move {
            let _permit = permit;
            let mut events = Emitter::new(tx, &run.run_id, run.attempt)
                .counting(agent_metrics.clone(), &run.tenant);
            let model = RunModels::new(&run.input, models, run.model_override.clone());
            let (task_id, attempt) = run
                .caller
                .task
                .as_ref()
                .map(|t| (t.task.clone(), t.attempt))
                .unwrap_or_default();
            let span = tracing::info_span!(
                parent: &parent,
                "run_team",
                otel.name = %format!("run_team {}", spec.name),
                amaos.team.name = %spec.name,
                amaos.team.kind = spec.kind(),
                amaos.task.id = %task_id,
                amaos.task.attempt = attempt,
                amaos.run.id = %run.run_id,
            );
            let work = tracing::Instrument::instrument(
                engine::run_team(&spec, &run, &model, &services, &mut events),
                span,
            );
            let result = match run.max_wall_time {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(RunError::Budget(format!(
                        "the run took longer than its {}",
                        humantime_like(limit)
                    )))
                }),
                None => work.await,
            };
            agent_metrics.run_ended(spec.kind(), &result);
            let end = match result {
                Ok(output) => Some(Payload::RunCompleted(pb::RunCompleted { output })),
                Err(RunError::Cancelled) => None,
                Err(RunError::InputRequired { agent, asked }) => {
                    tracing::info!(run_id = %run.run_id, tool = %asked.tool, "run waits for an approval");
                    let _ = events
                        .emit(&agent, Payload::ApprovalRequested(*asked))
                        .await;
                    None
                }
                Err(error) => {
                    tracing::info!(run_id = %run.run_id, %error, "run failed");
                    Some(Payload::RunFailed(pb::RunFailed {
                        reason: error.to_string(),
                        class: error.class().into(),
                    }))
                }
            };
            if let Some(payload) = end {
                let _ = events.emit("", payload).await;
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        let stream =
            ReceiverStream::new(rx).map(|event| Ok(pb::RunTeamResponse { event: Some(event) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_teams(
        &self,
        request: Request<pb::ListTeamsRequest>,
    ) -> Result<Response<pb::ListTeamsResponse>, Status> {
        self.authn.caller(request.metadata()).await?;
        Ok(Response::new(pb::ListTeamsResponse {
            teams: self.catalog.all().map(|s| summary(s)).collect(),
        }))
    }

    async fn validate_team(
        &self,
        request: Request<pb::ValidateTeamRequest>,
    ) -> Result<Response<pb::ValidateTeamResponse>, Status> {
        self.authn.caller(request.metadata()).await?;
        let pb::ValidateTeamRequest { spec_yaml } = request.into_inner();
        let max = self.max_spec_bytes;
        // Parsing is CPU work bounded by the spec's size and nesting: off the
        // async threads.
        let spec = tokio::task::spawn_blocking(move || parse_spec(&spec_yaml, "spec_yaml", max))
            .await
            .map_err(|_| Status::internal("the spec parser stopped"))??;
        Ok(Response::new(pb::ValidateTeamResponse {
            team: Some(summary(&spec)),
        }))
    }
}

fn humantime_like(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The agents service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(agents: Agents, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "agents",
        limit_messages!(AgentsServiceServer::new(agents), limits),
    )
}

/// Serves an agents worker on `listener` until `shutdown`, registered with the
/// router at `agents.url` for the catalog's teams and inline specs.
pub async fn serve(
    config: Config,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let catalog = Catalog::load(&config.agents.teams_dir, config.agents.max_spec_bytes)?;
    let secrets = amaos_mesh::secrets::open_audited(&config, "agents").await?;
    // Certificates are read once, for every channel this worker opens; every
    // call proves the worker's own identity too.
    let dialer = client::Dialer::new(&config, "agents")?
        .for_service(&config.auth.url, config.worker_key_file())?;
    let agents = Agents::new(&config, &dialer, catalog.clone(), secrets, &metrics)?;
    let router: RouterServiceClient<MeshChannel> =
        RouterServiceClient::new(dialer.channel("router", &config.router.url)?);
    // Bound before the worker announces itself: the router must never route
    // to an address nothing listens on yet (the orchestrator would find it
    // unreachable and trip its breaker).
    let listener = listener.into().bind().await?;
    let mut teams = catalog.names();
    teams.push("*".into());
    let announcement = registration::Announcement {
        worker_id: amaos_mesh::new_id(),
        address: config.agents.url.clone(),
        teams,
        capacity: config.agents.capacity,
    };
    let heartbeats = tokio::spawn(registration::keep_registered(
        router,
        announcement,
        agents.in_flight(),
        shutdown.clone(),
    ));
    let service = grpc_service(agents, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await;
    let _ = heartbeats.await;
    served?;
    Ok(())
}
