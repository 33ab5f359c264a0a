//! The team engine: runs one team on one input and emits every step as a
//! [`RunEvent`](pb::RunEvent): crews (sequential or hierarchical), group
//! chats (round robin, selector, swarm) and hybrids of the two, with an
//! optional judge. Each agent converses with its model, calls the tools its
//! spec allows through the tools service, recalls and remembers through the
//! memory service; one budget (steps, tokens, loop detection) spans the
//! whole run, nested teams included.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use amaos_mesh::caller::Caller;
use amaos_mesh::client::MeshChannel;
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::{json_to_value, map_to_struct, value_to_json};
use amaos_proto::memory::v1 as mem;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::time::timestamp;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use amaos_teams::{AgentSpec, TeamSpec};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::model::{ChatMessage, ChatModel, Reply, ToolCallRequest, ToolSpec};

/// Most memories recalled before a task.
const RECALL_TOP_K: u32 = 3;

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
}

/// Sends numbered events of one run.
pub struct Emitter {
    tx: mpsc::Sender<pb::RunEvent>,
    run_id: String,
    attempt: u32,
    sequence: u64,
}

impl Emitter {
    /// An emitter sending on `tx`.
    pub fn new(tx: mpsc::Sender<pb::RunEvent>, run_id: &str, attempt: u32) -> Self {
        Self {
            tx,
            run_id: run_id.to_owned(),
            attempt,
            sequence: 0,
        }
    }

