//! The orchestrator: accepts tasks, asks the router where to run them, runs
//! them on the chosen agents worker, and keeps their state and event logs for
//! GetTask, ListTasks and WatchTask. Every call is authenticated with an API
//! key; the tenant comes from the key, never from the request.
//!
//! # Layout
//!
//! - `admission`: what a submission passes before it is stored — building
//!   tasks, the audit decision, the team check, the submission rates.
//! - [`authn`]: API keys checked through the auth service, with a short cache.
//! - [`task`]: the domain task and its conversion to the contract.
//! - [`backend`]: the task store and queue (in-process or Redis).
//! - [`dispatch`]: claiming work, running attempts on workers, retries.
//! - [`request`]: requests into domain types (`TryFrom`), in one place.
//! - [`workflow`]: DAG checks for SubmitWorkflow.
//! - [`a2a`]: the Agent2Agent protocol (`lf.a2a.v1`) over the same tasks,
//!   and the agent card.
//! - [`error`]: the orchestrator's errors and their mapping to gRPC codes.
//! - this file: the gRPC service and [`serve`].

pub mod a2a;
mod admission;
mod approvals;
pub mod authn;
pub mod backend;
pub mod dispatch;
pub mod error;
pub mod metrics;
pub mod request;
pub mod task;
pub mod usage;
pub mod workflow;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use amaos_mesh::client;
use amaos_mesh::config::{Limits, StoreBackend};
use amaos_mesh::metrics::Metrics;
use amaos_mesh::policy::Policy;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages};
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_server::{
    OrchestratorService, OrchestratorServiceServer,
};
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::authn::{Authenticator, require};
use crate::backend::{BackendError, BackendLimits, RateLimiter, TaskBackend};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::error::OrchestratorError;
use crate::request::{ListQuery, TaskSubmission, WorkflowStep, WorkflowSubmission};
use crate::task::{RetryPolicy, Task, TaskState, TeamSource};

/// How long one wait for new events lasts in WatchTask. Both backends wake a
/// waiting watcher when an event is appended; this bounds only a wake-up that
/// was lost (a Redis reconnection), and costs one read per idle watcher per
/// period, so with tens of thousands of runs in flight it is long.
const WATCH_POLL: Duration = Duration::from_secs(30);

/// The orchestrator's gRPC service.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn TaskBackend>,
    /// The submission rates, beside the task store (in Redis with it).
    limiter: Arc<dyn RateLimiter>,
    /// The hash-chained trail: task submissions and cancellations.
    audit: amaos_mesh::audit::AuditLog,
    router: RouterServiceClient<amaos_mesh::client::MeshChannel>,
    /// Teams recently seen served, so submissions skip the check.
    known_teams: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    authn: Authenticator,
    /// The RBAC policy callers are held to.
    policy: Policy,
    dispatcher: Arc<Dispatcher>,
    metrics: metrics::TaskMetrics,
    budgets: Arc<usage::Budgets>,
    task_timeout: Duration,
    max_input_bytes: usize,
    max_spec_bytes: usize,
    default_retry: RetryPolicy,
    tenant_rate: (f64, u32),
    team_rate: (f64, u32),
    /// The A2A agent card's source.
    card: a2a::Card,
}

/// The configured task store, and the rate limiter and usage store beside it.
pub struct Backends {
    /// Tasks and the queue.
    pub tasks: Arc<dyn TaskBackend>,
    /// Submission rates.
    pub limiter: Arc<dyn RateLimiter>,
    /// Usage by tenant, team, day and task.
    pub usage: Arc<dyn usage::UsageStore>,
}

