//! The YAML document a team spec is written as: what serde reads, before
//! any check. Every field a person may write is here, with its default;
//! nothing outside this crate sees these types — [`super::check`] names what
//! is wrong with a document and [`super::convert`] turns a sound one into a
//! [`super::TeamSpec`]. Each type keeps, through `expecting`, the name
//! serde's messages used before the split (`expected struct AgentSpec`), so
//! the errors a person sees are unchanged.

use serde::Deserialize;

use super::ToolTurn;
use crate::REPLAY_MODEL;

/// A team as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct TeamSpec")]
pub(crate) struct TeamDoc {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub agents: Vec<AgentDoc>,
    #[serde(default)]
    pub crew: Option<CrewDoc>,
    #[serde(default)]
    pub group_chat: Option<ChatDoc>,
    #[serde(default)]
    pub judge: Option<JudgeDoc>,
    #[serde(default)]
    pub budget: BudgetDoc,
    #[serde(default)]
    pub teams: Vec<NestedDoc>,
    #[serde(default)]
    pub input: super::Input,
    #[serde(default)]
    pub approval: super::Approval,
    #[serde(default)]
    pub on_rejection: super::OnRejection,
}

/// A nested team as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct NestedTeam")]
pub(crate) struct NestedDoc {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub crew: Option<CrewDoc>,
    #[serde(default)]
    pub group_chat: Option<ChatDoc>,
}

/// A group chat's manager as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum Manager")]
pub(crate) enum ManagerDoc {
    RoundRobin,
    Selector,
    Swarm,
}

/// A group chat as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct GroupChatSpec")]
pub(crate) struct ChatDoc {
    pub manager: ManagerDoc,
    #[serde(default)]
    pub participants: Vec<String>,
    pub task: String,
    #[serde(default)]
    pub selector: Option<String>,
    pub termination: TerminationDoc,
    #[serde(default)]
    pub handoff_to_user: super::HandoffToUser,
}

/// Stop conditions as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct Termination")]
pub(crate) struct TerminationDoc {
    #[serde(default)]
    pub any: Vec<ConditionDoc>,
    #[serde(default)]
    pub all: Vec<ConditionDoc>,
}

/// One stop condition as written: valid with exactly one field set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct Condition")]
pub(crate) struct ConditionDoc {
    #[serde(default)]
    pub max_messages: Option<u32>,
    #[serde(default)]
    pub text_mention: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A judge as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct JudgeSpec")]
pub(crate) struct JudgeDoc {
    pub agent: String,
    pub criteria: Vec<String>,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_revisions")]
    pub max_revisions: u32,
}

fn default_threshold() -> f64 {
    0.7
}

fn default_revisions() -> u32 {
    2
}

/// An agent as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct AgentSpec")]
pub(crate) struct AgentDoc {
    pub name: String,
    pub role: String,
    pub goal: String,
    #[serde(default)]
    pub backstory: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub replay: Vec<TurnDoc>,
    #[serde(default)]
    pub replay_latency: Option<String>,
    #[serde(default)]
    pub approval: super::Approval,
    #[serde(default)]
    pub kind: AgentKindDoc,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub skill: Option<String>,
}

/// What runs an agent, as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum AgentKind")]
pub(crate) enum AgentKindDoc {
    /// A model (the default).
    #[default]
    Llm,
    /// A remote agent reached over A2A.
    A2a,
}

fn default_model() -> String {
    REPLAY_MODEL.to_owned()
}

/// A scripted turn as written: valid with exactly one of `say` or `tool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct ReplayTurn")]
pub(crate) struct TurnDoc {
    #[serde(default)]
    pub say: Option<String>,
    #[serde(default)]
    pub tool: Option<ToolTurn>,
}

/// A crew as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct CrewSpec")]
pub(crate) struct CrewDoc {
    #[serde(default)]
    pub process: ProcessDoc,
    #[serde(default)]
    pub manager: Option<String>,
    pub tasks: Vec<TaskDoc>,
}

/// A crew's process as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "enum Process")]
pub(crate) enum ProcessDoc {
    #[default]
    Sequential,
    Hierarchical,
}

/// A crew task as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct CrewTask")]
pub(crate) struct TaskDoc {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub expected_output: String,
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub context: Vec<String>,
}

/// Limits as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "struct Budget")]
pub(crate) struct BudgetDoc {
    pub max_steps: Option<u32>,
    pub max_tokens: Option<u64>,
    pub max_wall_time: Option<String>,
}

impl TeamDoc {
    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentDoc> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The nested team called `name`.
    pub fn nested(&self, name: &str) -> Option<&NestedDoc> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// The speakers of the outer group chat, in order: as listed, or when
    /// none are listed every agent but the selector and the judge.
    pub fn participants(&self) -> Vec<&str> {
        let Some(chat) = &self.group_chat else {
            return Vec::new();
        };
        if chat.participants.is_empty() {
            let judge = self.judge.as_ref().map(|j| j.agent.as_str());
            self.agents
                .iter()
                .map(|a| a.name.as_str())
                .filter(|a| Some(*a) != chat.selector.as_deref() && Some(*a) != judge)
                .collect()
        } else {
            chat.participants.iter().map(String::as_str).collect()
        }
    }

    /// Whether any chat of this team (outer or nested) is a swarm.
    pub fn has_swarm(&self) -> bool {
        let swarm =
            |c: &Option<ChatDoc>| c.as_ref().is_some_and(|c| c.manager == ManagerDoc::Swarm);
        swarm(&self.group_chat) || self.teams.iter().any(|t| swarm(&t.group_chat))
    }
}
