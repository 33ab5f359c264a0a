//! One attempt on a worker: the route to it (waiting within the task's
//! deadline while no worker is registered for the team), the `RunTeam`
//! stream, its events recorded in batches, and the outputs of a task's
//! dependencies given to it as context.

use super::*;

impl Dispatcher {
    pub(super) async fn run_on_worker(
        &self,
        claim: &Claim,
        chosen: &mut Option<String>,
        usage: &mut Usage,
    ) -> Result<Ended, Failure> {
        let task = &claim.task;
        let attempt = claim.attempt();
        // Workers that answered "at capacity" during this attempt. A refusal
        // means the run never started, so it costs no attempt: the next
        // worker is tried, and when every live one is busy the attempt waits
        // (with backoff, within the task's deadline and lease) for capacity.
        // The same holds for a worker that cannot be reached (it is reported
        // at once, so the router stops choosing it), and for a moment when
        // no worker is routable (none live, or the team's breaker open): the
        // attempt waits for one instead of spending itself.
        let mut busy: Vec<String> = Vec::new();
        let mut waits = 0u32;
        let mut stream = loop {
            let worker = match self.route(task, &busy).await {
                Ok(worker) => worker,
                Err(failure) if !busy.is_empty() || failure.class == ErrorClass::Transient => {
                    waits = waits.saturating_add(1);
                    let pause = task
                        .retry
                        .backoff(waits.min(16) + 1, rand::random::<f64>())
                        .clamp(Duration::from_millis(50), MAX_ROUTE_WAIT);
                    tracing::debug!(task_id = %task.id, busy = busy.len(), ?pause, reason = %failure.message, "no worker can take the run now; waiting");
                    tokio::time::sleep(pause).await;
                    busy.clear();
                    continue;
                }
                Err(failure) => return Err(failure),
            };
            *chosen = Some(worker.worker_id.clone());
            match self.start_run(task, attempt, &worker).await {
                Ok(stream) => break stream,
                Err(Refusal::Busy) => busy.push(worker.worker_id),
                Err(Refusal::Unreachable(message)) => {
                    tracing::warn!(task_id = %task.id, worker_id = %worker.worker_id, %message, "agents worker unreachable; trying another");
                    self.report(
                        worker.worker_id.clone(),
                        task.current_target().0,
                        Some(router::FailureScope::Unreachable),
                        &message,
                    );
                    *chosen = None;
                    busy.push(worker.worker_id);
                }
                Err(Refusal::Failed(failure)) => return Err(failure),
            }
        };
        let mut seen_first = false;
        loop {
            let first = match stream.message().await {
                Ok(Some(response)) => response.event,
                Ok(None) => {
                    return Err(Failure::new(
                        ErrorClass::Transient,
                        "the agents worker ended the run without a result",
                    )
                    .blaming(Blame::Worker));
                }
                Err(status) => {
                    return Err(Failure::new(
                        ErrorClass::Transient,
                        format!("agents worker: {}", status.message()),
                    )
                    .blaming(Blame::Worker));
                }
            };
            // Record what has already arrived in one write, keeping order.
            let mut batch: Vec<agents::RunEvent> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match futures::FutureExt::now_or_never(stream.message()) {
                    Some(Ok(Some(response))) => batch.extend(response.event),
                    _ => break,
                }
            }
            let end = batch.iter().find_map(|event| match &event.payload {
                Some(Payload::RunCompleted(done)) => Some(Ok(Ended::Output(done.output.clone()))),
                Some(Payload::ApprovalRequested(asked)) => {
                    Some(Ok(Ended::Input(asked.clone(), event.agent.clone())))
                }
                Some(Payload::RunFailed(failed)) => {
                    let class = ErrorClass::from_run(&failed.class);
                    // A live worker reported the failure: the team's, if anyone's.
                    let blame = match class {
                        ErrorClass::Transient | ErrorClass::Provider | ErrorClass::Internal => {
                            Blame::Team
                        }
                        _ => Blame::None,
                    };
                    Some(Err(
                        Failure::new(class, failed.reason.clone()).blaming(blame)
                    ))
                }
                _ => None,
            });
            if !batch.is_empty() {
                if !seen_first && attempt == 1 {
                    self.metrics.first_event(task);
                }
                seen_first = true;
                // What the run used is counted as it arrives: spent even if
                // recording the events fails.
                let used = Usage::of_events(&batch);
                usage.add(&used);
                self.record(&task.id, attempt, Record::Run(batch)).await?;
                if used.cost_usd > 0.0 && self.budgets.any() {
                    let team = task.current_target().0;
                    if let Err(over) = self
                        .budgets
                        .check(&task.tenant, &team, usage.cost_usd)
                        .await
                    {
                        // Ending the stream stops the run on the worker.
                        return Err(Failure::new(
                            ErrorClass::Budget,
                            format!("stopped mid-run: {over}"),
                        )
                        .terminal());
                    }
                }
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Asks the router for a worker of the task's current target, not one
    /// of `exclude`.
    pub(super) async fn route(
        &self,
        task: &Task,
        exclude: &[String],
    ) -> Result<router::Worker, Failure> {
        let (team, _, inline) = task.current_target();
        let route = self
            .router
            .clone()
            .route(router::RouteRequest {
                team,
                inline_spec: inline,
                required_capabilities: Vec::new(),
                session_key: task.session_id.clone(),
                exclude_worker_ids: exclude.to_vec(),
            })
            .await
            .map_err(|status| {
                Failure::new(
                    match status.code() {
                        // No worker declares the team *now*: submission
                        // checked that one did, so the registry was lost
                        // (Redis restarted empty) or every worker is
                        // restarting. They register again within a
                        // heartbeat; the attempt waits for them within the
                        // task's deadline instead of failing the task.
                        tonic::Code::NotFound => ErrorClass::Transient,
                        // The orchestrator's own identity refused: waiting
                        // will not help.
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                            ErrorClass::Internal
                        }
                        _ => ErrorClass::Transient,
                    },
                    format!("router: {}", status.message()),
                )
            })?
            .into_inner();
        route.worker.ok_or_else(|| {
            Failure::new(
                ErrorClass::Transient,
                "the router answered without a worker",
            )
        })
    }

    /// Records the worker and starts the run on it.
    pub(super) async fn start_run(
        &self,
        task: &Task,
        attempt: u32,
        worker: &router::Worker,
    ) -> Result<tonic::Streaming<agents::RunTeamResponse>, Refusal> {
        let (team, model_override, _) = task.current_target();
        let channel = self
            .workers
            .get(&worker.address)
            .map_err(|e| Refusal::Unreachable(e.to_string()))?;
        self.record(&task.id, attempt, Record::Worker(worker.worker_id.clone()))
            .await?;

        let context = self.dependency_outputs(task).await;
        let left = task
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // The decisions so far go to the run; the approved calls' grants go
        // into its token, which the tools service holds a gated call to.
        let (approvals, approved) = task.decisions();
        let run = RunScope {
            task: task.id.clone(),
            attempt,
            team: team.clone(),
            session: task.session_id.clone(),
            approved,
        };
        let token = self
            .tokens
            .issue(&task.tenant, &task.submitted_by, &run, left)
            .await
            .map_err(|message| Failure::new(ErrorClass::Transient, message))?;
        let caller = Caller {
            tenant: task.tenant.clone(),
            principal: task.submitted_by.clone(),
            roles: vec!["agent".into()],
            token: Some(token),
            task: Some(run),
        };
        let team_ref = match (&task.source, task.stage) {
            (TeamSource::Inline(yaml), 0) => {
                agents::run_team_request::Team::TeamSpecYaml(yaml.clone())
            }
            (TeamSource::Inline(yaml), _) if team == task.team => {
                agents::run_team_request::Team::TeamSpecYaml(yaml.clone())
            }
            _ => agents::run_team_request::Team::TeamName(team),
        };
        let mut request = caller.request(agents::RunTeamRequest {
            run_id: task.id.clone(),
            attempt,
            team: Some(team_ref),
            input: task.input.clone(),
            session_id: task.session_id.clone(),
            context,
            budget: None,
            model_alias_override: model_override.unwrap_or_default(),
            approvals,
        });
        if let Ok(left) = task.deadline.duration_since(SystemTime::now()) {
            request.set_timeout(left);
        }
        match AgentsServiceClient::new(channel)
            .max_decoding_message_size(self.workers.limits.max_message_bytes)
            .run_team(request)
            .await
        {
            Ok(response) => Ok(response.into_inner()),
            // At capacity (or shedding load): the run did not start.
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Err(Refusal::Busy),
            // Not reached (connection refused, reset before any answer): the
            // run did not start either.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                Err(Refusal::Unreachable(s.message().to_owned()))
            }
            Err(s) => Err(Refusal::Failed(Failure::new(
                // A spec the worker cannot run fails the same way on any worker.
                match s.code() {
                    tonic::Code::InvalidArgument | tonic::Code::NotFound => ErrorClass::Invalid,
                    _ => ErrorClass::Transient,
                },
                format!("agents worker refused the run: {}", s.message()),
            ))),
        }
    }

    pub(super) async fn record(
        &self,
        id: &str,
        attempt: u32,
        record: Record,
    ) -> Result<(), Failure> {
        match self.backend.record(id, attempt, record).await {
            Ok(Applied::Recorded) => Ok(()),
            // A newer attempt or a cancellation owns the task now.
            Ok(Applied::Stale) => Err(Failure::new(
                ErrorClass::Cancelled,
                "the attempt was superseded",
            )),
            Ok(Applied::LogFull) => Err(Failure::new(
                ErrorClass::Internal,
                "the run emitted more events than a task may keep",
            )),
            Err(error) => Err(Failure::new(ErrorClass::Transient, error.to_string())),
        }
    }

    /// The outputs of a workflow task's dependencies, as run context.
    pub(super) async fn dependency_outputs(&self, task: &Task) -> Vec<agents::ContextItem> {
        let mut context = Vec::new();
        for dep in &task.depends_on {
            if let Ok(Some(done)) = self.backend.get(&task.tenant, dep).await {
                context.push(agents::ContextItem {
                    source: done.workflow_key.clone(),
                    text: done.output.clone().unwrap_or_default(),
                });
            }
        }
        context
    }
}
