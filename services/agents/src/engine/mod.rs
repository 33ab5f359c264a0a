//! The team engine: runs one team on one input and emits every step as a
//! [`RunEvent`](pb::RunEvent): crews (sequential or hierarchical), group
//! chats (round robin, selector, swarm) and hybrids of the two, with an
//! optional judge. Each agent converses with its model, calls the tools its
//! spec allows through the tools service, recalls and remembers through the
//! memory service; one budget (steps, tokens, loop detection) spans the
//! whole run, nested teams included.
//!
//! # Layout
//!
//! - this file: the run's inputs, errors and event [`Emitter`], [`run_team`]
//!   and the dispatch of a (nested) team to its process.
//! - `budget`: the run's budget — step and token limits, loop detection.
//! - `step`: `StepId`, which step of a run a model
//!   conversation is, and the idempotency keys derived from it.
//! - `crew`: sequential crews and hierarchical ones (a manager delegating).
//! - `chat`: group chats — round robin, selector, swarm — and their stop
//!   conditions.
//! - `judge`: the judge's verdicts and the revise loop.
//! - `turn`: one agent's conversation with its model: tool calls, handoffs.
//! - `effects`: the calls to the tools and memory services.

mod budget;
mod chat;
mod crew;
mod effects;
mod judge;
mod step;
mod turn;

use std::time::{Duration, SystemTime};

use amaos_mesh::caller::Caller;
use amaos_mesh::client::MeshChannel;
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::time::timestamp;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use amaos_teams::{Process, Shape, TeamSpec};
use tokio::sync::mpsc;

use crate::provider::{ChatModel, ToolSpec};
use budget::Budget;
pub use turn::{HANDOFF_TOOL, HUMAN};

/// How a run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A budget was used up.
    #[error("{0}")]
    Budget(String),
    /// The model failed.
    #[error("model: {0}")]
    Provider(String),
    /// A service the run depends on failed.
    #[error("{0}")]
    Dependency(String),
    /// The caller went away; nobody is listening.
    #[error("the caller cancelled the run")]
    Cancelled,
    /// The judge escalated the output to a person.
    #[error("the judge escalated the output: {0}")]
    NeedsReview(String),
    /// A tool call needs a person's approval: the run stops before it.
    #[error("`{}` waits for a person's approval: {}", .asked.tool, .asked.reason)]
    InputRequired {
        /// The agent that called the tool.
        agent: String,
        /// The call.
        asked: Box<pb::ApprovalRequested>,
    },
    /// A person rejected a tool call (or nobody decided in time), and the
    /// spec says a rejection fails the task.
    #[error("{0}")]
    Rejected(String),
    /// The spec asks for something this worker refuses (a remote agent it
    /// may not call); retrying cannot help.
    #[error("{0}")]
    Invalid(String),
}

impl RunError {
    /// The failure class named in `RunFailed.class`.
    pub fn class(&self) -> &'static str {
        match self {
            RunError::Budget(_) => "budget",
            RunError::Provider(_) => "provider",
            RunError::Dependency(_) => "transient",
            RunError::Cancelled => "cancelled",
            RunError::NeedsReview(_) => "needs_review",
            RunError::InputRequired { .. } => "input_required",
            RunError::Rejected(_) => "tool",
            RunError::Invalid(_) => "invalid",
        }
    }
}

/// The clients a run uses.
#[derive(Clone)]
pub struct Services {
    /// The tools service.
    pub tools: ToolsServiceClient<MeshChannel>,
    /// The memory service.
    pub memory: MemoryServiceClient<MeshChannel>,
    /// The remote A2A agents members may be (`kind: a2a`).
    pub remotes: std::sync::Arc<crate::remote::Remotes>,
}

/// One run's inputs.
pub struct RunInput {
    /// Who the run acts for, with the token it was started with.
    pub caller: Caller,
    /// The model alias every agent uses instead of its own, if any.
    pub model_override: Option<String>,
    /// The run (task) id.
    pub run_id: String,
    /// The attempt number.
    pub attempt: u32,
    /// The tenant.
    pub tenant: String,
    /// The team input.
    pub input: String,
    /// The memory session.
    pub session_id: String,
    /// Outputs of earlier workflow tasks.
    pub context: Vec<(String, String)>,
    /// Most model calls.
    pub max_steps: u32,
    /// Most tokens.
    pub max_tokens: Option<u64>,
    /// Longest wall time.
    pub max_wall_time: Option<Duration>,
    /// People's decisions on the task's gated tool calls, by call id.
    pub approvals: std::collections::HashMap<String, pb::ApprovalDecision>,
}

/// Sends numbered events of one run.
pub struct Emitter {
    tx: mpsc::Sender<pb::RunEvent>,
    run_id: String,
    attempt: u32,
    sequence: u64,
    /// Counts usage and verdicts for this tenant.
    metrics: Option<(crate::metrics::AgentMetrics, String)>,
}

impl Emitter {
    /// An emitter sending on `tx`.
    pub fn new(tx: mpsc::Sender<pb::RunEvent>, run_id: &str, attempt: u32) -> Self {
        Self {
            tx,
            run_id: run_id.to_owned(),
            attempt,
            sequence: 0,
            metrics: None,
        }
    }

    /// The same emitter, counting the run's usage and verdicts for `tenant`.
    pub fn counting(mut self, metrics: crate::metrics::AgentMetrics, tenant: &str) -> Self {
        self.metrics = Some((metrics, tenant.to_owned()));
        self
    }

