//! The orchestrator: accepts tasks, asks the router where to run them, runs
//! them on the chosen agents worker, and keeps their state and event logs for
//! GetTask, ListTasks and WatchTask. Every call is authenticated with an API
//! key; the tenant comes from the key, never from the request.
//!
//! # Layout
//!
//! - [`authn`]: API keys checked through the auth service, with a short cache.
//! - [`task`]: the domain task and its conversion to the contract.
//! - [`backend`]: the task store and queue (in-process or Redis).
//! - [`dispatch`]: claiming work, running attempts on workers, retries.
//! - [`workflow`]: DAG checks for SubmitWorkflow.
//! - [`error`]: the orchestrator's errors and their mapping to gRPC codes.
//! - this file: the gRPC service and [`serve`].

pub mod authn;
pub mod backend;
pub mod dispatch;
pub mod error;
pub mod task;
pub mod workflow;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_mesh::caller::Caller;
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
use amaos_proto::time::duration;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::authn::{Authenticator, require};
use crate::backend::{BackendError, BackendLimits, RateLimiter, TaskBackend};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::error::OrchestratorError;
use crate::task::{ErrorClass, Fallback, RetryPolicy, Task, TaskState, TeamSource};

/// Longest timeout a task may ask for.
const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most labels on a task, and the longest key or value.
const MAX_LABELS: usize = 32;
const MAX_LABEL_BYTES: usize = 256;
/// Most fallbacks on a task.
const MAX_FALLBACKS: usize = 8;
/// How long one wait for new events lasts in WatchTask.
const WATCH_POLL: Duration = Duration::from_secs(5);

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
    task_timeout: Duration,
    max_input_bytes: usize,
    max_spec_bytes: usize,
    default_retry: RetryPolicy,
    tenant_rate: (f64, u32),
    team_rate: (f64, u32),
}

/// The configured task store and the rate limiter beside it.
pub type Backends = (Arc<dyn TaskBackend>, Arc<dyn RateLimiter>);

/// Opens the configured backend: the task store and its rate limiter.
pub async fn open_backend(config: &Config) -> Result<Backends, BoxError> {
    let o = &config.orchestrator;
    let limits = BackendLimits {
        max_events_per_task: o.max_events_per_task,
        max_running_per_tenant: o.max_running_per_tenant,
        retention: o.retention,
        max_tasks: o.max_tasks,
    };
    Ok(match o.backend {
        StoreBackend::Memory => (
            Arc::new(backend::memory::MemoryBackend::new(limits)),
            Arc::new(backend::memory::MemoryRateLimiter::new()),
        ),
        StoreBackend::Redis => {
            let backend =
                backend::redis::RedisBackend::connect(&o.redis_url, &o.redis_prefix, limits)
                    .await?;
            let limiter = Arc::new(backend.rate_limiter());
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
            (backend, limiter)
        }
    })
}

impl Orchestrator {
    /// An orchestrator over `backend`, limiting submissions with `limiter`,
    /// authorizing by `policy`, calling auth and the router as configured,
    /// with its dispatcher (not yet running: see [`serve`]).
    pub fn new(
        config: &Config,
        policy: Policy,
        backend: Arc<dyn TaskBackend>,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Self, BoxError> {
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
            }),
        })
    }

    /// The dispatcher, to run next to the service.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.inner.dispatcher.clone()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> OrchestratorError {
    OrchestratorError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// The task id a `page_token` continues after: the tokens ListTasks hands
/// out are task ids (UUIDs in their hyphenated lowercase form). Anything
/// else is refused rather than read as a position in the listing, where
/// the backends would take it for "from the start".
fn page_cursor(page_token: &str) -> Result<Option<&str>, OrchestratorError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    match uuid::Uuid::try_parse(page_token) {
        Ok(id) if id.hyphenated().to_string() == page_token => Ok(Some(page_token)),
        _ => Err(invalid(
            "page_token",
            "not a page token from a previous ListTasks response",
        )),
    }
}