    /// Emits one event; fails when the receiver is gone.
    pub async fn emit(&mut self, agent: &str, payload: Payload) -> Result<(), RunError> {
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

struct Budget {
    steps: u32,
    tokens: u64,
    max_steps: u32,
    max_tokens: Option<u64>,
    /// The last assistant message and how many times in a row it was said.
    repeated: (String, u32),
}

/// The same message this many times in a row is a loop: the run stops.
const LOOP_REPEATS: u32 = 3;

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
        tool_specs(services, caller).await?
    } else {
        Vec::new()
    };
    let mut budget = Budget {
        steps: 0,
        tokens: 0,
        max_steps: spec
            .budget
            .max_steps
            .unwrap_or(input.max_steps)
            .min(input.max_steps),
        max_tokens: match (spec.budget.max_tokens, input.max_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        repeated: (String::new(), 0),
    };
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
    let (mut output, producer) = match (&spec.crew, &spec.group_chat) {
        (_, Some(chat)) => run_chat(&ctx, chat, &mut budget, events).await?,
        (Some(crew), None) if crew.process == amaos_teams::Process::Hierarchical => {
            run_hierarchical(&ctx, crew, &mut budget, events).await?
        }
        (Some(crew), None) => run_crew_tasks(&ctx, crew, &mut budget, events).await?,
        (None, None) => {
            return Err(RunError::Dependency(
                "the team has neither a crew nor a group chat".into(),
            ));
        }
    };
    if let Some(judge) = &spec.judge {
        output = run_judge(&ctx, judge, output, &producer, &mut budget, events).await?;
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

/// A crew's tasks in order; returns the last output and the agent that wrote it.
async fn run_crew_tasks<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    crew: &amaos_teams::CrewSpec,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let Ctx {
        spec,
        input,
        tools,
        text,
        top,
        ..
    } = *ctx;
    let mut last_agent = String::new();
    let total = crew.tasks.len() as u32;
    let mut outputs: HashMap<&str, String> = HashMap::new();
    let mut last = String::new();
    for (index, task) in crew.tasks.iter().enumerate() {
        if let Some(team) = &task.team {
            events
                .emit(
                    team,
                    Payload::TaskStarted(pb::TaskStarted {
                        task: task.name.clone(),
                        index: index as u32 + 1,
                        total,
                        agent: team.clone(),
                    }),
                )
                .await?;
            let mut prompt = task.description.replace("{input}", text);
            if !task.expected_output.is_empty() {
                prompt.push_str(&format!("\n\nExpected output: {}", task.expected_output));
            }
            for source in &task.context {
                if let Some(text) = outputs.get(source.as_str()) {
                    prompt.push_str(&format!("\n\nContext from task `{source}`:\n{text}"));
                }
            }
            let (output, producer) = run_nested(ctx, team, &prompt, budget, events).await?;
            events
                .emit(
                    team,
                    Payload::TaskCompleted(pb::TaskCompleted {
                        task: task.name.clone(),
                        output: output.clone(),
                    }),
                )
                .await?;
            outputs.insert(task.name.as_str(), output.clone());
            last_agent = producer;
            last = output;
            continue;
        }
        // Validated specs name only declared agents.
        let agent = spec
            .agent(&task.agent)
            .ok_or_else(|| RunError::Dependency(format!("task `{}` names no agent", task.name)))?;
        events
            .emit(
                &agent.name,
                Payload::TaskStarted(pb::TaskStarted {
                    task: task.name.clone(),
                    index: index as u32 + 1,
                    total,
                    agent: agent.name.clone(),
                }),
            )
            .await?;
        let description = task.description.replace("{input}", text);
        let mut prompt = description.clone();
        if !task.expected_output.is_empty() {
            prompt.push_str(&format!("\n\nExpected output: {}", task.expected_output));
        }
        for (source, text) in input.context.iter().filter(|_| top) {
            prompt.push_str(&format!("\n\nContext from `{source}`:\n{text}"));
        }
        for source in &task.context {
            if let Some(text) = outputs.get(source.as_str()) {
                prompt.push_str(&format!("\n\nContext from task `{source}`:\n{text}"));
            }
        }
        add_memories(ctx, agent, &description, &mut prompt, events).await?;
        let output = converse(ctx, agent, &prompt, index, tools, budget, events).await?;
        store_result(ctx, agent, &task.name, &output, events).await?;
        events
            .emit(
                &agent.name,
                Payload::TaskCompleted(pb::TaskCompleted {
                    task: task.name.clone(),
                    output: output.clone(),
                }),
            )
            .await?;
        outputs.insert(task.name.as_str(), output.clone());
        last_agent = agent.name.clone();
        last = output;
    }
    Ok((last, last_agent))
}

/// Most delegations a manager makes in one run.
const MAX_DELEGATIONS: usize = 64;

/// What a manager decided.
enum Decision {
    Delegate { to: String, task: String },
    Final(String),
}

/// Reads `{"delegate": {"to": …, "task": …}}` or `{"final": …}` from a
/// manager's answer; anything else is taken as its final answer.
fn parse_decision(text: &str) -> Decision {
    let json = text
        .find('{')
        .zip(text.rfind('}'))
        .and_then(|(a, b)| text.get(a..=b))
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    match json {
        Some(v) if v["delegate"].is_object() => Decision::Delegate {
            to: v["delegate"]["to"].as_str().unwrap_or_default().to_owned(),
            task: v["delegate"]["task"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        Some(v) if v["final"].is_string() => {
            Decision::Final(v["final"].as_str().unwrap_or_default().to_owned())
        }
        _ => Decision::Final(text.to_owned()),
    }
}

/// A hierarchical crew: the manager plans over the crew's tasks, delegates
/// pieces of work to workers by name (each delegation really runs the worker,
/// with its tools and memory), reviews what comes back, may send work back
/// with feedback, and finally answers.
async fn run_hierarchical<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    crew: &amaos_teams::CrewSpec,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let manager_name = crew.manager.as_deref().unwrap_or_default();
    let manager = ctx
        .spec
        .agent(manager_name)
        .ok_or_else(|| RunError::Dependency(format!("no manager `{manager_name}`")))?;
    let workers: Vec<&AgentSpec> = ctx
        .spec
        .agents
        .iter()
        .filter(|a| a.name != manager.name)
        .collect();
    let mut brief = format!("You manage a crew working on: {}\n\nTasks:", ctx.text);
    for t in &crew.tasks {
        brief.push_str(&format!(
            "\n- {}: {} (expected: {})",
            t.name,
            t.description.replace("{input}", ctx.text),
            t.expected_output
        ));
    }
    brief.push_str("\n\nWorkers:");
    for w in &workers {
        brief.push_str(&format!("\n- {} ({}): {}", w.name, w.role, w.goal));
    }
    brief.push_str(
        "\n\nAnswer with JSON: {\"delegate\": {\"to\": worker, \"task\": what to do}} to hand out work \
         (send work back with feedback the same way), or {\"final\": the crew's output} when done.",
    );
    let mut results = String::new();
    for round in 0..MAX_DELEGATIONS {
        let prompt = if results.is_empty() {
            brief.clone()
        } else {
            format!("{brief}\n\nResults so far:{results}")
        };
        let answer = converse(
            ctx,
            manager,
            &prompt,
            DELEGATION_INDEX + round * 2,
            &[],
            budget,
            events,
        )
        .await?;
        let (to, task) = match parse_decision(&answer) {
            Decision::Final(output) => return Ok((output, manager.name.clone())),
            Decision::Delegate { to, task } => (to, task),
        };
        let Some(worker) = workers.iter().find(|w| w.name == to) else {
            results.push_str(&format!(
                "\n[system] `{to}` is not a worker of this crew; choose one of the list."
            ));
            continue;
        };
        events
            .emit(
                &manager.name,
                Payload::Handoff(pb::Handoff {
                    from: manager.name.clone(),
                    to: worker.name.clone(),
                    reason: task.clone(),
                }),
            )
            .await?;
        let label = format!("delegation {}", round + 1);
        events
            .emit(
                &worker.name,
                Payload::TaskStarted(pb::TaskStarted {
                    task: label.clone(),
                    index: round as u32 + 1,
                    total: 0,
                    agent: worker.name.clone(),
                }),
            )
            .await?;
        let output = converse(
            ctx,
            worker,
            &task,
            DELEGATION_INDEX + round * 2 + 1,
            ctx.tools,
            budget,
            events,
        )
        .await?;
        events
            .emit(
                &worker.name,
                Payload::TaskCompleted(pb::TaskCompleted {
                    task: label,
                    output: output.clone(),
                }),
            )
            .await?;
        results.push_str(&format!("\n[{}] {}", worker.name, output));
    }
    Err(RunError::Budget(format!(
        "the manager made {MAX_DELEGATIONS} delegations without a final answer"
    )))
}

/// Tool-call ids of chat turns and judge rounds start here, apart from crew tasks'.
const CHAT_INDEX: usize = 1_000;
const DELEGATION_INDEX: usize = 50_000;
const JUDGE_INDEX: usize = 100_000;

/// A group chat; returns the last message and the agent that wrote it (for
/// a nested crew's message, the crew's last agent).
async fn run_chat<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    chat: &amaos_teams::GroupChatSpec,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let participants = ctx.spec.participants();
    let opening = chat.task.replace("{input}", ctx.text);
    events
        .emit(
            "",
            Payload::Message(pb::Message {
                role: "user".into(),
                content: opening.clone(),
            }),
        )
        .await?;
    let mut transcript: Vec<(String, String)> = vec![("user".into(), opening)];
    let mut producer = String::new();
    let started = tokio::time::Instant::now();
    let mut turn = 0usize;
    let mut calls = 0usize;
    // In a swarm the speaker keeps the floor until it hands off.
    let mut holder = participants[0].to_owned();
    let swarm = chat.manager == amaos_teams::Manager::Swarm;
    loop {
        let (speaker, method) = match chat.manager {
            amaos_teams::Manager::Selector => {
                select_speaker(ctx, chat, &participants, &transcript, turn, budget, events).await?
            }
            amaos_teams::Manager::Swarm => (holder.clone(), "handoff"),
            amaos_teams::Manager::RoundRobin => (
                participants[turn % participants.len()].to_owned(),
                "round_robin",
            ),
        };
        events
            .emit(
                "",
                Payload::SpeakerSelected(pb::SpeakerSelected {
                    speaker: speaker.clone(),
                    method: method.into(),
                }),
            )
            .await?;
        let reply = if let Some(agent) = ctx.spec.agent(&speaker) {
            let mut prompt = render(&transcript);
            let latest = transcript
                .last()
                .map(|(_, t)| t.as_str())
                .unwrap_or_default();
            add_memories(ctx, agent, latest, &mut prompt, events).await?;
            prompt.push_str(&format!(
                "\n\nYou are {}. Reply with your next message.",
                agent.name
            ));
            let handoffs: Vec<String> = if swarm {
                participants
                    .iter()
                    .filter(|n| **n != speaker)
                    .map(|n| (*n).to_owned())
                    .chain(std::iter::once(HUMAN.to_owned()))
                    .collect()
            } else {
                Vec::new()
            };
            calls += 1;
            let turn_result = converse_turn(
                ctx,
                agent,
                &prompt,
                CHAT_INDEX + calls,
                ctx.tools,
                &handoffs,
                budget,
                events,
            )
            .await?;
            match turn_result {
                Turn::Said(text) => {
                    producer = agent.name.clone();
                    text
                }
                Turn::Handoff { to } if to == HUMAN => {
                    // A handoff to a person ends the chat with what was said so far.
                    let (_, last) = transcript.last().cloned().unwrap_or_default();
                    return Ok((last, producer));
                }
                Turn::Handoff { to } => {
                    holder = to;
                    continue;
                }
            }
        } else {
            // A nested crew takes its turn: it works on the conversation so far.
            let (text, by) =
                run_nested(ctx, &speaker, &render(&transcript), budget, events).await?;
            events
                .emit(
                    &speaker,
                    Payload::Message(pb::Message {
                        role: "assistant".into(),
                        content: text.clone(),
                    }),
                )
                .await?;
            producer = by;
            text
        };
        transcript.push((speaker.clone(), reply));
        turn += 1;
        if let Some(reason) = stop_reason(
            &chat.termination,
            &transcript,
            turn,
            budget.tokens,
            started.elapsed(),
        ) {
            tracing::debug!(%reason, "group chat stopped");
            let (_, last) = transcript.pop().unwrap_or_default();
            if let Some(agent) = ctx.spec.agent(&producer) {
                let label = format!("chat-{}-{turn}", agent.name);
                store_result(ctx, agent, &label, &last, events).await?;
            }
            return Ok((last, producer));
        }
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
        match (&spec.crew, &spec.group_chat) {
            (_, Some(chat)) => run_chat(&sub, chat, budget, events).await,
            (Some(crew), None) if crew.process == amaos_teams::Process::Hierarchical => {
                run_hierarchical(&sub, crew, budget, events).await
            }
            (Some(crew), None) => run_crew_tasks(&sub, crew, budget, events).await,
            (None, None) => Err(RunError::Dependency(format!(
                "nested team `{name}` has neither a crew nor a group chat"
            ))),
        }
    })
}

fn render(transcript: &[(String, String)]) -> String {
    let mut out = String::from("Conversation so far:");
    for (who, text) in transcript {
        out.push_str(&format!("\n[{who}] {text}"));
    }
    out
}

/// Whether the chat stops after `messages` agent messages, and why.
fn stop_reason(
    termination: &amaos_teams::Termination,
    transcript: &[(String, String)],
    messages: usize,
    tokens: u64,
    elapsed: std::time::Duration,
) -> Option<String> {
    let last = transcript
        .last()
        .map(|(_, t)| t.as_str())
        .unwrap_or_default();
    let holds = |c: &amaos_teams::Condition| -> Option<String> {
        if let Some(n) = c.max_messages {
            return (messages as u32 >= n).then(|| format!("{n} messages"));
        }
        if let Some(text) = &c.text_mention {
            return last
                .contains(text.as_str())
                .then(|| format!("`{text}` mentioned"));
        }
        if let Some(n) = c.max_tokens {
            return (tokens >= n).then(|| format!("{n} tokens used"));
        }
        if let Some(limit) = c.timeout() {
            return (elapsed >= limit).then(|| format!("{limit:?} elapsed"));
        }
        None
    };
    if let Some(reason) = termination.any.iter().find_map(holds) {
        return Some(reason);
    }
    if !termination.all.is_empty() {
        let reasons: Option<Vec<String>> = termination.all.iter().map(holds).collect();
        return reasons.map(|r| r.join(" and "));
    }
    None
}

/// The selector agent names the next speaker; an invalid name is asked for
/// once more, then the turn falls back to round robin.
async fn select_speaker<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    chat: &amaos_teams::GroupChatSpec,
    participants: &[&str],
    transcript: &[(String, String)],
    turn: usize,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, &'static str), RunError> {
    let names = participants;
    let selector = chat
        .selector
        .as_deref()
        .and_then(|s| ctx.spec.agent(s))
        .ok_or_else(|| RunError::Dependency("the selector agent is missing".into()))?;
    for attempt in 0..2 {
        let prompt = format!(
            "{}\n\nWho speaks next? Answer with exactly one of: {}.{}",
            render(transcript),
            names.join(", "),
            if attempt > 0 {
                " Your last answer named nobody on that list."
            } else {
                ""
            }
        );
        let pick = converse(
            ctx,
            selector,
            &prompt,
            CHAT_INDEX + turn * 10 + 5 + attempt,
            &[],
            budget,
            events,
        )
        .await?;
        let pick = pick
            .trim()
            .trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
        if names.contains(&pick) {
            return Ok((pick.to_owned(), "selector"));
        }
    }
    Ok((
        participants[turn % participants.len()].to_owned(),
        "fallback",
    ))
}

