//! The dispatcher: each orchestrator replica claims ready tasks from the
//! shared queue, asks the router for a worker, runs the attempt there while
//! renewing its lease, and records the outcome through the retry policy:
//! retry with jittered backoff, move to the next fallback, or give up.
//! Background loops promote due retries and take over attempts whose
//! dispatcher died (their lease expired).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use amaos_mesh::caller::{Caller, RunScope};
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::Limits;
use amaos_mesh::retry::Backoff;
use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::{Applied, Claim, Claimed, Lease, Outcome, Record, TaskBackend};
use crate::metrics::TaskMetrics;
use crate::task::{
    Approval, ApprovalState, ErrorClass, MAX_APPROVALS, Task, TaskError, TaskState, TeamSource,
};
use crate::usage::{Budgets, Day, Usage};

mod worker;

const MAX_CACHED_CHANNELS: usize = 1024;
/// Most run events recorded in one write.
const MAX_BATCH: usize = 64;
/// Tasks one sweep looks at.
const SWEEP_LIMIT: usize = 500;
/// Longest pause between asks for a worker while none can take a run.
const MAX_ROUTE_WAIT: Duration = Duration::from_secs(1);
/// How often the maintenance loop measures the queue for the metrics.
const QUEUE_MEASURE_EVERY: Duration = Duration::from_secs(5);

/// What a recorded outcome counts as in the metrics.
enum Counted {
    Final(TaskState),
    Retry(bool),
    Waiting,
}

/// How a run on a worker ended without failing.
enum Ended {
    /// The team's output.
    Output(String),
    /// A tool call needs a person's approval (the agent that called it).
    Input(agents::ApprovalRequested, String),
}

/// Channels to agents workers, by address.
pub struct WorkerChannels {
    channels: Mutex<HashMap<String, MeshChannel>>,
    dialer: client::Dialer,
    limits: Limits,
}

impl WorkerChannels {
    /// An empty cache.
    pub fn new(limits: Limits, dialer: client::Dialer) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            dialer,
            limits,
        }
    }

    /// The channel to `address`.
    pub fn get(&self, address: &str) -> Result<MeshChannel, client::ChannelError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        let channel = self.dialer.channel("agents", address)?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// How the dispatcher runs.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// This replica's name in the queue.
    pub consumer: String,
    /// How long an attempt's lease lasts without renewal.
    pub lease: Duration,
    /// Attempts this replica runs at once.
    pub max_in_flight: usize,
    /// Parallel claim loops.
    pub claimers: usize,
    /// How long a gated tool call waits for a person.
    pub approval_ttl: Duration,
}

/// Where the dispatcher accounts for attempts: the metrics, and the usage
/// store with the budgets held against it.
pub struct Accounting {
    /// The orchestrator's metrics.
    pub metrics: TaskMetrics,
    /// Usage and the monthly caps.
    pub budgets: Arc<Budgets>,
}

/// A failure of one attempt, before the policy decides what follows.
struct Failure {
    class: ErrorClass,
    message: String,
    /// Whose failure it was, for the circuit breakers.
    blame: Blame,
    /// Ends the task whatever the retry policy says (a spent budget).
    terminal: bool,
}

/// Whose failure ended an attempt, as the router's breakers count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blame {
    /// Nobody's: the router, the store, the task's own input, a refusal.
    None,
    /// The worker's own (a broken stream, a crash mid-run).
    Worker,
    /// The team's, on a live worker (its provider, an internal error).
    Team,
}

impl Failure {
    fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            blame: Blame::None,
            terminal: false,
        }
    }

    fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    fn blaming(mut self, blame: Blame) -> Self {
        self.blame = blame;
        self
    }
}