/// Opens the configured backend: the task store, its rate limiter and the
/// usage store.
pub async fn open_backend(config: &Config) -> Result<Backends, BoxError> {
    let o = &config.orchestrator;
    let limits = BackendLimits {
        max_events_per_task: o.max_events_per_task,
        max_running_per_tenant: o.max_running_per_tenant,
        retention: o.retention,
        max_tasks: o.max_tasks,
    };
    Ok(match o.backend {
        StoreBackend::Memory => Backends {
            tasks: Arc::new(backend::memory::MemoryBackend::new(limits)),
            limiter: Arc::new(backend::memory::MemoryRateLimiter::new()),
            usage: Arc::new(usage::MemoryUsage::new(o.usage_retention)),
        },
        StoreBackend::Redis => {
            let backend =
                backend::redis::RedisBackend::connect(&o.redis_url, &o.redis_prefix, limits)
                    .await?;
            let limiter = Arc::new(backend.rate_limiter());
            let usage = Arc::new(backend.usage_store(o.usage_retention));
            let backend: Arc<dyn TaskBackend> = if o.encrypt {
                let path = o
                    .key_file
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("orchestrator.keys"));
                let sealer = amaos_mesh::seal::open_configured(path, &config.secrets).await?;
                Arc::new(backend.with_sealer(Arc::new(sealer)))
            } else {
                Arc::new(backend)
            };
            Backends {
                tasks: backend,
                limiter,
                usage,
            }
        }
    })
}

impl Orchestrator {
    /// An orchestrator over `backend`, limiting submissions with `limiter`,
    /// authorizing by `policy`, calling auth and the router as configured,
    /// reporting in `metrics`, with its dispatcher (not yet running: see
    /// [`serve`]).
    pub fn new(
        config: &Config,
        policy: Policy,
        backends: Backends,
        metrics: &Metrics,
    ) -> Result<Self, BoxError> {
        let Backends {
            tasks: backend,
            limiter,
            usage,
        } = backends;
        let task_metrics = metrics::TaskMetrics::register(metrics);
        let budgets = Arc::new(usage::Budgets::new(&config.orchestrator, usage));
        let dialer = client::Dialer::new(config, "orchestrator")?;
        let auth = AuthServiceClient::new(dialer.channel("auth", &config.auth.url)?);
        // Calls to the router and to workers prove the orchestrator's identity.
        let dialer = dialer.for_service(&config.auth.url, config.service_key_file())?;
        let router = RouterServiceClient::new(dialer.channel("router", &config.router.url)?);
        let o = &config.orchestrator;
        let dispatcher = Dispatcher::new(
            backend.clone(),
            router.clone(),
            authn::RunTokens::new(auth.clone(), config.service_key_file()),
            config.limits.clone(),
            dialer,
            DispatchConfig {
                consumer: format!("orchestrator-{}", amaos_mesh::new_id()),
                lease: o.lease,
                max_in_flight: o.max_in_flight,
                claimers: o.claimers,
                approval_ttl: o.approval_ttl,
            },
            dispatch::Accounting {
                metrics: task_metrics.clone(),
                budgets: budgets.clone(),
            },
        );
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                limiter,
                audit: amaos_mesh::audit::AuditLog::append_only_configured(config),
                router,
                known_teams: Default::default(),
                authn: Authenticator::new(auth, config.auth.key_cache_ttl),
                policy,
                dispatcher,
                metrics: task_metrics,
                budgets,
                task_timeout: o.task_timeout,
                max_input_bytes: o.max_input_bytes,
                max_spec_bytes: config.agents.max_spec_bytes,
                default_retry: RetryPolicy {
                    max_attempts: o.retry_max_attempts,
                    initial_backoff: o.retry_initial_backoff,
                    max_backoff: o.retry_max_backoff,
                    ..RetryPolicy::default()
                },
                tenant_rate: (o.tenant_rate, o.tenant_burst),
                team_rate: (o.team_rate, o.team_burst),
                card: a2a::Card::new(&o.a2a, &o.url),
            }),
        })
    }

    /// The dispatcher, to run next to the service.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.inner.dispatcher.clone()
    }
}

impl From<BackendError> for OrchestratorError {
    fn from(error: BackendError) -> Self {
        OrchestratorError::Backend(error)
    }
}