/// What a judge answered.
struct Judgement {
    kind: pb::VerdictKind,
    score: f64,
    feedback: String,
}

/// Reads a verdict: a JSON object `{"verdict": "pass|revise|escalate",
/// "score": 0..1, "feedback": "…"}`, possibly inside other text.
fn parse_verdict(text: &str, threshold: f64) -> Option<Judgement> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let score = v["score"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
    let feedback = v["feedback"].as_str().unwrap_or_default().to_owned();
    let kind = match v["verdict"].as_str()?.to_ascii_lowercase().as_str() {
        "escalate" => pb::VerdictKind::Escalate,
        "pass" if score >= threshold => pb::VerdictKind::Pass,
        "pass" | "revise" => pb::VerdictKind::Revise,
        _ => return None,
    };
    Some(Judgement {
        kind,
        score,
        feedback,
    })
}

/// Scores the output; a revision goes back to the agent that produced it
/// with the judge's feedback, up to `max_revisions` times; then escalates.
async fn run_judge<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    judge: &amaos_teams::JudgeSpec,
    mut output: String,
    producer: &str,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<String, RunError> {
    let judge_agent = ctx
        .spec
        .agent(&judge.agent)
        .ok_or_else(|| RunError::Dependency(format!("no judge agent `{}`", judge.agent)))?;
    let producer = ctx.spec.agent(producer).unwrap_or(judge_agent);
    for revision in 0..=judge.max_revisions {
        let prompt = format!(
            "Judge this output against the criteria.\nCriteria:\n- {}\nPassing score: {}\n\nOutput:\n{output}\n\n\
             Answer with a JSON object: {{\"verdict\": \"pass\" | \"revise\" | \"escalate\", \"score\": 0 to 1, \"feedback\": \"...\"}}",
            judge.criteria.join("\n- "),
            judge.threshold
        );
        let answer = converse(
            ctx,
            judge_agent,
            &prompt,
            JUDGE_INDEX + revision as usize,
            &[],
            budget,
            events,
        )
        .await?;
        let judgement = parse_verdict(&answer, judge.threshold).unwrap_or(Judgement {
            kind: pb::VerdictKind::Escalate,
            score: 0.0,
            feedback: "the judge's answer was not a verdict".into(),
        });
        let kind = if judgement.kind == pb::VerdictKind::Revise && revision == judge.max_revisions {
            pb::VerdictKind::Escalate
        } else {
            judgement.kind
        };
        events
            .emit(
                &judge_agent.name,
                Payload::Verdict(pb::Verdict {
                    kind: kind as i32,
                    score: judgement.score,
                    feedback: judgement.feedback.clone(),
                    revision,
                }),
            )
            .await?;
        match kind {
            pb::VerdictKind::Pass => return Ok(output),
            pb::VerdictKind::Revise => {
                let prompt = format!(
                    "Your previous output:\n{output}\n\nA reviewer asks for a revision: {}\nProduce the revised output.",
                    judgement.feedback
                );
                output = converse(
                    ctx,
                    producer,
                    &prompt,
                    JUDGE_INDEX + 500 + revision as usize,
                    ctx.tools,
                    budget,
                    events,
                )
                .await?;
            }
            _ => return Err(RunError::NeedsReview(judgement.feedback)),
        }
    }
    Err(RunError::NeedsReview("revisions exhausted".into()))
}