/// Why a run did not start on the worker the router chose.
enum Refusal {
    /// The worker is at capacity: try another, or wait; no attempt is spent.
    Busy,
    /// The worker could not be reached: the run never started, so no attempt
    /// is spent either; its breaker opens at once and another is tried.
    Unreachable(String),
    /// Anything else ends the attempt.
    Failed(Failure),
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

/// Claims and runs attempts.
pub struct Dispatcher {
    backend: Arc<dyn TaskBackend>,
    tokens: crate::authn::RunTokens,
    router: RouterServiceClient<MeshChannel>,
    workers: WorkerChannels,
    metrics: TaskMetrics,
    budgets: Arc<Budgets>,
    config: DispatchConfig,
    /// Attempts running here: their claims (to hand back on drain) and the
    /// tokens that stop them.
    running: Mutex<HashMap<String, (Claim, CancellationToken)>>,
    slots: Arc<Semaphore>,
    /// Set once the drain has handed this replica's attempts back: an
    /// attempt stopped after that records nothing (another replica owns it).
    handed_back: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    /// A dispatcher over `backend`, routing through `router`.
    pub fn new(
        backend: Arc<dyn TaskBackend>,
        router: RouterServiceClient<MeshChannel>,
        tokens: crate::authn::RunTokens,
        limits: Limits,
        dialer: client::Dialer,
        config: DispatchConfig,
        Accounting { metrics, budgets }: Accounting,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            tokens,
            router,
            metrics,
            budgets,
            workers: WorkerChannels::new(limits, dialer),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            running: Mutex::new(HashMap::new()),
            handed_back: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops a locally running attempt of `task_id` at once (other replicas
    /// notice a cancellation when they next renew their lease).
    pub fn stop_local(&self, task_id: &str) {
        if let Some((_, token)) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
        {
            token.cancel();
        }
    }

    /// Attempts running here now.
    pub fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.slots.available_permits()
    }

    /// Claims and runs attempts until `shutdown`; then stops claiming and
    /// waits up to `drain` for the attempts under way. Those still running
    /// then are handed back (their leases released), so another replica takes
    /// them over at once instead of after a lease.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, drain: Duration) {
        let mut loops = Vec::new();
        for _ in 0..self.config.claimers.max(1) {
            loops.push(tokio::spawn(self.clone().claim_loop(shutdown.clone())));
        }
        loops.push(tokio::spawn(
            self.clone().maintenance_loop(shutdown.clone()),
        ));
        for handle in loops {
            let _ = handle.await;
        }
        let all = self.config.max_in_flight as u32;
        if tokio::time::timeout(drain, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            self.hand_back().await;
        }
    }

    /// Releases the lease of every attempt still running here, then stops
    /// them: another replica takes each over at once, and what this one would
    /// still write is fenced off.
    async fn hand_back(&self) {
        let held: Vec<(Claim, CancellationToken)> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        tracing::warn!(
            in_flight = held.len(),
            "drain deadline passed; handing unfinished attempts back"
        );
        self.handed_back
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for (claim, stop) in held {
            match self.backend.release(&claim).await {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(task_id = %claim.task.id, %error, "could not hand an attempt back; another replica takes it over when its lease expires")
                }
            }
            stop.cancel();
        }
    }

