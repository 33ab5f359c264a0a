//! The orchestrator: accepts tasks, asks the router where to run them, runs
//! them on the chosen agents worker, and keeps their state and event logs for
//! GetTask, ListTasks and WatchTask. Every call is authenticated with an API
//! key; the tenant comes from the key, never from the request.
//!
//! # Layout
//!
//! - [`authn`]: API keys checked through the auth service, with a short cache.
//! - [`task`]: the domain task and its conversion to the contract.
//! - [`store`]: the embedded task store and event logs.
//! - [`dispatch`]: one attempt on a worker, streamed into the log.
//! - [`error`]: the orchestrator's errors and their mapping to gRPC codes.
//! - this file: the gRPC service and [`serve`].

pub mod authn;
pub mod dispatch;
pub mod error;
pub mod store;
pub mod task;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amaos_mesh::caller::Caller;
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, limit_messages};
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_server::{
    OrchestratorService, OrchestratorServiceServer,
};
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use amaos_proto::time::duration;
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::authn::{Authenticator, require};
use crate::dispatch::WorkerChannels;
use crate::error::OrchestratorError;
use crate::store::TaskStore;
use crate::task::{Task, TaskState, TeamSource};

/// Longest timeout a task may ask for.
const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most labels on a task, and the longest key or value.
const MAX_LABELS: usize = 32;
const MAX_LABEL_BYTES: usize = 256;

/// The orchestrator's gRPC service.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<TaskStore>,
    authn: Authenticator,
    router: RouterServiceClient<MeshChannel>,
    workers: WorkerChannels,
    task_timeout: Duration,
    max_input_bytes: usize,
    max_spec_bytes: usize,
}