fn system_prompt(agent: &AgentSpec) -> String {
    let mut s = format!("You are {}. Your goal: {}.", agent.role, agent.goal);
    if !agent.backstory.is_empty() {
        s.push_str(&format!(" {}", agent.backstory));
    }
    if !agent.tools.is_empty() {
        s.push_str(&format!(" Tools you may call: {}.", agent.tools.join(", ")));
    }
    s
}

/// One agent's conversation on one task, until it answers with text.
async fn converse<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    task_index: usize,
    tools: &[ToolSpec],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<String, RunError> {
    match converse_turn(ctx, agent, prompt, task_index, tools, &[], budget, events).await? {
        Turn::Said(text) => Ok(text),
        // No handoff targets were offered, so none can come back.
        Turn::Handoff { to } => Err(RunError::Dependency(format!(
            "unexpected handoff to `{to}`"
        ))),
    }
}

/// One agent's turn, offered `handoffs` as targets, in an `invoke_agent` span
/// (OpenTelemetry GenAI conventions).
#[allow(clippy::too_many_arguments)]
async fn converse_turn<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    task_index: usize,
    tools: &[ToolSpec],
    handoffs: &[String],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<Turn, RunError> {
    let span = tracing::info_span!(
        "invoke_agent",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %agent.name,
        gen_ai.request.model = %agent.model,
    );
    converse_inner(
        ctx, agent, prompt, task_index, tools, handoffs, budget, events,
    )
    .instrument(span)
    .await
}

