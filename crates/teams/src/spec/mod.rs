//! A validated team spec: the types the engine runs. Only [`crate::parse`]
//! builds a [`TeamSpec`], so what the checks rule out cannot be held: a team
//! is a crew or a group chat ([`Shape`]), never both or neither; a
//! hierarchical crew has its manager; a selector chat has its selector; a
//! stop condition and a scripted turn are each one thing; durations are
//! [`Duration`]s.
//!
//! # Layout
//!
//! - `doc`: the YAML document as serde reads it, before any check.
//! - `check`: every problem of a document, as (field path, message).
//! - `convert`: a document without problems → a [`TeamSpec`].
//! - `reference` (tests): `docs/team-spec.md` lists every field of `doc`.

mod check;
mod convert;
pub(crate) mod doc;
#[cfg(test)]
mod reference;

use std::time::Duration;

use serde::Deserialize;

pub use check::{MAX_AGENTS, MAX_NESTED_TEAMS, MAX_REPLAY_TURNS, MAX_TASKS, valid_name};

/// A team: its agents and how they work together.
#[derive(Clone, Debug, PartialEq)]
pub struct TeamSpec {
    /// The team's name: 1 to 64 of `[a-z0-9_-]`.
    pub name: String,
    /// What the team does, for people.
    pub description: String,
    /// The agents, 1 to [`MAX_AGENTS`], names unique.
    pub agents: Vec<AgentSpec>,
    /// How the agents work together.
    pub shape: Shape,
    /// A judge that scores the team's output and may send it back.
    pub judge: Option<JudgeSpec>,
    /// Limits on one run.
    pub budget: Budget,
    /// Nested teams of this team's agents (a hybrid team): a crew task may be
    /// carried out by one ([`Assignee::Team`]), and a group chat may count
    /// a nested crew among its speakers.
    pub teams: Vec<NestedTeam>,
    /// Whether a task for this team must carry an input.
    pub input: Input,
    /// What a rejected tool call does to the run.
    pub on_rejection: OnRejection,
}

/// Whether an agent's tool calls wait for a person's approval
/// (`approval:` on the team or on an agent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum Approval")]
pub enum Approval {
    /// Calls run without asking (the default).
    #[default]
    None,
    /// Every tool call stops the run until a person approves it.
    Required,
}

/// What a rejected (or expired) tool call does to the run
/// (`on_rejection:` in the spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum OnRejection")]
pub enum OnRejection {
    /// The model receives the rejection as the tool's result and goes on
    /// (the default).
    #[default]
    Continue,
    /// The task fails.
    Fail,
}

/// Whether a team's tasks must carry an input (`input:` in the spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum Input")]
pub enum Input {
    /// An empty input is accepted (the default).
    #[default]
    Optional,
    /// A task whose input is empty or only whitespace is refused.
    Required,
}

impl Input {
    /// Why `input` cannot be given to a team with this rule, if it cannot.
    pub fn refuses(self, input: &str) -> Option<&'static str> {
        match self {
            Input::Required if input.trim().is_empty() => {
                Some("this team requires an input (its spec says `input: required`)")
            }
            _ => None,
        }
    }
}

/// How a team's agents work together.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// Tasks carried out by assigned agents.
    Crew(CrewSpec),
    /// Agents take turns on one conversation.
    GroupChat(GroupChatSpec),
}

/// A team inside a hybrid team, made of the outer team's agents.
#[derive(Clone, Debug, PartialEq)]
pub struct NestedTeam {
    /// Its name, unique among the team's agents and nested teams.
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// A crew or a group chat of the outer team's agents.
    pub shape: Shape,
}

/// How a group chat picks its next speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manager {
    /// Participants in turn.
    RoundRobin,
    /// This agent names the next speaker.
    Selector(String),
    /// Agents hand off to each other.
    Swarm,
}

/// A group chat.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChatSpec {
    /// How the next speaker is chosen.
    pub manager: Manager,
    /// The speakers, in order, never empty: as listed, or when the spec
    /// lists none every agent but the selector and the judge.
    pub participants: Vec<String>,
    /// The opening message; `{input}` is replaced by the run's input.
    pub task: String,
    /// When the chat stops.
    pub termination: Termination,
    /// What a swarm's handoff to `user` does.
    pub handoff_to_user: HandoffToUser,
}

/// What a swarm's handoff to `user` does (`handoff_to_user:` in the spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum HandoffToUser")]
pub enum HandoffToUser {
    /// The chat ends with what was said so far (the default).
    #[default]
    End,
    /// The task waits in INPUT_REQUIRED, holding no worker, for a person's
    /// message (SendInput); the agent that handed over then continues the
    /// conversation with it.
    Wait,
}

/// When a group chat stops: when any of `any` holds, or when all of `all`
/// hold. A parsed spec has at least one condition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Termination {
    /// Stop when any of these holds.
    pub any: Vec<Condition>,
    /// Stop when all of these hold.
    pub all: Vec<Condition>,
}

/// One stop condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// After this many agent messages (at least 1).
    MaxMessages(u32),
    /// When a message contains this text (not blank).
    TextMention(String),
    /// When the run has used this many tokens (at least 1).
    MaxTokens(u64),
    /// When the chat has run this long (longer than zero).
    Timeout(Duration),
}