impl Orchestrator {
    /// An orchestrator calling auth and the router as configured.
    pub fn new(config: &Config) -> Result<Self, BoxError> {
        let auth = AuthServiceClient::new(client::channel(&config.auth.url, &config.limits)?);
        let router = RouterServiceClient::new(client::channel(&config.router.url, &config.limits)?);
        Ok(Self {
            inner: Arc::new(Inner {
                store: Arc::new(TaskStore::new(
                    config.orchestrator.max_tasks,
                    config.orchestrator.max_events_per_task,
                )),
                authn: Authenticator::new(auth, config.auth.key_cache_ttl),
                router,
                workers: WorkerChannels::new(config.limits.clone()),
                task_timeout: config.orchestrator.task_timeout,
                max_input_bytes: config.orchestrator.max_input_bytes,
                max_spec_bytes: config.agents.max_spec_bytes,
            }),
        })
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> OrchestratorError {
    OrchestratorError::InvalidArgument {
        field,
        message: message.into(),
    }
}

fn valid_team_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Inner {
    /// Checks a submission and turns it into a task (not yet stored).
    fn admit(
        &self,
        caller: &Caller,
        request: pb::SubmitTaskRequest,
    ) -> Result<(Task, Option<String>), OrchestratorError> {
        let pb::SubmitTaskRequest {
            team,
            input,
            session_id,
            idempotency_key,
            timeout,
            retry,
            fallbacks,
            labels,
        } = request;
        let (team, source) = match team.and_then(|t| t.team) {
            Some(pb::team_ref::Team::Name(name)) => {
                if !valid_team_name(&name) {
                    return Err(invalid(
                        "team.name",
                        "must be 1 to 64 of a-z, 0-9, `-` and `_`",
                    ));
                }
                (name, TeamSource::Named)
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
                let spec = amaos_teams::parse(&yaml).map_err(OrchestratorError::InvalidSpec)?;
                (spec.name, TeamSource::Inline(yaml))
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
        if retry.as_ref().is_some_and(|r| r.max_attempts > 1) {
            return Err(OrchestratorError::Unimplemented(
                "retry policies with more than one attempt are not supported by this server yet",
            ));
        }
        if !fallbacks.is_empty() {
            return Err(OrchestratorError::Unimplemented(
                "fallbacks are not supported by this server yet",
            ));
        }
        let timeout = match timeout {
            Some(t) => duration(&t)
                .filter(|d| !d.is_zero() && *d <= MAX_TASK_TIMEOUT)
                .ok_or_else(|| invalid("timeout", "must be positive and at most 24h"))?,
            None => self.task_timeout,
        };
        let now = SystemTime::now();
        let task = Task {
            id: amaos_mesh::new_id(),
            tenant: caller.tenant.clone(),
            submitted_by: caller.principal.clone(),
            team,
            source,
            input,
            session_id,
            labels,
            state: TaskState::Pending,
            attempt: 0,
            output: None,
            error: None,
            worker_id: String::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            deadline: now + timeout,
        };
        Ok((task, Some(idempotency_key).filter(|k| !k.is_empty())))
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
        require(&caller, "submit")?;
        let (task, idempotency_key) = inner.admit(&caller, request.into_inner())?;
        if let Some(existing) = idempotency_key
            .as_deref()
            .and_then(|key| inner.store.find_idempotent(&caller.tenant, key))
        {
            return Ok(Response::new(pb::SubmitTaskResponse {
                task_id: existing.id.clone(),
                deduplicated: true,
                task: Some((&existing).into()),
            }));
        }
        // Route before accepting: an unknown team is the submitter's error.
        let route = inner
            .router
            .clone()
            .route(router::RouteRequest {
                team: task.team.clone(),
                inline_spec: matches!(task.source, TeamSource::Inline(_)),
                required_capabilities: Vec::new(),
                session_key: task.session_id.clone(),
                exclude_worker_ids: Vec::new(),
            })
            .await
            .map_err(|status| OrchestratorError::Dependency {
                service: "router",
                status,
            })?
            .into_inner();
        let worker = route.worker.ok_or_else(|| OrchestratorError::Dependency {
            service: "router",
            status: Status::internal("the router answered without a worker"),
        })?;
        let channel =
            inner
                .workers
                .get(&worker.address)
                .map_err(|e| OrchestratorError::Dependency {
                    service: "router",
                    status: Status::internal(format!("worker address: {e}")),
                })?;
        let cancel = match inner
            .store
            .insert(task.clone(), idempotency_key.as_deref())?
        {
            Ok(cancel) => cancel,
            Err(existing) => {
                return Ok(Response::new(pb::SubmitTaskResponse {
                    task_id: existing.id.clone(),
                    deduplicated: true,
                    task: Some((&existing).into()),
                }));
            }
        };
        let attempt = 1;
        let worker_id = worker.worker_id.clone();
        inner.store.transition(
            &task.id,
            attempt,
            TaskState::Queued,
            &format!("routed to worker {worker_id} ({})", route.reason),
            |t| {
                t.attempt = attempt;
                t.worker_id = worker_id;
            },
        );
        tracing::info!(task_id = %task.id, tenant = %task.tenant, team = %task.team, worker = %worker.worker_id, "task queued");
        let stored = inner.store.get(&caller.tenant, &task.id).unwrap_or(task);
        tokio::spawn(dispatch::run_attempt(
            inner.store.clone(),
            channel,
            stored.clone(),
            attempt,
            caller,
            cancel,
        ));
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id: stored.id.clone(),
            deduplicated: false,
            task: Some((&stored).into()),
        }))
    }

    async fn submit_workflow(
        &self,
        request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&caller, "submit")?;
        Err(OrchestratorError::Unimplemented(
            "workflows are not supported by this server yet; submit tasks one by one",
        )
        .into())
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let caller = self.inner.authn.caller(request.metadata()).await?;
        require(&caller, "read")?;
        let pb::GetTaskRequest { task_id } = request.into_inner();
        let task = self
            .inner
            .store
            .get(&caller.tenant, &task_id)
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
        require(&caller, "read")?;
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
        let before = Some(page_token.as_str()).filter(|t| !t.is_empty());
        let team = Some(team.as_str()).filter(|t| !t.is_empty());
        let tasks = self
            .inner
            .store
            .list(&caller.tenant, before, state, team, limit);
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
        require(&caller, "cancel")?;
        let pb::CancelTaskRequest {
            task_id,
            reason,
            idempotency_key: _,
        } = request.into_inner();
        let store = &self.inner.store;
        let task = store
            .get(&caller.tenant, &task_id)
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        let reason = if reason.is_empty() {
            format!("cancelled by {}", caller.principal)
        } else {
            reason.chars().take(1024).collect()
        };
        // A finished task stays as it is; the transition refuses it.
        store.transition(&task_id, task.attempt, TaskState::Cancelled, &reason, |t| {
            t.error = Some((pb::ErrorClass::Unspecified, reason.clone()));
        });
        let task = store
            .get(&caller.tenant, &task_id)
            .ok_or(OrchestratorError::TaskNotFound(task_id))?;
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
        require(&caller, "read")?;
        let pb::WatchTaskRequest {
            task_id,
            after_sequence,
        } = request.into_inner();
        let store = self.inner.store.clone();
        // Fail fast on an unknown task, before the stream starts.
        store
            .events_after(&caller.tenant, &task_id, after_sequence)
            .ok_or_else(|| OrchestratorError::TaskNotFound(task_id.clone()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut cursor = after_sequence;
            loop {
                let Some((events, finished, mut watch)) =
                    store.events_after(&caller.tenant, &task_id, cursor)
                else {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "task `{task_id}` not found"
                        ))))
                        .await;
                    return;
                };
                for event in events {
                    cursor = event.sequence;
                    if tx
                        .send(Ok(pb::WatchTaskResponse { event: Some(event) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if finished {
                    return;
                }
                tokio::select! {
                    changed = watch.changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
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

/// Serves the orchestrator on `listener` until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let service = grpc_service(Orchestrator::new(&config)?, &config.limits);
    amaos_mesh::server::serve(service, listener, &config.limits, metrics, shutdown).await?;
    Ok(())
}