/// How an agent's turn ended.
enum Turn {
    /// It answered.
    Said(String),
    /// It handed the conversation to another agent (or `user`); the reason
    /// is in the emitted `Handoff` event.
    Handoff {
        /// To whom.
        to: String,
    },
}

/// The handoff tool a swarm offers its agents.
pub const HANDOFF_TOOL: &str = "handoff";
/// The handoff target that stops a swarm and hands over to a person.
pub const HUMAN: &str = "user";

#[allow(clippy::too_many_arguments)]
async fn converse_inner<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    task_index: usize,
    tools: &[ToolSpec],
    handoffs: &[String],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<Turn, RunError> {
    let Ctx {
        model,
        services,
        caller,
        input,
        ..
    } = *ctx;
    let mut messages = vec![
        ChatMessage::text("system", system_prompt(agent)),
        ChatMessage::text("user", prompt),
    ];
    let mut offered: Vec<ToolSpec> = tools
        .iter()
        .filter(|t| agent.tools.contains(&t.name))
        .cloned()
        .collect();
    if !handoffs.is_empty() {
        offered.push(ToolSpec {
            name: HANDOFF_TOOL.into(),
            description:
                "Hand the conversation to another agent, or to `user` to stop and ask a person."
                    .into(),
            parameters: serde_json::json!({
                "type": "object",
                "required": ["to"],
                "properties": {
                    "to": {"type": "string", "enum": handoffs},
                    "reason": {"type": "string"}
                }
            }),
        });
    }
    events
        .emit(
            &agent.name,
            Payload::Message(pb::Message {
                role: "user".into(),
                content: prompt.to_owned(),
            }),
        )
        .await?;
    loop {
        budget.steps += 1;
        if budget.steps > budget.max_steps {
            return Err(RunError::Budget(format!(
                "the run used its {} model calls",
                budget.max_steps
            )));
        }
        let chat_span = tracing::info_span!(
            "chat",
            gen_ai.operation.name = "chat",
            gen_ai.agent.name = %agent.name,
            gen_ai.request.model = %agent.model,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
        );
        let completion = model
            .complete(agent, &messages, &offered)
            .instrument(chat_span.clone())
            .await
            .map_err(|e| RunError::Provider(e.to_string()))?;
        chat_span.record("gen_ai.usage.input_tokens", completion.usage.prompt_tokens);
        chat_span.record(
            "gen_ai.usage.output_tokens",
            completion.usage.completion_tokens,
        );
        budget.tokens += completion.usage.prompt_tokens + completion.usage.completion_tokens;
        events
            .emit(
                &agent.name,
                Payload::TokenUsage(pb::TokenUsage {
                    model: completion.model.clone(),
                    prompt_tokens: completion.usage.prompt_tokens,
                    completion_tokens: completion.usage.completion_tokens,
                    cost_usd: completion.cost_usd,
                }),
            )
            .await?;
        if let Some(max) = budget.max_tokens
            && budget.tokens > max
        {
            return Err(RunError::Budget(format!(
                "the run used more than its {max} tokens"
            )));
        }
        match completion.reply {
            Reply::Text(text) => {
                events
                    .emit(
                        &agent.name,
                        Payload::Message(pb::Message {
                            role: "assistant".into(),
                            content: text.clone(),
                        }),
                    )
                    .await?;
                if budget.repeated.0 == text {
                    budget.repeated.1 += 1;
                    if budget.repeated.1 >= LOOP_REPEATS {
                        return Err(RunError::Budget(format!(
                            "loop detected: the same message {LOOP_REPEATS} times in a row"
                        )));
                    }
                } else {
                    budget.repeated = (text.clone(), 1);
                }
                return Ok(Turn::Said(text));
            }
            Reply::ToolCalls(calls) => {
                messages.push(ChatMessage {
                    role: "assistant",
                    content: String::new(),
                    tool_calls: calls.clone(),
                    tool_call_id: None,
                });
                for (n, call) in calls.into_iter().enumerate() {
                    let ToolCallRequest { id, name, args } = call;
                    if name == HANDOFF_TOOL && !handoffs.is_empty() {
                        let to = args
                            .get("to")
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_owned();
                        if handoffs.contains(&to) {
                            let reason = args
                                .get("reason")
                                .and_then(|v| v.as_str())
                                .unwrap_or_default()
                                .to_owned();
                            events
                                .emit(
                                    &agent.name,
                                    Payload::Handoff(pb::Handoff {
                                        from: agent.name.clone(),
                                        to: to.clone(),
                                        reason: reason.clone(),
                                    }),
                                )
                                .await?;
                            return Ok(Turn::Handoff { to });
                        }
                    }
                    // Stable across attempts, so a retried run replays recorded side effects.
                    let call_id = format!("{}:{}:{}:{n}", input.run_id, task_index, budget.steps);
                    events
                        .emit(
                            &agent.name,
                            Payload::ToolCall(pb::ToolCall {
                                call_id: call_id.clone(),
                                tool: name.clone(),
                                arguments: Some(map_to_struct(&args)),
                            }),
                        )
                        .await?;
                    let outcome = if agent.tools.contains(&name) {
                        let span = tracing::info_span!(
                            "execute_tool",
                            gen_ai.operation.name = "execute_tool",
                            gen_ai.tool.name = %name,
                            gen_ai.tool.call.id = %call_id,
                        );
                        invoke(services, caller, input, &call_id, &name, args)
                            .instrument(span)
                            .await
                    } else {
                        Ok(Err(format!(
                            "tool `{name}` is not allowed for agent `{}`",
                            agent.name
                        )))
                    };
                    let outcome = match outcome {
                        Ok(outcome) => outcome,
                        Err(failure) => {
                            events
                                .emit(
                                    &agent.name,
                                    Payload::ToolResult(pb::ToolResult {
                                        call_id,
                                        tool: name,
                                        result: None,
                                        is_error: true,
                                        error: failure.clone(),
                                    }),
                                )
                                .await?;
                            return Err(RunError::Dependency(failure));
                        }
                    };
                    let (result, error) = match outcome {
                        Ok(value) => (Some(value), String::new()),
                        Err(error) => (None, error),
                    };
                    messages.push(ChatMessage {
                        role: "tool",
                        content: match &result {
                            Some(value) => value.to_string(),
                            None => format!("error: {error}"),
                        },
                        tool_calls: Vec::new(),
                        tool_call_id: Some(id),
                    });
                    events
                        .emit(
                            &agent.name,
                            Payload::ToolResult(pb::ToolResult {
                                call_id,
                                tool: name,
                                result: result.as_ref().map(json_to_value),
                                is_error: result.is_none(),
                                error,
                            }),
                        )
                        .await?;
                }
            }
        }
    }
}