/// A judge on a team's output.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeSpec {
    /// The agent that judges.
    pub agent: String,
    /// What the output must satisfy; at least one, none blank.
    pub criteria: Vec<String>,
    /// Lowest passing score, 0 to 1.
    pub threshold: f64,
    /// Revisions allowed before the output is escalated to a person (at most 10).
    pub max_revisions: u32,
}

/// One agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// Its name, unique in the team.
    pub name: String,
    /// Its role, e.g. `Senior research analyst`.
    pub role: String,
    /// What it is trying to achieve.
    pub goal: String,
    /// Who it is, for the system prompt.
    pub backstory: String,
    /// The model alias it uses.
    pub model: String,
    /// The tools it may call.
    pub tools: Vec<String>,
    /// Whether it recalls memories before a task and remembers its result after.
    pub memory: bool,
    /// The scripted turns of the `replay` model for this agent, in order.
    pub replay: Vec<ReplayTurn>,
    /// Simulated latency of each `replay` model call (at most 10 minutes).
    pub replay_latency: Option<Duration>,
    /// Whether its tool calls wait for a person's approval (the team's
    /// `approval` or its own).
    pub approval: Approval,
    /// A remote agent of another system (`kind: a2a`) that takes this
    /// agent's turns instead of a model; `None` for a model-driven agent.
    pub remote: Option<RemoteAgent>,
}

/// A remote agent reached over the Agent2Agent protocol (A2A v1.0, gRPC):
/// each turn is one message to it, and its answer is the agent's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAgent {
    /// Its A2A gRPC address (`http://host:port`); the worker must list it
    /// in `agents.a2a_remotes`, which also holds its credential.
    pub url: String,
    /// The remote skill to ask for (metadata `skill`); unset for the
    /// remote's default.
    pub skill: Option<String>,
}

/// One scripted response of the `replay` model. `{input}` in any text is
/// replaced by the run's input.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayTurn {
    /// Answer with this text; it ends the agent's task.
    Say(String),
    /// Ask for a tool call.
    Tool(ToolTurn),
}

/// A scripted tool call.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolTurn {
    /// The tool's name.
    pub name: String,
    /// Its arguments.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// A crew.
#[derive(Clone, Debug, PartialEq)]
pub struct CrewSpec {
    /// How tasks are carried out.
    pub process: Process,
    /// The tasks, in order: 1 to [`MAX_TASKS`].
    pub tasks: Vec<CrewTask>,
}

/// How a crew carries out its tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Process {
    /// One after another, in the order given.
    Sequential,
    /// This agent plans, delegates to the others and reviews.
    Hierarchical {
        /// The managing agent; the team has at least one other.
        manager: String,
    },
}

/// A crew task.
#[derive(Clone, Debug, PartialEq)]
pub struct CrewTask {
    /// Its name, unique in the crew.
    pub name: String,
    /// What to do; `{input}` is replaced by the run's input.
    pub description: String,
    /// What a good output looks like.
    pub expected_output: String,
    /// Who carries it out.
    pub assignee: Assignee,
    /// Earlier tasks whose outputs it receives.
    pub context: Vec<String>,
}

/// Who carries out a crew task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assignee {
    /// This agent; in a hierarchical crew the manager decides, and this is
    /// only a hint.
    Agent(String),
    /// This nested team (sequential crews of the outer team only); its
    /// output is the task's output.
    Team(String),
    /// Whomever the manager of a hierarchical crew picks.
    Manager,
}

/// Limits on one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budget {
    /// Model calls in all (at least 1).
    pub max_steps: Option<u32>,
    /// Tokens in all (at least 1).
    pub max_tokens: Option<u64>,
    /// Wall-clock time (longer than zero).
    pub max_wall_time: Option<Duration>,
}

impl TeamSpec {
    /// The team's kind, as the contracts name it.
    pub fn kind(&self) -> &'static str {
        match (&self.shape, self.teams.is_empty()) {
            (_, false) => "hybrid",
            (Shape::GroupChat(_), true) => "group_chat",
            (Shape::Crew(_), true) => "crew",
        }
    }

    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The nested team called `name`.
    pub fn nested(&self, name: &str) -> Option<&NestedTeam> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// The team a nested team runs as: this team's agents with the nested
    /// crew or chat, and no judge of its own (the outer judge sees the end
    /// result).
    pub fn nested_spec(&self, nested: &NestedTeam) -> TeamSpec {
        TeamSpec {
            name: self.name.clone(),
            description: nested.description.clone(),
            agents: self.agents.clone(),
            shape: nested.shape.clone(),
            judge: None,
            budget: self.budget.clone(),
            teams: Vec::new(),
            input: self.input,
            on_rejection: self.on_rejection,
        }
    }

    /// The speakers of a group chat, in order: agents, or in a hybrid team
    /// also nested crews; none for a crew.
    pub fn participants(&self) -> Vec<&str> {
        match &self.shape {
            Shape::GroupChat(chat) => chat.participants.iter().map(String::as_str).collect(),
            Shape::Crew(_) => Vec::new(),
        }
    }
}
