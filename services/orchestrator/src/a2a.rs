//! The Agent2Agent protocol (A2A v1.0, gRPC binding `lf.a2a.v1.A2AService`)
//! over the orchestrator's own tasks, served beside `OrchestratorService` on
//! the same port, with the same credentials, policy, audit and limits.
//!
//! The mapping, in one place:
//! - a skill is a team some live worker serves; a message names it in its
//!   metadata (`skill`), else `orchestrator.a2a.default_skill` runs;
//! - a message is a task: its text (and JSON data) parts are the input, its
//!   `context_id` the memory session, its `message_id` the idempotency key;
//! - an A2A task *is* the AMAOS task (same id); its status follows the task's
//!   state (`INPUT_REQUIRED` while a tool call waits for a person), its
//!   artifacts are the crew tasks' outputs and the final output;
//! - a message to a task in `INPUT_REQUIRED` decides its pending approval
//!   (`approve` or `reject`, then an optional comment);
//! - push notifications are not offered (the card says so).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amaos_mesh::caller::Caller;
use amaos_mesh::config::A2aConfig;
use amaos_mesh::status::with_reason;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::lf::a2a::v1 as a2a;
use amaos_proto::lf::a2a::v1::a2a_service_server::{A2aService, A2aServiceServer};
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::time::timestamp;
use futures::Stream;
use prost_types::{Struct, Value, value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::error::OrchestratorError;
use crate::task::{ApprovalState, Task, TaskState};
use crate::{Inner, authn::require};

/// The `ErrorInfo` domain of A2A's errors.
const DOMAIN: &str = "a2a-protocol.org";
/// The protocol version served.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The metadata key naming the skill (team) a message runs.
pub const SKILL_KEY: &str = "skill";
/// How long the team list behind the card is reused.
const CARD_TTL: Duration = Duration::from_secs(5);
/// How long one wait for new events lasts.
const POLL: Duration = Duration::from_secs(5);
/// ListTasks: the default and largest page.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;
/// Longest `message_id` (the idempotency key, after its prefix).
const MAX_MESSAGE_ID: usize = 200;

/// The agent card's source: the configuration and a short-lived copy of the
/// teams live workers serve (the card is public: a burst of anonymous
/// requests costs one router call per [`CARD_TTL`]).
pub(crate) struct Card {
    config: A2aConfig,
    url: String,
    teams: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl Card {
    /// The card described by `config`, published at `default_url` unless
    /// the configuration names another.
    pub(crate) fn new(config: &A2aConfig, default_url: &str) -> Self {
        Self {
            url: config.url.clone().unwrap_or_else(|| default_url.to_owned()),
            config: config.clone(),
            teams: tokio::sync::Mutex::new(None),
        }
    }
}

impl Card {
    /// Whether A2A is served.
    pub(crate) fn enabled(&self) -> bool {
        self.config.enabled
    }
}

impl Inner {
    /// The teams live workers serve, sorted (inline-spec workers' `*` left out).
    async fn served_teams(&self) -> Result<Vec<String>, Status> {
        let mut cached = self.card.teams.lock().await;
        if let Some((at, teams)) = cached.as_ref()
            && at.elapsed() < CARD_TTL
        {
            return Ok(teams.clone());
        }
        let workers = self
            .router
            .clone()
            .list_workers(amaos_proto::router::v1::ListWorkersRequest {
                team: String::new(),
                include_expired: false,
            })
            .await
            .map_err(|status| OrchestratorError::Dependency {
                service: "router",
                status,
            })?
            .into_inner()
            .workers;
        let mut teams: Vec<String> = workers
            .into_iter()
            .flat_map(|w| w.teams)
            .filter(|t| t != "*")
            .collect();
        teams.sort();
        teams.dedup();
        *cached = Some((Instant::now(), teams.clone()));
        Ok(teams)
    }

    /// The mesh's agent card: its teams as skills.
    pub(crate) async fn agent_card(&self) -> Result<a2a::AgentCard, Status> {
        let teams = self.served_teams().await?;
        let config = &self.card.config;
        let bearer = "bearer".to_owned();
        Ok(a2a::AgentCard {
            name: config.name.clone(),
            description: config.description.clone(),
            supported_interfaces: vec![a2a::AgentInterface {
                url: self.card.url.clone(),
                protocol_binding: "GRPC".into(),
                tenant: String::new(),
                protocol_version: PROTOCOL_VERSION.into(),
            }],
            provider: (!config.organization.is_empty()).then(|| a2a::AgentProvider {
                url: String::new(),
                organization: config.organization.clone(),
            }),
            version: env!("CARGO_PKG_VERSION").into(),
            documentation_url: None,
            capabilities: Some(a2a::AgentCapabilities {
                streaming: Some(true),
                push_notifications: Some(false),
                extensions: Vec::new(),
                extended_agent_card: Some(true),
            }),
            security_schemes: [(
                bearer.clone(),
                a2a::SecurityScheme {
                    scheme: Some(a2a::security_scheme::Scheme::HttpAuthSecurityScheme(
                        a2a::HttpAuthSecurityScheme {
                            description: "An AMAOS API key (or a token auth issued), \
                                          sent as `authorization: Bearer <key>`; the tenant \
                                          is the key's."
                                .into(),
                            scheme: "Bearer".into(),
                            bearer_format: String::new(),
                        },
                    )),
                },
            )]
            .into(),
            security_requirements: vec![a2a::SecurityRequirement {
                schemes: [(bearer, a2a::StringList { list: Vec::new() })].into(),
            }],
            default_input_modes: vec!["text/plain".into(), "application/json".into()],
            default_output_modes: vec!["text/plain".into()],
            skills: teams
                .into_iter()
                .map(|team| a2a::AgentSkill {
                    description: format!(
                        "Runs the AMAOS team `{team}` on the message's text; name it with \
                         metadata `{SKILL_KEY}: {team}`."
                    ),
                    tags: vec!["amaos".into(), "team".into()],
                    name: team.clone(),
                    id: team,
                    ..Default::default()
                })
                .collect(),
            signatures: Vec::new(),
            icon_url: None,
        })
    }
}

/// `lf.a2a.v1.A2AService` over the orchestrator.
#[derive(Clone)]
pub struct A2a {
    inner: Arc<Inner>,
}

impl A2a {
    /// The A2A service of `orchestrator`.
    pub fn new(orchestrator: &crate::Orchestrator) -> Self {
        Self {
            inner: orchestrator.inner.clone(),
        }
    }

    /// The generated server, for [`amaos_mesh::server::GrpcService::with`].
    pub fn server(self) -> A2aServiceServer<Self> {
        A2aServiceServer::new(self)
    }

    /// The verified caller, after the protocol version and the request's
    /// `tenant` (which must be the caller's own, or empty) are checked.
    async fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        tenant: &str,
    ) -> Result<Caller, Status> {
        if let Some(version) = metadata.get("a2a-version").and_then(|v| v.to_str().ok())
            && !version.trim().is_empty()
            && !(version.trim() == "1" || version.trim().starts_with("1."))
        {
            return Err(with_reason(
                Code::FailedPrecondition,
                format!(
                    "A2A version `{version}` is not served; this agent speaks {PROTOCOL_VERSION}"
                ),
                "VERSION_NOT_SUPPORTED",
                DOMAIN,
            ));
        }
        let caller = self.inner.authn.caller(metadata).await?;
        if !tenant.is_empty() && tenant != caller.tenant {
            return Err(Status::permission_denied(format!(
                "tenant `{tenant}` is not the caller's; the tenant comes from the key (leave it empty)"
            )));
        }
        Ok(caller)
    }

    /// `caller`'s task `id`, or A2A's TASK_NOT_FOUND.
    async fn task(&self, caller: &Caller, id: &str) -> Result<Task, Status> {
        match self.inner.task_of(caller, id).await {
            Ok(task) => Ok(task),
            Err(OrchestratorError::TaskNotFound(_)) => Err(task_not_found(id)),
            Err(other) => Err(other.into()),
        }
    }

    /// Starts a task for a new message, or answers a waiting one: the task
    /// after it.
    async fn send(
        &self,
        caller: &Caller,
        request: a2a::SendMessageRequest,
    ) -> Result<Task, Status> {
        let a2a::SendMessageRequest {
            tenant: _,
            message,
            configuration: _,
            metadata,
        } = request;
        let message = message.ok_or_else(|| invalid_params("message", "required"))?;
        if message.role == a2a::Role::Agent as i32 {
            return Err(invalid_params(
                "message.role",
                "a message to this agent comes from ROLE_USER",
            ));
        }
        let text = message_text(&message)?;
        if !message.task_id.is_empty() {
            return self.answer(caller, &message.task_id, &text).await;
        }
        let skill = skill_of(metadata.as_ref(), message.metadata.as_ref())?
            .or_else(|| self.inner.card.config.default_skill.clone());
        let Some(team) = skill else {
            let teams = self.inner.served_teams().await.unwrap_or_default();
            return Err(invalid_params(
                "metadata.skill",
                format!(
                    "name the skill (team) to run in the message's metadata `{SKILL_KEY}`; skills: {}",
                    teams.join(", ")
                ),
            ));
        };
        if message.message_id.len() > MAX_MESSAGE_ID {
            return Err(invalid_params(
                "message.message_id",
                format!("at most {MAX_MESSAGE_ID} bytes"),
            ));
        }
        let session_id = if message.context_id.is_empty() {
            amaos_mesh::new_id()
        } else {
            message.context_id.clone()
        };
        let submission = pb::SubmitTaskRequest {
            team: Some(pb::TeamRef {
                team: Some(pb::team_ref::Team::Name(team)),
            }),
            input: text,
            session_id,
            idempotency_key: if message.message_id.is_empty() {
                String::new()
            } else {
                format!("a2a:{}", message.message_id)
            },
            labels: [("a2a.message_id".to_owned(), message.message_id.clone())]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            ..Default::default()
        };
        let (task, _) = self.inner.submit(caller, submission).await?;
        Ok(task)
    }

    /// A message to an existing task: a decision on its pending approval.
    async fn answer(&self, caller: &Caller, task_id: &str, text: &str) -> Result<Task, Status> {
        let task = self.task(caller, task_id).await?;
        let pending = task
            .approvals
            .iter()
            .rev()
            .find(|a| a.state == ApprovalState::Pending)
            .filter(|_| task.state == TaskState::InputRequired);
        if pending.is_some_and(|p| p.tool == amaos_mesh::approval::INPUT) {
            // The swarm waits for a person's message: this is it.
            return self
                .inner
                .answer_input(caller, task_id, text.to_owned())
                .await;
        }
        let Some(pending) = pending else {
            return Err(unsupported(format!(
                "task `{task_id}` is {} and takes no message; only a task in \
                 TASK_STATE_INPUT_REQUIRED does (`approve` or `reject`)",
                state_name(task.state)
            )));
        };
        let (approve, comment) = decision_of(text).ok_or_else(|| {
            invalid_params(
                "message.parts",
                "answer a task waiting for approval with `approve` or `reject`, then an optional comment",
            )
        })?;
        let decision = crate::request::DecisionRequest::try_from(
            pb::DecideApprovalRequest {
                task_id: task_id.to_owned(),
                approval_id: pending.id.clone(),
                decision: if approve {
                    pb::Decision::Approve
                } else {
                    pb::Decision::Reject
                } as i32,
                comment,
            },
            &caller.principal,
        )?;
        let (_, task) = self.inner.decide(caller, decision).await?;
        Ok(task)
    }

    /// Waits until `task` stops (finished, or waiting for a person).
    /// Events up to `after` are the past (an answered task's earlier wait).
    async fn settle(&self, caller: &Caller, task: Task, after: u64) -> Result<Task, Status> {
        if settled(task.state) {
            return Ok(task);
        }
        let mut cursor = after;
        loop {
            let page = self
                .inner
                .backend
                .events(&caller.tenant, &task.id, cursor, POLL)
                .await
                .map_err(OrchestratorError::from)?
                .ok_or_else(|| task_not_found(&task.id))?;
            let mut stopped = page.finished;
            for event in &page.events {
                cursor = event.sequence;
                if let Some(Kind::StateChanged(change)) = &event.kind {
                    stopped |= TaskState::from_proto(change.to).is_some_and(settled);
                }
            }
            if stopped {
                return self.task(caller, &task.id).await;
            }
            // Nothing new for a while: the task as it stands decides.
            if page.events.is_empty() {
                let now = self.task(caller, &task.id).await?;
                if settled(now.state) {
                    return Ok(now);
                }
            }
        }
    }

    /// Where a message's updates start: for an answer to a waiting task, after
    /// everything the task recorded before it (taken before the answer, so
    /// nothing it causes is missed); for a new task, the beginning.
    async fn start_of(
        &self,
        caller: &Caller,
        request: &a2a::SendMessageRequest,
    ) -> Result<u64, Status> {
        match request.message.as_ref().map(|m| m.task_id.as_str()) {
            Some(id) if !id.is_empty() => self.last_sequence(caller, id).await,
            _ => Ok(0),
        }
    }

    /// Streams `task`: the task first, then its updates from event `after`,
    /// until it finishes or waits for a person.
    fn stream(&self, caller: Caller, task: Task, after: u64) -> UpdateStream {
        let (tx, rx) = mpsc::channel(64);
        let backend = self.inner.backend.clone();
        tokio::spawn(async move {
            let first = to_a2a(&task, None, true);
            if tx.send(Ok(payload(Update::Task(first)))).await.is_err() || settled(task.state) {
                return;
            }
            let id = task.id.clone();
            let context_id = context_of(&task);
            let mut cursor = after;
            loop {
                let page = tokio::select! {
                    page = backend.events(&caller.tenant, &id, cursor, POLL) => page,
                    () = tx.closed() => return,
                };
                let page = match page {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        let _ = tx.send(Err(task_not_found(&id))).await;
                        return;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(OrchestratorError::from(error).into())).await;
                        return;
                    }
                };
                for event in page.events {
                    cursor = event.sequence;
                    let (updates, stop) = match updates_of(&event, &id, &context_id) {
                        Some(Step::Updates(updates)) => (updates, false),
                        Some(Step::Settled(state)) => {
                            // The task as it now stands gives the output or the reason.
                            let task = match backend.get(&caller.tenant, &id).await {
                                Ok(Some(task)) => task,
                                Ok(None) => {
                                    let _ = tx.send(Err(task_not_found(&id))).await;
                                    return;
                                }
                                Err(error) => {
                                    let _ =
                                        tx.send(Err(OrchestratorError::from(error).into())).await;
                                    return;
                                }
                            };
                            (final_updates(&task, state), true)
                        }
                        None => (Vec::new(), false),
                    };
                    for update in updates {
                        if tx.send(Ok(payload(update))).await.is_err() {
                            return;
                        }
                    }
                    if stop {
                        return;
                    }
                }
                if page.finished {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// The sequence of `task`'s last event: where a subscription starts.
    async fn last_sequence(&self, caller: &Caller, id: &str) -> Result<u64, Status> {
        let mut cursor = 0;
        loop {
            let page = self
                .inner
                .backend
                .events(&caller.tenant, id, cursor, Duration::ZERO)
                .await
                .map_err(OrchestratorError::from)?
                .ok_or_else(|| task_not_found(id))?;
            match page.events.last() {
                Some(last) => cursor = last.sequence,
                None => return Ok(cursor),
            }
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<a2a::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl A2aService for A2a {
    async fn send_message(
        &self,
        request: Request<a2a::SendMessageRequest>,
    ) -> Result<Response<a2a::SendMessageResponse>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        let request = request.into_inner();
        let (history, immediately) = request
            .configuration
            .as_ref()
            .map_or((None, false), |c| (c.history_length, c.return_immediately));
        let history = history_length(history)?;
        let after = self.start_of(&caller, &request).await?;
        let task = self.send(&caller, request).await?;
        let task = if immediately {
            task
        } else {
            self.settle(&caller, task, after).await?
        };
        Ok(Response::new(a2a::SendMessageResponse {
            payload: Some(a2a::send_message_response::Payload::Task(to_a2a(
                &task, history, true,
            ))),
        }))
    }

    type SendStreamingMessageStream = UpdateStream;

    async fn send_streaming_message(
        &self,
        request: Request<a2a::SendMessageRequest>,
    ) -> Result<Response<Self::SendStreamingMessageStream>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        let request = request.into_inner();
        // An answer resumes a task: its updates from now on, not its past.
        let after = self.start_of(&caller, &request).await?;
        let task = self.send(&caller, request).await?;
        Ok(Response::new(self.stream(caller, task, after)))
    }

    async fn get_task(
        &self,
        request: Request<a2a::GetTaskRequest>,
    ) -> Result<Response<a2a::Task>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        require(&self.inner.policy, &caller, "read")?;
        let a2a::GetTaskRequest {
            id,
            history_length: h,
            ..
        } = request.into_inner();
        let history = history_length(h)?;
        let task = self.task(&caller, &id).await?;
        Ok(Response::new(to_a2a(&task, history, true)))
    }

    async fn list_tasks(
        &self,
        request: Request<a2a::ListTasksRequest>,
    ) -> Result<Response<a2a::ListTasksResponse>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        require(&self.inner.policy, &caller, "read")?;
        let a2a::ListTasksRequest {
            context_id,
            status,
            page_size,
            page_token,
            history_length: h,
            status_timestamp_after,
            include_artifacts,
            ..
        } = request.into_inner();
        let history = history_length(h)?;
        let limit = match page_size {
            None | Some(0) => DEFAULT_PAGE,
            Some(n) if (1..=MAX_PAGE as i32).contains(&n) => n as usize,
            Some(_) => {
                return Err(invalid_params("page_size", format!("1 to {MAX_PAGE}")));
            }
        };
        if page_token.len() > 128 {
            return Err(invalid_params("page_token", "not a token this agent gave"));
        }
        let state = match a2a::TaskState::try_from(status) {
            Ok(a2a::TaskState::Unspecified) => None,
            Ok(state) => match amaos_state(state) {
                Some(state) => Some(state),
                // States AMAOS never gives a task: nothing matches.
                None => {
                    return Ok(Response::new(a2a::ListTasksResponse {
                        page_size: limit as i32,
                        ..Default::default()
                    }));
                }
            },
            Err(_) => return Err(invalid_params("status", "not a TaskState")),
        };
        let after = status_timestamp_after
            .as_ref()
            .and_then(amaos_proto::time::system_time);
        let tasks = self
            .inner
            .backend
            .list(
                &caller.tenant,
                Some(page_token.as_str()).filter(|t| !t.is_empty()),
                state,
                None,
                limit,
            )
            .await
            .map_err(OrchestratorError::from)?;
        let next_page_token = if tasks.len() == limit {
            tasks.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let tasks: Vec<a2a::Task> = tasks
            .iter()
            .filter(|t| context_id.is_empty() || context_of(t) == context_id)
            .filter(|t| after.is_none_or(|after| t.updated_at > after))
            .map(|t| to_a2a(t, history, include_artifacts.unwrap_or(false)))
            .collect();
        Ok(Response::new(a2a::ListTasksResponse {
            total_size: tasks.len() as i32,
            tasks,
            next_page_token,
            page_size: limit as i32,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<a2a::CancelTaskRequest>,
    ) -> Result<Response<a2a::Task>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        let a2a::CancelTaskRequest { id, .. } = request.into_inner();
        let before = self.task(&caller, &id).await?;
        if before.state.is_terminal() {
            return Err(with_reason(
                Code::FailedPrecondition,
                format!(
                    "task `{id}` is {} and can no longer be cancelled",
                    state_name(before.state)
                ),
                "TASK_NOT_CANCELABLE",
                DOMAIN,
            ));
        }
        let task = self
            .inner
            .cancel(&caller, &id, "cancelled over A2A")
            .await?;
        Ok(Response::new(to_a2a(&task, None, true)))
    }

    type SubscribeToTaskStream = UpdateStream;

    async fn subscribe_to_task(
        &self,
        request: Request<a2a::SubscribeToTaskRequest>,
    ) -> Result<Response<Self::SubscribeToTaskStream>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        require(&self.inner.policy, &caller, "read")?;
        let id = request.into_inner().id;
        let after = self.last_sequence(&caller, &id).await?;
        let task = self.task(&caller, &id).await?;
        if task.state.is_terminal() {
            return Err(unsupported(format!(
                "task `{id}` is {}: there is nothing left to subscribe to (GetTask reads it)",
                state_name(task.state)
            )));
        }
        Ok(Response::new(self.stream(caller, task, after)))
    }

    async fn create_task_push_notification_config(
        &self,
        request: Request<a2a::TaskPushNotificationConfig>,
    ) -> Result<Response<a2a::TaskPushNotificationConfig>, Status> {
        self.caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        Err(no_push())
    }

    async fn get_task_push_notification_config(
        &self,
        request: Request<a2a::GetTaskPushNotificationConfigRequest>,
    ) -> Result<Response<a2a::TaskPushNotificationConfig>, Status> {
        self.caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        Err(no_push())
    }

    async fn list_task_push_notification_configs(
        &self,
        request: Request<a2a::ListTaskPushNotificationConfigsRequest>,
    ) -> Result<Response<a2a::ListTaskPushNotificationConfigsResponse>, Status> {
        self.caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        Err(no_push())
    }

    async fn get_extended_agent_card(
        &self,
        request: Request<a2a::GetExtendedAgentCardRequest>,
    ) -> Result<Response<a2a::AgentCard>, Status> {
        let caller = self
            .caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        require(&self.inner.policy, &caller, "read")?;
        Ok(Response::new(self.inner.agent_card().await?))
    }

    async fn delete_task_push_notification_config(
        &self,
        request: Request<a2a::DeleteTaskPushNotificationConfigRequest>,
    ) -> Result<Response<()>, Status> {
        self.caller(request.metadata(), &request.get_ref().tenant)
            .await?;
        Err(no_push())
    }
}

/// True for the states a caller waiting on a task stops at.
fn settled(state: TaskState) -> bool {
    state.is_terminal() || state == TaskState::InputRequired
}

/// The A2A state of an AMAOS state.
pub fn a2a_state(state: TaskState) -> a2a::TaskState {
    match state {
        TaskState::Pending | TaskState::Queued => a2a::TaskState::Submitted,
        TaskState::Running => a2a::TaskState::Working,
        // A judge's escalation still has an output: completed, and the
        // metadata `amaos.state` says a person should review it.
        TaskState::Succeeded | TaskState::NeedsReview => a2a::TaskState::Completed,
        TaskState::Failed | TaskState::TimedOut => a2a::TaskState::Failed,
        TaskState::Cancelled => a2a::TaskState::Canceled,
        TaskState::InputRequired => a2a::TaskState::InputRequired,
    }
}

/// The AMAOS state an A2A state filter selects; `None` for states AMAOS
/// never gives (REJECTED, AUTH_REQUIRED).
fn amaos_state(state: a2a::TaskState) -> Option<TaskState> {
    Some(match state {
        a2a::TaskState::Submitted => TaskState::Queued,
        a2a::TaskState::Working => TaskState::Running,
        a2a::TaskState::Completed => TaskState::Succeeded,
        a2a::TaskState::Failed => TaskState::Failed,
        a2a::TaskState::Canceled => TaskState::Cancelled,
        a2a::TaskState::InputRequired => TaskState::InputRequired,
        a2a::TaskState::Unspecified | a2a::TaskState::Rejected | a2a::TaskState::AuthRequired => {
            return None;
        }
    })
}

fn state_name(state: TaskState) -> &'static str {
    pb::TaskState::from(state).as_str_name()
}

/// The A2A context of a task: its memory session, else its own id.
fn context_of(task: &Task) -> String {
    if task.session_id.is_empty() {
        task.id.clone()
    } else {
        task.session_id.clone()
    }
}

fn text_part(text: impl Into<String>) -> a2a::Part {
    a2a::Part {
        content: Some(a2a::part::Content::Text(text.into())),
        media_type: "text/plain".into(),
        ..Default::default()
    }
}

fn string(text: impl Into<String>) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(text.into())),
    }
}

fn metadata(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Option<Struct> {
    Some(Struct {
        fields: pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// An agent's message on `task`.
fn agent_message(
    task_id: &str,
    context_id: &str,
    id: String,
    parts: Vec<a2a::Part>,
) -> a2a::Message {
    a2a::Message {
        message_id: id,
        context_id: context_id.to_owned(),
        task_id: task_id.to_owned(),
        role: a2a::Role::Agent as i32,
        parts,
        ..Default::default()
    }
}

/// What the task's status says beside its state: why it failed, or which
/// call waits for whose decision and how to give it.
fn status_message(task: &Task) -> Option<a2a::Message> {
    let context_id = context_of(task);
    let message = |parts| {
        Some(agent_message(
            &task.id,
            &context_id,
            format!("{}-status-{}", task.id, task.attempt),
            parts,
        ))
    };
    match task.state {
        TaskState::InputRequired => {
            let pending = task
                .approvals
                .iter()
                .rev()
                .find(|a| a.state == ApprovalState::Pending)?;
            let arguments: serde_json::Value =
                serde_json::from_str(&pending.arguments).unwrap_or(serde_json::Value::Null);
            let details = serde_json::json!({
                "approval_id": pending.id,
                "agent": pending.agent,
                "tool": pending.tool,
                "arguments": arguments,
                "arguments_sha256": pending.arguments_sha256,
                "reason": pending.reason,
                "expires_at": humantime::format_rfc3339_seconds(pending.expires_at).to_string(),
            });
            if pending.tool == amaos_mesh::approval::INPUT {
                return message(vec![text_part(format!(
                    "Agent `{}` handed the conversation to you; answer this task with a message \
                     to continue it. Its last message: {}",
                    pending.agent,
                    arguments
                        .get("last_message")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                ))]);
            }
            message(vec![
                text_part(format!(
                    "Agent `{}` wants to call `{}`, which needs a person's approval ({}). \
                     Answer this task with `approve` or `reject`, then an optional comment.",
                    pending.agent, pending.tool, pending.reason
                )),
                a2a::Part {
                    content: Some(a2a::part::Content::Data(amaos_proto::json::json_to_value(
                        &details,
                    ))),
                    media_type: "application/json".into(),
                    ..Default::default()
                },
            ])
        }
        TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled => {
            let why = task.error.as_ref().map(|e| e.message.clone())?;
            message(vec![text_part(why)])
        }
        TaskState::NeedsReview => message(vec![text_part(
            "A judge escalated the output for a person's review.",
        )]),
        _ => None,
    }
}

fn output_artifact(task: &Task) -> Option<a2a::Artifact> {
    let output = task.output.as_ref()?;
    Some(a2a::Artifact {
        artifact_id: format!("{}-output", task.id),
        name: "output".into(),
        description: format!("The output of team `{}`.", task.team),
        parts: vec![text_part(output.clone())],
        ..Default::default()
    })
}

/// An AMAOS task as an A2A task: `history` messages at most (all when
/// `None`), its artifacts when `artifacts`.
pub fn to_a2a(task: &Task, history: Option<usize>, artifacts: bool) -> a2a::Task {
    let context_id = context_of(task);
    let input = a2a::Message {
        message_id: task
            .labels
            .get("a2a.message_id")
            .cloned()
            .unwrap_or_else(|| format!("{}-input", task.id)),
        context_id: context_id.clone(),
        task_id: task.id.clone(),
        role: a2a::Role::User as i32,
        parts: vec![text_part(task.input.clone())],
        ..Default::default()
    };
    // Built once: the status carries it, and the history ends with it.
    let status = status_message(task);
    let mut messages = vec![input];
    messages.extend(status.clone());
    let keep = history.unwrap_or(messages.len()).min(messages.len());
    let history = messages.split_off(messages.len() - keep);
    a2a::Task {
        id: task.id.clone(),
        context_id,
        status: Some(a2a::TaskStatus {
            state: a2a_state(task.state) as i32,
            message: status,
            timestamp: Some(timestamp(task.updated_at)),
        }),
        artifacts: if artifacts {
            output_artifact(task).into_iter().collect()
        } else {
            Vec::new()
        },
        history,
        metadata: metadata([
            ("amaos.team", string(task.team.clone())),
            ("amaos.state", string(state_name(task.state))),
            (
                "amaos.attempt",
                Value {
                    kind: Some(value::Kind::NumberValue(f64::from(task.attempt))),
                },
            ),
        ]),
    }
}

enum Update {
    Task(a2a::Task),
    Status(a2a::TaskStatusUpdateEvent),
    Artifact(a2a::TaskArtifactUpdateEvent),
}

fn payload(update: Update) -> a2a::StreamResponse {
    use a2a::stream_response::Payload as P;
    a2a::StreamResponse {
        payload: Some(match update {
            Update::Task(task) => P::Task(task),
            Update::Status(status) => P::StatusUpdate(status),
            Update::Artifact(artifact) => P::ArtifactUpdate(artifact),
        }),
    }
}

/// What one task event becomes in a stream.
enum Step {
    /// Updates to send; the stream goes on.
    Updates(Vec<Update>),
    /// The task stopped in this state: the stream ends after its last updates.
    Settled(TaskState),
}

fn status_update(
    task_id: &str,
    context_id: &str,
    state: a2a::TaskState,
    message: Option<a2a::Message>,
) -> Update {
    Update::Status(a2a::TaskStatusUpdateEvent {
        task_id: task_id.to_owned(),
        context_id: context_id.to_owned(),
        status: Some(a2a::TaskStatus {
            state: state as i32,
            message,
            timestamp: Some(timestamp(std::time::SystemTime::now())),
        }),
        metadata: None,
    })
}

fn updates_of(event: &pb::TaskEvent, task_id: &str, context_id: &str) -> Option<Step> {
    match event.kind.as_ref()? {
        Kind::StateChanged(change) => {
            let state = TaskState::from_proto(change.to)?;
            if settled(state) {
                return Some(Step::Settled(state));
            }
            Some(Step::Updates(vec![status_update(
                task_id,
                context_id,
                a2a_state(state),
                None,
            )]))
        }
        Kind::RunEvent(run) => match run.payload.as_ref()? {
            // What an agent says is progress: a WORKING update carrying it.
            Payload::Message(message) if message.role == "assistant" => {
                let mut said = agent_message(
                    task_id,
                    context_id,
                    format!("{task_id}-{}", event.sequence),
                    vec![text_part(message.content.clone())],
                );
                said.metadata = metadata([("amaos.agent", string(run.agent.clone()))]);
                Some(Step::Updates(vec![status_update(
                    task_id,
                    context_id,
                    a2a::TaskState::Working,
                    Some(said),
                )]))
            }
            // A crew task's output is an artifact of its own.
            Payload::TaskCompleted(done) => Some(Step::Updates(vec![Update::Artifact(
                a2a::TaskArtifactUpdateEvent {
                    task_id: task_id.to_owned(),
                    context_id: context_id.to_owned(),
                    artifact: Some(a2a::Artifact {
                        artifact_id: format!("{task_id}-crew-{}", done.task),
                        name: done.task.clone(),
                        description: format!("The output of crew task `{}`.", done.task),
                        parts: vec![text_part(done.output.clone())],
                        ..Default::default()
                    }),
                    append: false,
                    last_chunk: true,
                    metadata: metadata([("amaos.agent", string(run.agent.clone()))]),
                },
            )])),
            _ => None,
        },
    }
}

/// The last updates of a stream: the output (when there is one), then the
/// final status.
fn final_updates(task: &Task, state: TaskState) -> Vec<Update> {
    let context_id = context_of(task);
    let mut updates = Vec::new();
    if let Some(artifact) = output_artifact(task) {
        updates.push(Update::Artifact(a2a::TaskArtifactUpdateEvent {
            task_id: task.id.clone(),
            context_id: context_id.clone(),
            artifact: Some(artifact),
            append: false,
            last_chunk: true,
            metadata: None,
        }));
    }
    updates.push(status_update(
        &task.id,
        &context_id,
        a2a_state(state),
        status_message(task),
    ));
    updates
}

/// The input a message carries: its text parts and JSON data parts, in order.
fn message_text(message: &a2a::Message) -> Result<String, Status> {
    let mut pieces = Vec::with_capacity(message.parts.len());
    for (i, part) in message.parts.iter().enumerate() {
        match &part.content {
            Some(a2a::part::Content::Text(text)) => pieces.push(text.clone()),
            Some(a2a::part::Content::Data(data)) => pieces.push(
                serde_json::to_string(&amaos_proto::json::value_to_json(data)).unwrap_or_default(),
            ),
            Some(a2a::part::Content::Raw(_) | a2a::part::Content::Url(_)) => {
                return Err(with_reason(
                    Code::InvalidArgument,
                    format!(
                        "message.parts[{i}]: files (raw bytes or URLs) are not accepted; send text or JSON data"
                    ),
                    "CONTENT_TYPE_NOT_SUPPORTED",
                    DOMAIN,
                ));
            }
            None => {
                return Err(invalid_params(
                    "message.parts",
                    format!("part {i} is empty"),
                ));
            }
        }
    }
    let text = pieces.join("\n");
    if text.trim().is_empty() {
        return Err(invalid_params("message.parts", "no text"));
    }
    Ok(text)
}

/// The skill a message names in its request's or its own metadata.
fn skill_of(request: Option<&Struct>, message: Option<&Struct>) -> Result<Option<String>, Status> {
    for metadata in [request, message].into_iter().flatten() {
        if let Some(value) = metadata.fields.get(SKILL_KEY) {
            return match &value.kind {
                Some(value::Kind::StringValue(skill)) if !skill.is_empty() => {
                    Ok(Some(skill.clone()))
                }
                _ => Err(invalid_params("metadata.skill", "a team's name (a string)")),
            };
        }
    }
    Ok(None)
}

/// `approve` or `reject` (and their usual synonyms) at the start of `text`,
/// and the rest as the comment.
fn decision_of(text: &str) -> Option<(bool, String)> {
    let text = text.trim();
    let (word, rest) = text
        .split_once(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .unwrap_or((text, ""));
    let approve = match word.to_ascii_lowercase().as_str() {
        "approve" | "approved" | "yes" => true,
        "reject" | "rejected" | "deny" | "no" => false,
        _ => return None,
    };
    Some((approve, rest.trim().to_owned()))
}

fn history_length(value: Option<i32>) -> Result<Option<usize>, Status> {
    match value {
        None => Ok(None),
        Some(n) => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid_params("history_length", "at least 0")),
    }
}

fn invalid_params(field: &str, why: impl Into<String>) -> Status {
    with_reason(
        Code::InvalidArgument,
        format!("{field}: {}", why.into()),
        "INVALID_PARAMS",
        DOMAIN,
    )
}

fn unsupported(message: String) -> Status {
    with_reason(
        Code::FailedPrecondition,
        message,
        "UNSUPPORTED_OPERATION",
        DOMAIN,
    )
}

fn task_not_found(id: &str) -> Status {
    with_reason(
        Code::NotFound,
        format!("task `{id}` not found"),
        "TASK_NOT_FOUND",
        DOMAIN,
    )
}

fn no_push() -> Status {
    with_reason(
        Code::FailedPrecondition,
        "push notifications are not offered by this agent (its card says so); \
         stream with SendStreamingMessage or SubscribeToTask",
        "PUSH_NOTIFICATION_NOT_SUPPORTED",
        DOMAIN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_read_from_the_first_word() {
        assert_eq!(decision_of("approve"), Some((true, String::new())));
        assert_eq!(
            decision_of("  Reject: the amount is too high "),
            Some((false, "the amount is too high".into()))
        );
        assert_eq!(decision_of("yes, go"), Some((true, "go".into())));
        assert_eq!(decision_of("maybe later"), None);
        assert_eq!(decision_of(""), None);
    }

    #[test]
    fn every_state_maps_and_waiting_ones_round_trip() {
        for state in [
            TaskState::Pending,
            TaskState::Queued,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::TimedOut,
            TaskState::NeedsReview,
            TaskState::InputRequired,
        ] {
            assert_ne!(a2a_state(state), a2a::TaskState::Unspecified, "{state:?}");
        }
        assert_eq!(
            amaos_state(a2a::TaskState::InputRequired),
            Some(TaskState::InputRequired)
        );
        assert_eq!(amaos_state(a2a::TaskState::AuthRequired), None);
    }

    #[test]
    fn files_are_refused_and_text_and_data_are_joined() {
        let mut message = a2a::Message {
            parts: vec![
                text_part("summarise"),
                a2a::Part {
                    content: Some(a2a::part::Content::Data(amaos_proto::json::json_to_value(
                        &serde_json::json!({"k": 1}),
                    ))),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(message_text(&message).unwrap(), "summarise\n{\"k\":1}");
        message.parts.push(a2a::Part {
            content: Some(a2a::part::Content::Url("https://x/y.pdf".into())),
            ..Default::default()
        });
        let refused = message_text(&message).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("message.parts[2]"),
            "{refused:?}"
        );
        assert!(message_text(&a2a::Message::default()).is_err());
    }

    #[test]
    fn history_keeps_the_latest_messages() {
        let mut task = Task::sample("t");
        task.state = TaskState::Failed;
        task.error = Some(crate::task::TaskError {
            class: crate::task::ErrorClass::Tool,
            message: "boom".into(),
        });
        let all = to_a2a(&task, None, true);
        assert_eq!(all.history.len(), 2);
        assert_eq!(all.history[0].role, a2a::Role::User as i32);
        let last = to_a2a(&task, Some(1), true);
        assert_eq!(last.history.len(), 1);
        assert_eq!(last.history[0].role, a2a::Role::Agent as i32);
        assert!(to_a2a(&task, Some(0), true).history.is_empty());
        assert_eq!(all.status.unwrap().state, a2a::TaskState::Failed as i32);
        assert_eq!(
            all.context_id, task.id,
            "no session: the task is its own context"
        );
    }
}