/// The schemas of the tools the tools service offers this run.
async fn tool_specs(services: &Services, caller: &Caller) -> Result<Vec<ToolSpec>, RunError> {
    let tools = services
        .tools
        .clone()
        .list_tools(caller.request(tools::ListToolsRequest {}))
        .await
        .map_err(|s| RunError::Dependency(format!("tools service: {}", s.message())))?
        .into_inner()
        .tools;
    Ok(tools
        .into_iter()
        .map(|t| ToolSpec {
            name: t.name,
            description: t.description,
            parameters: t
                .input_schema
                .as_ref()
                .map(|s| serde_json::Value::Object(amaos_proto::json::struct_to_map(s)))
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
        .collect())
}

/// Whether a failed tool call is the platform's, not the call's: the tools
/// service (or what it depends on: the journal, the sandbox, the run check)
/// could not run it or answer for it. Such a failure ends the attempt as
/// transient, so it is retried — given to the model as text, it let a run
/// succeed without a side effect it was meant to have.
fn platform_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unauthenticated
            | tonic::Code::Aborted
            | tonic::Code::DataLoss
    )
}

/// Calls a tool; a failure of the call becomes text for the model, never a
/// crash; a failure of the platform is an `Err` of the outer result.
async fn invoke(
    services: &Services,
    caller: &Caller,
    input: &RunInput,
    call_id: &str,
    tool: &str,
    args: serde_json::Map<String, serde_json::Value>,
) -> Result<Result<serde_json::Value, String>, String> {
    let request = caller.request(tools::InvokeToolRequest {
        tool: tool.to_owned(),
        arguments: Some(map_to_struct(&args)),
        task_id: input.run_id.clone(),
        // Stable across attempts, so a retried run replays recorded side effects.
        idempotency_key: call_id.to_owned(),
        timeout: None,
    });
    match services.tools.clone().invoke_tool(request).await {
        Ok(response) => Ok(Ok(response
            .into_inner()
            .result
            .as_ref()
            .map(value_to_json)
            .unwrap_or(serde_json::Value::Null))),
        Err(status) if platform_failure(status.code()) => Err(format!(
            "tools service could not run `{tool}`: {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(status) => Ok(Err(format!("{:?}: {}", status.code(), status.message()))),
    }
}

/// Before a turn of an agent with `memory: true`: recalls what is relevant
/// to `query` (scoped to the run's tenant, team, agent and session) into
/// `prompt`, and emits what was recalled.
async fn add_memories<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    query: &str,
    prompt: &mut String,
    events: &mut Emitter,
) -> Result<(), RunError> {
    if !agent.memory {
        return Ok(());
    }
    let memories = recall(ctx.services, ctx.caller, ctx.spec, agent, ctx.input, query).await;
    if memories.is_empty() {
        return Ok(());
    }
    prompt.push_str("\n\nRelevant memories:");
    for (_, text) in &memories {
        prompt.push_str(&format!("\n- {text}"));
    }
    events
        .emit(
            &agent.name,
            Payload::MemoryRecalled(pb::MemoryRecalled {
                count: memories.len() as u32,
                memory_ids: memories.into_iter().map(|(id, _)| id).collect(),
            }),
        )
        .await
}

/// After an agent with `memory: true` produced a result: remembers it.
async fn store_result<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    task: &str,
    output: &str,
    events: &mut Emitter,
) -> Result<(), RunError> {
    if !agent.memory {
        return Ok(());
    }
    let memory_id = remember(
        ctx.services,
        ctx.caller,
        ctx.spec,
        agent,
        ctx.input,
        task,
        output,
    )
    .await?;
    events
        .emit(
            &agent.name,
            Payload::MemoryStored(pb::MemoryStored { memory_id }),
        )
        .await
}