    /// Emits one event; fails when the receiver is gone.
    pub async fn emit(&mut self, agent: &str, payload: Payload) -> Result<(), RunError> {
        if let Some((metrics, tenant)) = &self.metrics {
            metrics.event(tenant, &payload);
        }
        decision_span(&payload);
        self.sequence += 1;
        let event = pb::RunEvent {
            sequence: self.sequence,
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            at: Some(timestamp(SystemTime::now())),
            agent: agent.to_owned(),
            payload: Some(payload),
        };
        self.tx.send(event).await.map_err(|_| RunError::Cancelled)
    }
}

/// A team-level decision as a span of its own under the run's (no GenAI
/// convention covers them): a speaker chosen, a handoff or a delegation, a
/// judge's verdict (a `revise` verdict starts a revision).
fn decision_span(payload: &Payload) {
    let span = match payload {
        Payload::SpeakerSelected(s) => tracing::info_span!(
            "select_speaker",
            otel.name = %format!("select_speaker {}", s.speaker),
            amaos.team.speaker = %s.speaker,
            amaos.team.method = %s.method,
        ),
        Payload::Handoff(h) => tracing::info_span!(
            "handoff",
            otel.name = %format!("handoff {} -> {}", h.from, h.to),
            amaos.team.from = %h.from,
            amaos.team.to = %h.to,
        ),
        Payload::Verdict(v) => {
            let verdict = match pb::VerdictKind::try_from(v.kind) {
                Ok(pb::VerdictKind::Pass) => "pass",
                Ok(pb::VerdictKind::Revise) => "revise",
                Ok(pb::VerdictKind::Escalate) => "escalate",
                _ => "unspecified",
            };
            tracing::info_span!(
                "judge_verdict",
                otel.name = %format!("judge_verdict {verdict}"),
                amaos.judge.verdict = verdict,
                amaos.judge.score = v.score,
                amaos.judge.revision = v.revision,
            )
        }
        _ => return,
    };
    // A decision has no duration of its own: the span marks it in the tree.
    drop(span.enter());
}

/// Runs `spec` and returns the final output; every step is emitted.
pub async fn run_team<M: ChatModel>(
    spec: &TeamSpec,
    input: &RunInput,
    model: &M,
    services: &Services,
    events: &mut Emitter,
) -> Result<String, RunError> {
    // The run's own token (task-scoped, role `agent`) goes on to tools and memory.
    let caller = &input.caller;
    // Real models are offered tool schemas; the scripted one needs none.
    let real_model = input
        .model_override
        .as_deref()
        .is_some_and(|m| m != amaos_teams::REPLAY_MODEL)
        || spec
            .agents
            .iter()
            .any(|a| a.model != amaos_teams::REPLAY_MODEL && !a.tools.is_empty());
    let tool_specs = if real_model {
        effects::tool_specs(services, caller).await?
    } else {
        Vec::new()
    };
    let mut budget = Budget::new(spec, input);
    events
        .emit(
            "",
            Payload::RunStarted(pb::RunStarted {
                team: spec.name.clone(),
                kind: spec.kind().into(),
                agents: spec.agents.iter().map(|a| a.name.clone()).collect(),
            }),
        )
        .await?;
    let ctx = Ctx {
        spec,
        text: &input.input,
        top: true,
        input,
        model,
        services,
        caller,
        tools: &tool_specs,
    };
    let (mut output, producer) = run_process(&ctx, &mut budget, events).await?;
    if let Some(judge) = &spec.judge {
        output = judge::run_judge(&ctx, judge, output, &producer, &mut budget, events).await?;
    }
    Ok(output)
}

/// What every part of one run shares.
struct Ctx<'a, M> {
    /// The team being run: the whole team, or a nested team of a hybrid.
    spec: &'a TeamSpec,
    /// What this team works on: the run's input, or for a nested team the
    /// task or conversation handed to it.
    text: &'a str,
    /// Whether this is the outer team (which receives workflow context).
    top: bool,
    input: &'a RunInput,
    model: &'a M,
    services: &'a Services,
    caller: &'a Caller,
    tools: &'a [ToolSpec],
}

/// Runs `ctx.spec` by its shape: a group chat, a hierarchical crew or a
/// sequential one; returns its output and the agent that produced it.
async fn run_process<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    match &ctx.spec.shape {
        Shape::GroupChat(chat) => chat::run_chat(ctx, chat, budget, events).await,
        Shape::Crew(crew) => match &crew.process {
            Process::Hierarchical { manager } => {
                crew::run_hierarchical(ctx, crew, manager, budget, events).await
            }
            Process::Sequential => crew::run_crew_tasks(ctx, crew, budget, events).await,
        },
    }
}

/// A nested team's run: its output and the agent that produced it.
type NestedRun<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(String, String), RunError>> + Send + 'a>,
>;

/// Runs the nested team `name` of a hybrid team on `text`; returns its
/// output and the agent that produced it. Boxed: nested teams run through
/// the same engine functions that start them.
fn run_nested<'a, M: ChatModel>(
    ctx: &'a Ctx<'a, M>,
    name: &'a str,
    text: &'a str,
    budget: &'a mut Budget,
    events: &'a mut Emitter,
) -> NestedRun<'a> {
    Box::pin(async move {
        let nested = ctx
            .spec
            .nested(name)
            .ok_or_else(|| RunError::Dependency(format!("no nested team `{name}`")))?;
        let spec = ctx.spec.nested_spec(nested);
        let sub = Ctx {
            spec: &spec,
            text,
            top: false,
            ..*ctx
        };
        run_process(&sub, budget, events).await
    })
}