    async fn claim_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // Claiming fails only when the store does: back off while it does.
        const CLAIM_BACKOFF: Backoff =
            Backoff::doubling(Duration::from_millis(50), Duration::from_secs(2));
        let mut failures = 0u32;
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let claimed = tokio::select! {
                () = shutdown.cancelled() => return,
                claimed = self.backend.claim(&self.config.consumer, self.config.lease) => claimed,
            };
            match claimed {
                Ok(Claimed::Attempt(claim)) => {
                    failures = 0;
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.run_attempt(*claim).await;
                        drop(permit);
                    });
                }
                Ok(Claimed::Empty) => {}
                Err(error) => {
                    tracing::warn!(%error, "claiming work failed; backing off");
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(CLAIM_BACKOFF.wait(failures)).await;
                }
            }
        }
    }

    async fn maintenance_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // At least every second: an attempt handed back by a draining
        // replica is claimable at once, and waits for this pass (XAUTOCLAIM
        // takes only entries idle longer than a lease, so passes more often
        // than that change only how soon a hand-back is taken).
        let reclaim_every = (self.config.lease / 2)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(100));
        let mut last_reclaim = tokio::time::Instant::now();
        let sweep_every = (self.config.lease * 2).max(Duration::from_secs(1));
        let mut last_sweep = tokio::time::Instant::now();
        let mut last_measure: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.backend.promote().await {
                tracing::warn!(%error, "promoting delayed retries failed");
            }
            if last_measure.is_none_or(|at| at.elapsed() >= QUEUE_MEASURE_EVERY) {
                last_measure = Some(tokio::time::Instant::now());
                match self.backend.queue_stats().await {
                    Ok(stats) => self.metrics.queue(stats.depth, stats.oldest),
                    Err(error) => tracing::debug!(%error, "measuring the queue failed"),
                }
            }
            if last_sweep.elapsed() >= sweep_every {
                last_sweep = tokio::time::Instant::now();
                // Tasks a crash or a lost write left outside every structure,
                // and deadlines of tasks that never ran.
                match self.backend.sweep(self.config.lease, SWEEP_LIMIT).await {
                    Ok(swept) if swept.repaired() > 0 || swept.consumers_removed > 0 => {
                        tracing::warn!(?swept, "the sweep repaired stranded tasks");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "sweeping for stranded tasks failed"),
                }
            }
            if last_reclaim.elapsed() < reclaim_every {
                continue;
            }
            last_reclaim = tokio::time::Instant::now();
            let free = self.slots.available_permits().min(100);
            if free == 0 {
                continue;
            }
            match self
                .backend
                .reclaim(&self.config.consumer, self.config.lease, free)
                .await
            {
                Ok(claims) => {
                    for claim in claims {
                        tracing::warn!(task_id = %claim.task.id, attempt = claim.attempt(), "took over a stalled attempt");
                        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                            break;
                        };
                        self.metrics.took_over();
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.run_attempt(claim).await;
                            drop(permit);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "reclaiming stalled attempts failed"),
            }
        }
    }

    /// Runs one claimed attempt to its recorded outcome.
    pub async fn run_attempt(self: &Arc<Self>, claim: Claim) {
        let id = claim.task.id.clone();
        let stop = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (claim.clone(), stop.clone()));
        let renewals = tokio::spawn(self.clone().keep_lease(claim.clone(), stop.clone()));
        self.metrics.attempt_started(&claim.task);
        let started = std::time::Instant::now();
        let mut usage = Usage::default();
        let team = claim.task.current_target().0;
        // One trace per attempt: its own root, which the route, the run on
        // the worker and everything the run calls join.
        let span = tracing::info_span!(
            parent: None,
            "task_attempt",
            otel.name = %format!("task_attempt {team}"),
            amaos.task.id = %claim.task.id,
            amaos.task.attempt = claim.attempt(),
            amaos.team.name = %team,
            amaos.tenant = %claim.task.tenant,
        );
        let outcome =
            tracing::Instrument::instrument(self.attempt(&claim, &stop, &mut usage), span).await;
        self.metrics.attempt_ended();
        usage.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        usage.attempts = 1;
        renewals.abort();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let outcome = match outcome {
            Some(outcome) => outcome,
            // Handed back on drain: the task is still RUNNING under this
            // attempt number until another replica takes it over, so a
            // "stopped" outcome written now would not be fenced and would
            // end the task CANCELLED. Write nothing; the taker frees the slot.
            None if self.handed_back.load(std::sync::atomic::Ordering::SeqCst) => {
                self.add_usage(&claim.task, &team, &usage).await;
                return;
            }
            // Cancelled or taken over: release our hold; the write is fenced.
            None => Outcome::Finished {
                state: TaskState::Cancelled,
                error: TaskError {
                    class: ErrorClass::Cancelled,
                    message: "stopped".into(),
                },
            },
        };
        let counted = match &outcome {
            Outcome::Succeeded { .. } => Counted::Final(TaskState::Succeeded),
            Outcome::Finished { state, .. } => Counted::Final(*state),
            Outcome::Retry { next_stage, .. } => Counted::Retry(*next_stage),
            Outcome::AwaitInput(_) => Counted::Waiting,
        };
        match self.backend.finish(&claim, outcome).await {
            Ok(Applied::Recorded) => match counted {
                Counted::Final(state) => self.metrics.finished(&claim.task, state),
                Counted::Retry(next_stage) => self.metrics.retried(&claim.task, next_stage),
                Counted::Waiting => {}
            },
            Ok(Applied::Stale | Applied::LogFull) => {}
            Err(error) => {
                tracing::error!(task_id = %id, %error, "recording the outcome failed; the attempt will be reclaimed")
            }
        }
        // After the outcome, so recording it never waits on the usage store.
        self.add_usage(&claim.task, &team, &usage).await;
    }

    async fn keep_lease(self: Arc<Self>, claim: Claim, stop: CancellationToken) {
        let every = (self.config.lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            match self.backend.renew(&claim, self.config.lease).await {
                Ok(Lease::Held) => {}
                Ok(Lease::Lost | Lease::Finished) => {
                    stop.cancel();
                    return;
                }
                Err(error) => tracing::warn!(%error, "renewing a lease failed"),
            }
        }
    }

    /// Adds an ended attempt's usage to its tenant, `team` (the one it ran),
    /// day and task. A store that fails loses this attempt's usage, logged;
    /// the task goes on.
    async fn add_usage(&self, task: &Task, team: &str, usage: &Usage) {
        let day = Day::of(SystemTime::now());
        if let Err(error) = self
            .budgets
            .store()
            .add(&task.tenant, team, &task.id, day, usage)
            .await
        {
            tracing::warn!(task_id = %task.id, %error, ?usage, "recording an attempt's usage failed");
        }
    }

    /// Runs the attempt; `None` when it was stopped (cancelled or taken over).
    async fn attempt(
        &self,
        claim: &Claim,
        stop: &CancellationToken,
        usage: &mut Usage,
    ) -> Option<Outcome> {
        let task = &claim.task;
        if task.stage_attempts > task.retry.max_attempts {
            // Reclaimed once too often: its workers or dispatchers keep dying.
            let failure = Failure::new(
                ErrorClass::Transient,
                format!("{} attempts stalled", task.stage_attempts - 1),
            );
            return Some(decide(task, failure, false, rand::random()));
        }
        let remaining = task
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if remaining.is_zero() {
            return Some(timed_out());
        }
        let mut worker = None;
        let run = self.run_on_worker(claim, &mut worker, usage);
        let result = tokio::select! {
            () = stop.cancelled() => return None,
            result = tokio::time::timeout(remaining, run) => result,
        };
        let outcome = match result {
            Err(_) => timed_out(),
            Ok(Ok(Ended::Output(output))) => Outcome::Succeeded { output },
            Ok(Ok(Ended::Input(asked, agent))) => {
                self.await_input(task, claim.attempt(), asked, agent)
            }
            Ok(Err(failure)) => {
                if let Some(worker) = worker.take() {
                    // Only the worker's or the team's own failures feed the
                    // breakers; a run that ended for a reason of its own
                    // input shows a healthy worker.
                    let scope = match failure.blame {
                        Blame::Worker => Some(router::FailureScope::Worker),
                        Blame::Team => Some(router::FailureScope::Team),
                        Blame::None => None,
                    };
                    self.report(worker, task.current_target().0, scope, &failure.message);
                }
                let retryable = task.retry.retry_on.contains(&failure.class);
                return Some(decide(task, failure, retryable, rand::random()));
            }
        };
        if let Some(worker) = worker {
            self.report(worker, task.current_target().0, None, "");
        }
        Some(outcome)
    }

    /// Tells the router how a run on a worker went (`scope` of the failure,
    /// `None` for a success), without waiting.
    fn report(
        &self,
        worker_id: String,
        team: String,
        scope: Option<router::FailureScope>,
        error: &str,
    ) {
        let mut router = self.router.clone();
        let error = error.chars().take(512).collect();
        tokio::spawn(async move {
            let request = router::ReportOutcomeRequest {
                worker_id,
                team,
                success: scope.is_none(),
                error,
                scope: scope.unwrap_or(router::FailureScope::Unspecified) as i32,
            };
            if let Err(status) = router.report_outcome(request).await {
                tracing::debug!(code = ?status.code(), "reporting an outcome to the router failed");
            }
        });
    }
}