async fn recall(
    services: &Services,
    caller: &Caller,
    spec: &TeamSpec,
    agent: &AgentSpec,
    input: &RunInput,
    query: &str,
) -> Vec<(String, String)> {
    let request = caller.request(mem::RecallRequest {
        query: query.to_owned(),
        filter: Some(mem::MemoryFilter {
            team: spec.name.clone(),
            agent: agent.name.clone(),
            session_id: input.session_id.clone(),
            ..Default::default()
        }),
        top_k: RECALL_TOP_K,
        min_score: 0.0,
    });
    match services.memory.clone().recall(request).await {
        Ok(response) => response
            .into_inner()
            .memories
            .into_iter()
            .filter_map(|m| m.item)
            .map(|item| (item.memory_id, item.text))
            .collect(),
        Err(status) => {
            // Recall only enriches the prompt: the task can go on without it.
            tracing::warn!(code = ?status.code(), message = status.message(), "memory recall failed; continuing");
            Vec::new()
        }
    }
}

async fn remember(
    services: &Services,
    caller: &Caller,
    spec: &TeamSpec,
    agent: &AgentSpec,
    input: &RunInput,
    task: &str,
    output: &str,
) -> Result<String, RunError> {
    let request = caller.request(mem::RememberRequest {
        team: spec.name.clone(),
        agent: agent.name.clone(),
        session_id: input.session_id.clone(),
        kind: mem::MemoryKind::Result as i32,
        text: output.to_owned(),
        metadata: HashMap::from([
            ("task".to_owned(), task.to_owned()),
            ("run_id".to_owned(), input.run_id.clone()),
        ]),
        ttl: None,
        idempotency_key: format!("{}:{task}", input.run_id),
    });
    services
        .memory
        .clone()
        .remember(request)
        .await
        .map(|r| r.into_inner().memory_id)
        .map_err(|status| RunError::Dependency(format!("memory service: {}", status.message())))
}