/// What a submission carries for one task, before it becomes a [`Task`].
struct TaskSpec {
    team: Option<pb::TeamRef>,
    input: String,
    timeout: Option<prost_types::Duration>,
    retry: Option<pb::RetryPolicy>,
    fallbacks: Vec<pb::Fallback>,
}

impl Inner {
    fn retry_policy(
        &self,
        retry: Option<pb::RetryPolicy>,
    ) -> Result<RetryPolicy, OrchestratorError> {
        let Some(pb::RetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            backoff_multiplier,
            retry_on,
        }) = retry
        else {
            return Ok(self.default_retry.clone());
        };
        let mut policy = self.default_retry.clone();
        if max_attempts > 0 {
            if max_attempts > 100 {
                return Err(invalid("retry.max_attempts", "at most 100"));
            }
            policy.max_attempts = max_attempts;
        }
        if let Some(d) = initial_backoff {
            policy.initial_backoff = duration(&d)
                .filter(|d| *d <= Duration::from_secs(3600))
                .ok_or_else(|| invalid("retry.initial_backoff", "must be between 0 and 1h"))?;
        }
        if let Some(d) = max_backoff {
            policy.max_backoff = duration(&d)
                .filter(|d| *d <= Duration::from_secs(3600))
                .ok_or_else(|| invalid("retry.max_backoff", "must be between 0 and 1h"))?;
        }
        if backoff_multiplier != 0.0 {
            if !(1.0..=10.0).contains(&backoff_multiplier) {
                return Err(invalid(
                    "retry.backoff_multiplier",
                    "must be between 1 and 10",
                ));
            }
            policy.multiplier = backoff_multiplier;
        }
        if !retry_on.is_empty() {
            policy.retry_on = retry_on
                .into_iter()
                .map(|c| {
                    ErrorClass::from_proto(c)
                        .ok_or_else(|| invalid("retry.retry_on", "not an error class"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(policy)
    }

    /// Checks one task's fields and builds it (not yet stored).
    async fn build_task(
        &self,
        caller: &Caller,
        spec: TaskSpec,
        session_id: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Task, OrchestratorError> {
        let TaskSpec {
            team,
            input,
            timeout,
            retry,
            fallbacks,
        } = spec;
        // A named team's spec is the worker's: it holds its tasks to the
        // spec's `input` rule when it runs them.
        let (team, source, input_rule) = match team.and_then(|t| t.team) {
            Some(pb::team_ref::Team::Name(name)) => {
                if !amaos_teams::valid_name(&name) {
                    return Err(invalid(
                        "team.name",
                        "must be 1 to 64 of a-z, 0-9, `-` and `_`",
                    ));
                }
                (name, TeamSource::Named, amaos_teams::Input::Optional)
            }
            Some(pb::team_ref::Team::SpecYaml(yaml)) => {
                if yaml.len() > self.max_spec_bytes {
                    return Err(invalid(
                        "team.spec_yaml",
                        format!(
                            "the spec is {} bytes; the limit is {}",
                            yaml.len(),
                            self.max_spec_bytes
                        ),
                    ));
                }
                // Parsing is CPU work bounded by the spec's size and
                // nesting: off the async threads.
                let text = yaml.clone();
                let spec = tokio::task::spawn_blocking(move || amaos_teams::parse(&text))
                    .await
                    .map_err(|_| invalid("team.spec_yaml", "the spec could not be parsed"))?
                    .map_err(OrchestratorError::InvalidSpec)?;
                (spec.name, TeamSource::Inline(yaml), spec.input)
            }
            None => return Err(invalid("team", "name a team or send a spec")),
        };
        if input.len() > self.max_input_bytes {
            return Err(invalid(
                "input",
                format!(
                    "is {} bytes; the limit is {}",
                    input.len(),
                    self.max_input_bytes
                ),
            ));
        }
        if let Some(why) = input_rule.refuses(&input) {
            return Err(invalid("input", why));
        }
        let retry = self.retry_policy(retry)?;
        if fallbacks.len() > MAX_FALLBACKS {
            return Err(invalid("fallbacks", format!("at most {MAX_FALLBACKS}")));
        }
        let fallbacks = fallbacks
            .into_iter()
            .map(|f| match f.target {
                Some(pb::fallback::Target::TeamName(name)) if amaos_teams::valid_name(&name) => {
                    Ok(Fallback::Team(name))
                }
                Some(pb::fallback::Target::ModelAlias(alias))
                    if !alias.is_empty() && alias.len() <= 64 =>
                {
                    Ok(Fallback::Model(alias))
                }
                _ => Err(invalid(
                    "fallbacks",
                    "each names a valid team or a model alias",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = match timeout {
            Some(t) => duration(&t)
                .filter(|d| !d.is_zero() && *d <= MAX_TASK_TIMEOUT)
                .ok_or_else(|| invalid("timeout", "must be positive and at most 24h"))?,
            None => self.task_timeout,
        };
        let now = SystemTime::now();
        Ok(Task {
            id: amaos_mesh::new_id(),
            tenant: caller.tenant.clone(),
            submitted_by: caller.principal.clone(),
            roles: caller.roles.clone(),
            team,
            source,
            input,
            session_id: session_id.to_owned(),
            labels,
            state: TaskState::Pending,
            attempt: 0,
            stage_attempts: 0,
            stage: 0,
            retry,
            fallbacks,
            output: None,
            error: None,
            worker_id: String::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            deadline: now + timeout,
            workflow_id: String::new(),
            workflow_key: String::new(),
            depends_on: Vec::new(),
            dependents: Vec::new(),
        })
    }

    /// Appends one decision to the audit trail: when the trail cannot be
    /// written, nothing happens.
    async fn record(
        &self,
        caller: &Caller,
        audit_action: &str,
        object: &str,
        allowed: bool,
    ) -> Result<(), OrchestratorError> {
        self.audit
            .append_async(amaos_mesh::audit::Entry {
                principal: &caller.principal,
                tenant: &caller.tenant,
                action: audit_action,
                object,
                allowed,
            })
            .await
            .map(|_| ())
            .map_err(|e| OrchestratorError::AuditDown(e.to_string()))
    }

    /// Checks `caller` may do `action`; a refusal is recorded at once. An
    /// allowed caller's decision is recorded by [`Inner::settle`] once the
    /// request has passed every other check, so a request refused later
    /// (bad input, another tenant's task, admission) is recorded as denied,
    /// never as allowed.
    async fn permitted(
        &self,
        caller: &Caller,
        action: &str,
        audit_action: &str,
        object: &str,
    ) -> Result<(), OrchestratorError> {
        let decision = require(&self.policy, caller, action);
        if decision.is_err() {
            self.record(caller, audit_action, object, false).await?;
        }
        decision
    }

    /// Records the outcome of the checks a permitted request went through:
    /// denied when `checked` is an error (which is returned), allowed
    /// otherwise — before the action takes effect.
    async fn settle<T>(
        &self,
        caller: &Caller,
        audit_action: &str,
        object: &str,
        checked: Result<T, OrchestratorError>,
    ) -> Result<T, OrchestratorError> {
        self.record(caller, audit_action, object, checked.is_ok())
            .await?;
        checked
    }

    fn check_common(
        session_id: &str,
        idempotency_key: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<(), OrchestratorError> {
        if session_id.len() > 128 {
            return Err(invalid("session_id", "at most 128 bytes"));
        }
        if idempotency_key.len() > 256 {
            return Err(invalid("idempotency_key", "at most 256 bytes"));
        }
        if labels.len() > MAX_LABELS
            || labels.iter().any(|(k, v)| {
                k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES
            })
        {
            return Err(invalid(
                "labels",
                format!(
                    "at most {MAX_LABELS} labels with non-empty keys and keys and values of at most {MAX_LABEL_BYTES} bytes"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a team no worker has declared: NOT_FOUND at submission beats
    /// a task that fails later. Answers are cached for a few seconds.
    async fn check_team_served(&self, team: &str) -> Result<(), OrchestratorError> {
        const FRESH: Duration = Duration::from_secs(5);
        if let Some(seen) = self
            .known_teams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(team)
            && seen.elapsed() < FRESH
        {
            return Ok(());
        }
        let workers = self
            .router
            .clone()
            .list_workers(amaos_proto::router::v1::ListWorkersRequest {
                team: team.to_owned(),
                include_expired: true,
            })
            .await
            .map_err(|status| OrchestratorError::Dependency {
                service: "router",
                status,
            })?
            .into_inner()
            .workers;
        if workers.is_empty() {
            return Err(OrchestratorError::Dependency {
                service: "router",
                status: Status::not_found(format!("no worker serves team `{team}`")),
            });
        }
        let mut known = self.known_teams.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= 10_000 {
            known.clear();
        }
        known.insert(team.to_owned(), std::time::Instant::now());
        Ok(())
    }

    /// Applies the tenant and team submission rates.
    async fn admit(&self, caller: &Caller, teams: &[&str]) -> Result<(), OrchestratorError> {
        let (rate, burst) = self.tenant_rate;
        if rate > 0.0
            && let Some(wait) = self
                .limiter
                .check(&format!("tenant:{}", caller.tenant), rate, burst)
                .await?
        {
            return Err(OrchestratorError::RateLimited {
                scope: format!("tenant `{}`", caller.tenant),
                retry_after: wait,
            });
        }
        let (rate, burst) = self.team_rate;
        if rate > 0.0 {
            for team in teams {
                let key = format!("team:{}:{team}", caller.tenant);
                if let Some(wait) = self.limiter.check(&key, rate, burst).await? {
                    return Err(OrchestratorError::RateLimited {
                        scope: format!("team `{team}`"),
                        retry_after: wait,
                    });
                }
            }
        }
        Ok(())
    }
}

impl From<BackendError> for OrchestratorError {
    fn from(error: BackendError) -> Self {
        OrchestratorError::Backend(error)
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
        let inner = &self.inner;
        let caller = inner.authn.caller(request.metadata()).await?;
        inner
            .permitted(&caller, "submit", "task.submit", "tasks")
            .await?;
        let pb::SubmitTaskRequest {
            team,
            input,
            session_id,
            idempotency_key,
            timeout,
            retry,
            fallbacks,
            labels,
        } = request.into_inner();
        let checked = async {
            Inner::check_common(&session_id, &idempotency_key, &labels)?;
            let task = inner
                .build_task(
                    &caller,
                    TaskSpec {
                        team,
                        input,
                        timeout,
                        retry,
                        fallbacks,
                    },
                    &session_id,
                    labels,
                )
                .await?;
            if task.source == TeamSource::Named {
                inner.check_team_served(&task.team).await?;
            }
            inner.admit(&caller, &[task.team.as_str()]).await?;
            Ok::<_, OrchestratorError>(task)
        }
        .await;
        let task = inner
            .settle(&caller, "task.submit", "tasks", checked)
            .await?;
        let idem = Some(idempotency_key.as_str()).filter(|k| !k.is_empty());
        let id = task.id.clone();
        let existing = inner
            .backend
            .create(&caller.tenant, &id, vec![task.clone()], idem)
            .await?;
        // A new task is stored queued, as built; only a duplicate needs reading back.
        let (task, deduplicated) = match existing {
            Some(existing) => (
                inner
                    .backend
                    .get(&caller.tenant, &existing)
                    .await?
                    .ok_or_else(|| OrchestratorError::TaskNotFound(existing.clone()))?,
                true,
            ),
            None => (
                Task {
                    state: TaskState::Queued,
                    ..task
                },
                false,
            ),
        };
        let task_id = task.id.clone();
        tracing::info!(task_id = %task.id, tenant = %task.tenant, team = %task.team, deduplicated, "task accepted");
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id,
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
        let pb::SubmitWorkflowRequest {
            name,
            tasks,
            session_id,
            idempotency_key,
        } = request.into_inner();
        let workflow_id = amaos_mesh::new_id();
        let checked = async {
            Inner::check_common(&session_id, &idempotency_key, &Default::default())?;
            if name.len() > 128 {
                return Err(invalid("name", "at most 128 bytes"));
            }
            let shape: Vec<(String, Vec<String>)> = tasks
                .iter()
                .map(|t| (t.key.clone(), t.depends_on.clone()))
                .collect();
            workflow::check(&shape).map_err(|e| invalid("tasks", e.to_string()))?;
            let mut built = Vec::with_capacity(tasks.len());
            for t in tasks {
                let pb::WorkflowTask {
                    key,
                    team,
                    input,
                    depends_on,
                    retry,
                    fallbacks,
                    timeout,
                } = t;
                let mut labels = std::collections::HashMap::new();
                if !name.is_empty() {
                    labels.insert("workflow".to_owned(), name.clone());
                }
                let mut task = inner
                    .build_task(
                        &caller,
                        TaskSpec {
                            team,
                            input,
                            timeout,
                            retry,
                            fallbacks,
                        },
                        &session_id,
                        labels,
                    )
                    .await?;
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
        let pb::ListTasksRequest {
            page_size,
            page_token,
            state,
            team,
        } = request.into_inner();
        let limit = match page_size {
            0 => 100,
            n if n <= 1000 => n as usize,
            _ => return Err(invalid("page_size", "at most 1000").into()),
        };
        let state = match state {
            0 => None,
            s => {
                Some(TaskState::from_proto(s).ok_or_else(|| invalid("state", "not a task state"))?)
            }
        };
        let before = page_cursor(&page_token)?;
        let team = Some(team.as_str()).filter(|t| !t.is_empty());
        let tasks = self
            .inner
            .backend
            .list(&caller.tenant, before, state, team, limit)
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
        self.inner
            .permitted(&caller, "cancel", "task.cancel", &task_id)
            .await?;
        // Another tenant's task (or none) is refused and recorded as such.
        let found = self
            .inner
            .backend
            .get(&caller.tenant, &task_id)
            .await
            .map_err(OrchestratorError::from)
            .and_then(|t| t.ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone())));
        self.inner
            .settle(&caller, "task.cancel", &task_id, found)
            .await?;
        let reason = if reason.is_empty() {
            format!("cancelled by {}", caller.principal)
        } else {
            reason.chars().take(1024).collect()
        };
        let task = self
            .inner
            .backend
            .cancel(&caller.tenant, &task_id, &reason)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        // Stop the attempt at once when it runs here; elsewhere the lease renewal notices.
        self.inner.dispatcher.stop_local(&task_id);
        Ok(Response::new(pb::CancelTaskResponse {
            task: Some((&task).into()),
        }))
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
        // Fail fast on an unknown task, before the stream starts.
        backend
            .get(&caller.tenant, &task_id)
            .await
            .map_err(OrchestratorError::from)?
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut cursor = after_sequence;
            loop {
                let page = tokio::select! {
                    page = backend.events(&caller.tenant, &task_id, cursor, WATCH_POLL) => page,
                    () = tx.closed() => return,
                };
                let page = match page {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::not_found(format!(
                                "task `{task_id}` not found"
                            ))))
                            .await;
                        return;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(Status::unavailable(error.to_string()))).await;
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
    GrpcService::public(
        "orchestrator",
        limit_messages!(OrchestratorServiceServer::new(orchestrator), limits),
    )
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
    let (backend, limiter) = open_backend(&config).await?;
    let orchestrator = Orchestrator::new(&config, policy, backend, limiter)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_is_a_task_id_as_listed() {
        assert_eq!(page_cursor("").unwrap(), None);
        let id = amaos_mesh::new_id();
        assert_eq!(page_cursor(&id).unwrap(), Some(id.as_str()));
        for bad in [
            "garbage",
            "zzzz",
            &id[..id.len() - 1],
            &id.to_uppercase(),
            &id.replace('-', ""),
            &format!("{{{id}}}"),
            &format!("{id} "),
        ] {
            let status = tonic::Status::from(page_cursor(bad).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            let details = tonic_types::StatusExt::get_error_details(&status);
            assert_eq!(
                details.bad_request().unwrap().field_violations[0].field,
                "page_token",
                "{bad}"
            );
        }
    }
}