impl Dispatcher {
    /// The outcome of an attempt that stopped for a person: INPUT_REQUIRED
    /// with a new pending approval, or a failure when the request cannot be
    /// one (too many approvals, or a call already decided asked again).
    fn await_input(
        &self,
        task: &Task,
        attempt: u32,
        asked: agents::ApprovalRequested,
        agent: String,
    ) -> Outcome {
        let fail = |message: String| Outcome::Finished {
            state: TaskState::Failed,
            error: TaskError {
                class: ErrorClass::Invalid,
                message,
            },
        };
        if task.approvals.len() >= MAX_APPROVALS {
            return fail(format!(
                "the run asked for more than {MAX_APPROVALS} approvals"
            ));
        }
        if asked.call_id.is_empty() || task.approvals.iter().any(|a| a.call_id == asked.call_id) {
            // A decided call asked again: the worker ignored the decision.
            return fail(format!(
                "the run asked again for a decided call `{}`",
                asked.call_id
            ));
        }
        let now = SystemTime::now();
        let expires_at = (now + self.config.approval_ttl).min(task.deadline);
        let arguments = asked
            .arguments
            .as_ref()
            .map(|s| serde_json::Value::Object(amaos_proto::json::struct_to_map(s)))
            .unwrap_or_else(|| serde_json::json!({}));
        Outcome::AwaitInput(Box::new(Approval {
            id: amaos_mesh::new_id(),
            attempt,
            team: task.current_target().0,
            agent,
            tool: asked.tool,
            arguments: arguments.to_string(),
            arguments_sha256: asked.arguments_sha256,
            call_id: asked.call_id,
            reason: asked.reason,
            requested_at: now,
            expires_at,
            state: ApprovalState::Pending,
            decided_by: String::new(),
            comment: String::new(),
            decided_at: None,
        }))
    }
}