impl Inner {
    /// Admits and stores one task for `caller` (SubmitTask, and A2A's
    /// SendMessage): the task as stored, and whether the idempotency key
    /// matched an earlier submission.
    async fn submit(
        &self,
        caller: &amaos_mesh::caller::Caller,
        request: pb::SubmitTaskRequest,
    ) -> Result<(Task, bool), Status> {
        let started = std::time::Instant::now();
        self.permitted(caller, "submit", "task.submit", "tasks")
            .await?;
        let idempotency_key = request.idempotency_key.clone();
        let checked = async {
            let TaskSubmission {
                task,
                session_id,
                idempotency_key: _,
                labels,
            } = TaskSubmission::try_from(request)?;
            let task = self.build_task(caller, task, &session_id, labels).await?;
            if task.source == TeamSource::Named {
                self.check_team_served(&task.team).await?;
            }
            self.admit(caller, &[task.team.as_str()]).await?;
            if self.budgets.any() {
                self.budgets.check(&caller.tenant, &task.team, 0.0).await?;
            }
            Ok::<_, OrchestratorError>(task)
        }
        .await;
        match &checked {
            Err(OrchestratorError::RateLimited { .. }) => self
                .metrics
                .rejected(&caller.tenant, metrics::Rejected::RateLimit),
            Err(OrchestratorError::OverBudget { .. }) => self
                .metrics
                .rejected(&caller.tenant, metrics::Rejected::Budget),
            _ => {}
        }
        let task = self.settle(caller, "task.submit", "tasks", checked).await?;
        let idem = Some(idempotency_key.as_str()).filter(|k| !k.is_empty());
        let id = task.id.clone();
        let existing = self
            .backend
            .create(&caller.tenant, &id, vec![task.clone()], idem)
            .await
            .inspect_err(|e| {
                if let BackendError::Full(_) = e {
                    self.metrics
                        .rejected(&caller.tenant, metrics::Rejected::Capacity);
                }
            })?;
        // A new task is stored queued, as built; only a duplicate needs reading back.
        let (task, deduplicated) = match existing {
            Some(existing) => (
                self.backend
                    .get(&caller.tenant, &existing)
                    .await?
                    .ok_or_else(|| OrchestratorError::TaskNotFound(existing.clone()))?,
                true,
            ),
            None => {
                self.metrics.submitted(&task, started.elapsed());
                (
                    Task {
                        state: TaskState::Queued,
                        ..task
                    },
                    false,
                )
            }
        };
        tracing::info!(task_id = %task.id, tenant = %task.tenant, team = %task.team, deduplicated, "task accepted");
        Ok((task, deduplicated))
    }