fn timed_out() -> Outcome {
    Outcome::Finished {
        state: TaskState::TimedOut,
        error: TaskError {
            class: ErrorClass::Transient,
            message: "the task did not finish before its deadline".into(),
        },
    }
}

/// The retry policy: retry within the stage, move to the next fallback, or
/// fail. `jitter` (in `[0, 1)`) places the backoff within its jitter range.
fn decide(task: &Task, failure: Failure, retryable: bool, jitter: f64) -> Outcome {
    let error = TaskError {
        class: failure.class,
        message: failure.message,
    };
    if failure.class == ErrorClass::Cancelled {
        return Outcome::Finished {
            state: TaskState::Cancelled,
            error,
        };
    }
    if failure.class == ErrorClass::Review {
        return Outcome::Finished {
            state: TaskState::NeedsReview,
            error,
        };
    }
    if failure.terminal {
        return Outcome::Finished {
            state: TaskState::Failed,
            error,
        };
    }
    if retryable && task.stage_attempts < task.retry.max_attempts {
        let after = task.retry.backoff(task.stage_attempts + 1, jitter);
        return Outcome::Retry {
            after,
            error,
            next_stage: false,
        };
    }
    // Invalid input fails the same way on any team; other failures may not.
    if failure.class != ErrorClass::Invalid && (task.stage as usize) < task.fallbacks.len() {
        return Outcome::Retry {
            after: Duration::ZERO,
            error,
            next_stage: true,
        };
    }
    Outcome::Finished {
        state: TaskState::Failed,
        error,
    }
}

#[cfg(test)]
mod tests;