    /// Cancels `caller`'s task `task_id` (CancelTask, A2A's CancelTask): the
    /// task after the request; a finished task is returned unchanged.
    async fn cancel(
        &self,
        caller: &amaos_mesh::caller::Caller,
        task_id: &str,
        reason: &str,
    ) -> Result<Task, Status> {
        self.permitted(caller, "cancel", "task.cancel", task_id)
            .await?;
        // Another tenant's task (or none) is refused and recorded as such.
        let found = self.task_of(caller, task_id).await;
        let before = self.settle(caller, "task.cancel", task_id, found).await?;
        let reason = if reason.is_empty() {
            format!("cancelled by {}", caller.principal)
        } else {
            reason.chars().take(1024).collect()
        };
        let task = self
            .backend
            .cancel(&caller.tenant, task_id, &reason)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.to_owned()))?;
        if !before.state.is_terminal() && task.state == TaskState::Cancelled {
            self.metrics.finished(&task, TaskState::Cancelled);
        }
        // Stop the attempt at once when it runs here; elsewhere the lease renewal notices.
        self.dispatcher.stop_local(task_id);
        Ok(task)
    }

    /// Decides a pending approval of `caller`'s task (DecideApproval, and an
    /// A2A message answering a task in INPUT_REQUIRED): the approval as
    /// decided and the task after it.
    async fn decide(
        &self,
        caller: &amaos_mesh::caller::Caller,
        request: request::DecisionRequest,
    ) -> Result<(Option<pb::Approval>, Task), Status> {
        let request::DecisionRequest {
            task_id,
            approval_id,
            decision,
        } = request;
        let object = format!("{task_id}/{approval_id}");
        // Who may decide is a permission on the task's team; another
        // tenant's task (or none) is NOT_FOUND, recorded as refused.
        let found = self.task_of(caller, &task_id).await.and_then(|task| {
            let team = task.current_target().0;
            match self.policy.allows(
                &caller.principal,
                &caller.roles,
                &caller.tenant,
                &format!("teams/{team}"),
                "approve",
            ) {
                Some(_) => Ok(task),
                None => Err(OrchestratorError::Forbidden(format!(
                    "roles [{}] may not `approve` calls of team `{team}`",
                    caller.roles.join(", ")
                ))),
            }
        });
        self.settle(caller, "task.approve", &object, found).await?;
        let decided = self
            .backend
            .decide(&caller.tenant, &task_id, &approval_id, &decision)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        let (decided, task) =
            decided.map_err(|refused| OrchestratorError::StaleDecision(refused.to_string()))?;
        let approval = task
            .approvals
            .iter()
            .find(|a| a.id == approval_id)
            .map(|a| a.to_proto(&task.id));
        if let task::Decided::Expired(reason) = decided {
            return Err(OrchestratorError::StaleDecision(format!(
                "{reason}; the task resumes with it"
            ))
            .into());
        }
        Ok((approval, task))
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchTaskResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl OrchestratorService for Orchestrator {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        let (task, deduplicated) = self.inner.submit(&caller, request.into_inner()).await?;
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id: task.id.clone(),
            deduplicated,
            task: Some((&task).into()),
        }))
    }

    async fn submit_workflow(
        &self,
        request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        let inner = &self.inner;
        let caller = inner.authn.caller(request.metadata()).await?;
        inner
            .permitted(&caller, "submit", "workflow.submit", "workflows")
            .await?;
        let request = request.into_inner();
        let idempotency_key = request.idempotency_key.clone();
        let workflow_id = amaos_mesh::new_id();
        let checked = async {
            let WorkflowSubmission {
                name,
                steps,
                session_id,
                idempotency_key: _,
            } = WorkflowSubmission::try_from(request)?;
            let mut built = Vec::with_capacity(steps.len());
            for WorkflowStep {
                key,
                task,
                depends_on,
            } in steps
            {
                let mut labels = std::collections::HashMap::new();
                if !name.is_empty() {
                    labels.insert("workflow".to_owned(), name.clone());
                }
                let mut task = inner.build_task(&caller, task, &session_id, labels).await?;
                task.workflow_id = workflow_id.clone();
                task.workflow_key = key;
                task.depends_on = depends_on;
                built.push(task);
            }
            // Keys to ids, then both directions of every edge.
            let ids: std::collections::HashMap<String, String> = built
                .iter()
                .map(|t| (t.workflow_key.clone(), t.id.clone()))
                .collect();
            let mut dependents: std::collections::HashMap<String, Vec<String>> = Default::default();
            for task in &mut built {
                task.depends_on = task.depends_on.iter().map(|k| ids[k].clone()).collect();
                for dep in &task.depends_on {
                    dependents
                        .entry(dep.clone())
                        .or_default()
                        .push(task.id.clone());
                }
            }
            for task in &mut built {
                task.dependents = dependents.remove(&task.id).unwrap_or_default();
            }
            for task in built.iter().filter(|t| t.source == TeamSource::Named) {
                inner.check_team_served(&task.team).await?;
            }
            let teams: Vec<&str> = built.iter().map(|t| t.team.as_str()).collect();
            inner.admit(&caller, &teams).await?;
            Ok::<_, OrchestratorError>(built)
        }
        .await;
        let built = inner
            .settle(&caller, "workflow.submit", "workflows", checked)
            .await?;
        let idem = Some(idempotency_key.as_str()).filter(|k| !k.is_empty());
        let members: Vec<(String, String)> = built
            .iter()
            .map(|t| (t.workflow_key.clone(), t.id.clone()))
            .collect();
        let existing = inner
            .backend
            .create(&caller.tenant, &workflow_id, built, idem)
            .await?;
        // A new workflow's members are the tasks just built; only a duplicate needs reading back.
        let (workflow_id, members, deduplicated) = match existing {
            Some(existing) => (
                existing.clone(),
                inner
                    .backend
                    .workflow(&caller.tenant, &existing)
                    .await?
                    .ok_or_else(|| OrchestratorError::TaskNotFound(existing.clone()))?,
                true,
            ),
            None => (workflow_id, members, false),
        };
        Ok(Response::new(pb::SubmitWorkflowResponse {
            workflow_id,
            task_ids: members.into_iter().collect(),
            deduplicated,
        }))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        let pb::GetTaskRequest { task_id } = request.into_inner();
        // A run token may read its own task (tools and memory ask whether
        // its attempt still runs), and nothing else.
        let own = caller.task.as_ref().is_some_and(|run| run.task == task_id);
        if !own {
            require(&self.inner.policy, &caller, "read")?;
        }
        let task = self
            .inner
            .backend
            .get(&caller.tenant, &task_id)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or(OrchestratorError::TaskNotFound(task_id))?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some((&task).into()),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&self.inner.policy, &caller, "read")?;
        let ListQuery {
            limit,
            before,
            state,
            team,
        } = ListQuery::try_from(request.into_inner())?;
        let tasks = self
            .inner
            .backend
            .list(
                &caller.tenant,
                before.as_deref(),
                state,
                team.as_deref(),
                limit,
            )
            .await
            .map_err(OrchestratorError::from)?;
        let next_page_token = if tasks.len() == limit {
            tasks.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        let pb::CancelTaskRequest {
            task_id,
            reason,
            idempotency_key: _,
        } = request.into_inner();
        let task = self.inner.cancel(&caller, &task_id, &reason).await?;
        Ok(Response::new(pb::CancelTaskResponse {
            task: Some((&task).into()),
        }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&self.inner.policy, &caller, "read")?;
        let query = request::ApprovalQuery::try_from(request.into_inner())?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: self.inner.approvals(&caller, query).await?,
        }))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        let decision = request::DecisionRequest::try_from(request.into_inner(), &caller.principal)?;
        let (approval, task) = self.inner.decide(&caller, decision).await?;
        Ok(Response::new(pb::DecideApprovalResponse {
            approval,
            task: Some((&task).into()),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&self.inner.policy, &caller, "read")?;
        let query = request::UsageQuery::try_from(request.into_inner())?;
        Ok(Response::new(self.inner.usage(&caller, query).await?))
    }

    async fn send_input(
        &self,
        request: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        let pb::SendInputRequest { task_id, message } = request.into_inner();
        let task = self.inner.answer_input(&caller, &task_id, message).await?;
        Ok(Response::new(pb::SendInputResponse {
            task: Some((&task).into()),
        }))
    }

    async fn get_agent_card(
        &self,
        _request: Request<pb::GetAgentCardRequest>,
    ) -> Result<Response<amaos_proto::lf::a2a::v1::AgentCard>, Status> {
        // Public by design: A2A discovery reads it before it has credentials.
        if !self.inner.card.enabled() {
            return Err(Status::unimplemented(
                "A2A is turned off here (orchestrator.a2a.enabled = false)",
            ));
        }
        Ok(Response::new(self.inner.agent_card().await?))
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&self.inner.policy, &caller, "read")?;
        let pb::WatchTaskRequest {
            task_id,
            after_sequence,
        } = request.into_inner();
        let backend = self.inner.backend.clone();
        // Fail fast on an unknown task, before the stream starts: the first
        // page, read without waiting, is also the stream's start.
        let first = backend
            .events(&caller.tenant, &task_id, after_sequence, Duration::ZERO)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut cursor = after_sequence;
            let mut first = Some(first);
            loop {
                let page = match first.take() {
                    Some(page) => Ok(Some(page)),
                    None => tokio::select! {
                        page = backend.events(&caller.tenant, &task_id, cursor, WATCH_POLL) => page,
                        () = tx.closed() => return,
                    },
                };
                let page = match page {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(OrchestratorError::TaskNotFound(task_id).into()))
                            .await;
                        return;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(OrchestratorError::from(error).into())).await;
                        return;
                    }
                };
                for event in page.events {
                    cursor = event.sequence;
                    if tx
                        .send(Ok(pb::WatchTaskResponse { event: Some(event) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if page.finished {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The orchestrator, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(orchestrator: Orchestrator, limits: &Limits) -> GrpcService {
    let a2a = orchestrator
        .inner
        .card
        .enabled()
        .then(|| a2a::A2a::new(&orchestrator));
    let service = GrpcService::public(
        "orchestrator",
        limit_messages!(OrchestratorServiceServer::new(orchestrator), limits),
    );
    match a2a {
        Some(a2a) => service.with(limit_messages!(a2a.server(), limits)),
        None => service,
    }
}

/// Serves the orchestrator on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let backends = open_backend(&config).await?;
    let orchestrator = Orchestrator::new(&config, policy, backends, &metrics)?;
    let dispatcher = tokio::spawn(
        orchestrator
            .dispatcher()
            .run(shutdown.clone(), config.limits.drain_timeout),
    );
    let service = grpc_service(orchestrator, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, &config, metrics, shutdown).await;
    let _ = dispatcher.await;
    served?;
    Ok(())
}
