//! What is wrong with a team document: every problem the YAML types
//! cannot rule out, as (field path, message), so [`crate::parse`] can name
//! the line of each. A document with none converts into a
//! [`super::TeamSpec`].

use std::collections::HashSet;
use std::time::Duration;

use super::doc::{AgentKindDoc, ChatDoc, CrewDoc, ManagerDoc, ProcessDoc, TeamDoc};
use crate::REPLAY_MODEL;

/// Most agents in a team.
pub const MAX_AGENTS: usize = 32;
/// Most tasks in a crew.
pub const MAX_TASKS: usize = 64;
/// Most scripted turns per agent.
pub const MAX_REPLAY_TURNS: usize = 256;
/// Most nested teams in a hybrid team.
pub const MAX_NESTED_TEAMS: usize = 8;

/// A problem: the field path (empty for the document) and what is wrong.
pub(crate) type Problem = (String, String);

/// Parses a spec duration: a whole number of `ms`, `s`, `m` or `h`, at most a day.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("missing a unit")?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| "missing a number".to_owned())?;
    let duration = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    // Nothing in a team outlives the longest task (24 h); far beyond that a
    // number is a mistake or an attack on the arithmetic that follows.
    duration
        .filter(|d| *d <= MAX_SPEC_DURATION)
        .ok_or_else(|| "longer than 24h".to_owned())
}

/// The longest duration a spec may name.
const MAX_SPEC_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Whether `name` may name a team, an agent, a nested team or a task: 1 to
/// 64 of `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl TeamDoc {
    /// Problems of a group chat at `at` (`group_chat` or
    /// `teams[i].group_chat`); nested chats speak with agents only.
    fn chat_problems(
        &self,
        chat: &ChatDoc,
        at: &str,
        nested: bool,
        problem: &mut impl FnMut(String, String),
    ) {
        if chat.task.trim().is_empty() {
            problem(format!("{at}.task"), "must not be empty".into());
        }
        for (i, p) in chat.participants.iter().enumerate() {
            let field = format!("{at}.participants[{i}]");
            match (self.agent(p), self.nested(p)) {
                (Some(_), _) => {}
                (None, Some(_)) if nested => problem(
                    field,
                    format!("`{p}` is a nested team; nested teams speak with agents only"),
                ),
                (None, Some(team)) if team.crew.is_none() => problem(
                    field,
                    format!("`{p}` is a group chat; a chat member that is a team must be a crew"),
                ),
                (None, Some(_)) if chat.manager == ManagerDoc::Swarm => problem(
                    field,
                    "a swarm hands off between agents; a nested crew cannot hand off".into(),
                ),
                (None, Some(_)) => {}
                (None, None) => problem(field, format!("no agent or nested team is named `{p}`")),
            }
        }
        if nested && chat.participants.is_empty() {
            problem(
                format!("{at}.participants"),
                "a nested group chat lists its speakers".into(),
            );
        } else if !nested && self.participants().is_empty() {
            problem(
                format!("{at}.participants"),
                "a group chat needs at least one speaker".into(),
            );
        }
        match (&chat.manager, &chat.selector) {
            (ManagerDoc::Selector, None) => problem(
                format!("{at}.selector"),
                "the `selector` manager needs a selector agent".into(),
            ),
            (_, Some(name)) if self.agent(name).is_none() => problem(
                format!("{at}.selector"),
                format!("no agent is named `{name}`"),
            ),
            _ => {}
        }
        let t = &chat.termination;
        if t.any.is_empty() && t.all.is_empty() {
            problem(
                format!("{at}.termination"),
                "a group chat needs a stop condition in `any` or `all`".into(),
            );
        }
        for (list, conditions) in [("any", &t.any), ("all", &t.all)] {
            for (i, c) in conditions.iter().enumerate() {
                let at = format!("{at}.termination.{list}[{i}]");
                let set = [
                    c.max_messages.is_some(),
                    c.text_mention.is_some(),
                    c.max_tokens.is_some(),
                    c.timeout.is_some(),
                ]
                .iter()
                .filter(|s| **s)
                .count();
                if set != 1 {
                    problem(
                        at.clone(),
                        "a condition has exactly one of max_messages, text_mention, max_tokens or timeout".into(),
                    );
                }
                if c.max_messages == Some(0) || c.max_tokens == Some(0) {
                    problem(at.clone(), "must be at least 1".into());
                }
                if c.text_mention
                    .as_deref()
                    .is_some_and(|m| m.trim().is_empty())
                {
                    problem(format!("{at}.text_mention"), "must not be empty".into());
                }
                if let Some(text) = &c.timeout
                    && parse_duration(text).map(|d| d.is_zero()).unwrap_or(true)
                {
                    problem(
                        format!("{at}.timeout"),
                        format!("`{text}` is not a positive duration"),
                    );
                }
            }
        }
    }

    /// Problems of a crew at `at` (`crew` or `teams[i].crew`); nested crews
    /// assign their tasks to agents only.
    fn crew_problems(
        &self,
        crew: &CrewDoc,
        at: &str,
        nested: bool,
        problem: &mut impl FnMut(String, String),
    ) {
        match (crew.process, &crew.manager) {
            (ProcessDoc::Hierarchical, None) => problem(
                format!("{at}.manager"),
                "a hierarchical crew needs a manager agent".into(),
            ),
            (_, Some(m)) if self.agent(m).is_none() => {
                problem(format!("{at}.manager"), format!("no agent is named `{m}`"))
            }
            (ProcessDoc::Hierarchical, Some(m))
                if self.agent(m).is_some_and(|a| a.kind == AgentKindDoc::A2a) =>
            {
                problem(
                    format!("{at}.manager"),
                    "the manager delegates with tool calls: it must be a model-driven agent, not `kind: a2a`".into(),
                )
            }
            (ProcessDoc::Hierarchical, Some(m)) if self.agents.iter().all(|a| &a.name == m) => {
                problem(
                    format!("{at}.manager"),
                    "the manager needs at least one other agent to delegate to".into(),
                )
            }
            _ => {}
        }
        if crew.tasks.is_empty() || crew.tasks.len() > MAX_TASKS {
            problem(
                format!("{at}.tasks"),
                format!("a crew has 1 to {MAX_TASKS} tasks"),
            );
        }
        let mut earlier: HashSet<&str> = HashSet::new();
        for (i, task) in crew.tasks.iter().enumerate() {
            let at = format!("{at}.tasks[{i}]");
            if !valid_name(&task.name) {
                problem(
                    format!("{at}.name"),
                    "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
                );
            } else if earlier.contains(task.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("task `{}` is declared twice", task.name),
                );
            }
            if task.description.trim().is_empty() {
                problem(format!("{at}.description"), "must not be empty".into());
            }
            match &task.team {
                Some(_) if nested => problem(
                    format!("{at}.team"),
                    "nested teams do not nest further; name an agent".into(),
                ),
                Some(_) if crew.process == ProcessDoc::Hierarchical => problem(
                    format!("{at}.team"),
                    "in a hierarchical crew the manager delegates to agents; only sequential tasks go to nested teams".into(),
                ),
                Some(_) if !task.agent.is_empty() => problem(
                    format!("{at}.team"),
                    "a task names an `agent` or a `team`, not both".into(),
                ),
                Some(team) if self.nested(team).is_none() => problem(
                    format!("{at}.team"),
                    format!("no nested team is named `{team}`"),
                ),
                Some(_) => {}
                None if (crew.process == ProcessDoc::Sequential || !task.agent.is_empty())
                    && self.agent(&task.agent).is_none() =>
                {
                    problem(
                        format!("{at}.agent"),
                        format!("no agent is named `{}`", task.agent),
                    )
                }
                None => {}
            }
            for (j, source) in task.context.iter().enumerate() {
                if !earlier.contains(source.as_str()) {
                    problem(
                        format!("{at}.context[{j}]"),
                        format!("`{source}` is not an earlier task of this crew"),
                    );
                }
            }
            earlier.insert(task.name.as_str());
        }
    }

    /// Every problem the types cannot rule out, as (field path, message).
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |field: String, message: String| out.push((field, message));
        if !valid_name(&self.name) {
            problem(
                "name".into(),
                "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
            );
        }
        if self.agents.is_empty() || self.agents.len() > MAX_AGENTS {
            problem(
                "agents".into(),
                format!("a team has 1 to {MAX_AGENTS} agents"),
            );
        }
        let mut agent_names = HashSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            let at = format!("agents[{i}]");
            if !valid_name(&agent.name) {
                problem(
                    format!("{at}.name"),
                    "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
                );
            } else if !agent_names.insert(agent.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("agent `{}` is declared twice", agent.name),
                );
            }
            if agent.role.trim().is_empty() {
                problem(format!("{at}.role"), "must not be empty".into());
            }
            if agent.goal.trim().is_empty() {
                problem(format!("{at}.goal"), "must not be empty".into());
            }
            // Which aliases exist is the worker's configuration, checked when a run starts.
            if agent.model.is_empty() || agent.model.len() > 64 {
                problem(format!("{at}.model"), "must name a model alias".into());
            } else if agent.model == REPLAY_MODEL
                && agent.replay.is_empty()
                && agent.kind == AgentKindDoc::Llm
            {
                problem(
                    format!("{at}.replay"),
                    "the `replay` model needs at least one scripted turn".into(),
                );
            }
            if let Some(text) = &agent.replay_latency {
                match parse_duration(text) {
                    Ok(d) if d > Duration::from_secs(600) => {
                        problem(format!("{at}.replay_latency"), "at most 10m".into())
                    }
                    Ok(_) => {}
                    Err(e) => problem(
                        format!("{at}.replay_latency"),
                        format!("`{text}` is not a duration: {e}"),
                    ),
                }
            }
            if agent.replay.len() > MAX_REPLAY_TURNS {
                problem(
                    format!("{at}.replay"),
                    format!("at most {MAX_REPLAY_TURNS} turns"),
                );
            }
            for (j, turn) in agent.replay.iter().enumerate() {
                match (&turn.say, &turn.tool) {
                    (Some(_), None) => {}
                    (None, Some(tool)) if agent.tools.contains(&tool.name) => {}
                    // Swarm agents may always hand off.
                    (None, Some(tool)) if tool.name == "handoff" && self.has_swarm() => {}
                    (None, Some(tool)) => problem(
                        format!("{at}.replay[{j}].tool.name"),
                        format!(
                            "calls tool `{}`, which is not in this agent's `tools`",
                            tool.name
                        ),
                    ),
                    _ => problem(
                        format!("{at}.replay[{j}]"),
                        "a turn has exactly one of `say` or `tool`".into(),
                    ),
                }
            }
        }
        match (&self.crew, &self.group_chat) {
            (Some(_), Some(_)) => problem(
                "group_chat".into(),
                "a team is a `crew` or a `group_chat`, not both".into(),
            ),
            (None, None) => problem(
                String::new(),
                "a team needs a `crew` or a `group_chat`".into(),
            ),
            _ => {}
        }
        if self.teams.len() > MAX_NESTED_TEAMS {
            problem(
                "teams".into(),
                format!("at most {MAX_NESTED_TEAMS} nested teams"),
            );
        }
        let mut team_names = HashSet::new();
        for (i, team) in self.teams.iter().enumerate() {
            let at = format!("teams[{i}]");
            if !valid_name(&team.name) {
                problem(
                    format!("{at}.name"),
                    "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
                );
            } else if agent_names.contains(team.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("`{}` is already an agent's name", team.name),
                );
            } else if !team_names.insert(team.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("nested team `{}` is declared twice", team.name),
                );
            }
            match (&team.crew, &team.group_chat) {
                (Some(crew), None) => {
                    self.crew_problems(crew, &format!("{at}.crew"), true, &mut problem)
                }
                (None, Some(chat)) => {
                    self.chat_problems(chat, &format!("{at}.group_chat"), true, &mut problem)
                }
                _ => problem(
                    at.clone(),
                    "a nested team has exactly one of `crew` or `group_chat`".into(),
                ),
            }
        }
        if let Some(crew) = &self.crew {
            self.crew_problems(crew, "crew", false, &mut problem);
        }
        if let Some(chat) = &self.group_chat {
            self.chat_problems(chat, "group_chat", false, &mut problem);
        }
        if let Some(judge) = &self.judge {
            match self.agent(&judge.agent) {
                None => problem(
                    "judge.agent".into(),
                    format!("no agent is named `{}`", judge.agent),
                ),
                Some(a) if a.kind == AgentKindDoc::A2a => problem(
                    "judge.agent".into(),
                    "the judge scores with a model: it must not be `kind: a2a`".into(),
                ),
                Some(_) => {}
            }
            if judge.criteria.is_empty() || judge.criteria.iter().any(|c| c.trim().is_empty()) {
                problem(
                    "judge.criteria".into(),
                    "name at least one criterion, none empty".into(),
                );
            }
            if !(0.0..=1.0).contains(&judge.threshold) {
                problem("judge.threshold".into(), "must be between 0 and 1".into());
            }
            if judge.max_revisions > 10 {
                problem("judge.max_revisions".into(), "at most 10".into());
            }
        }
        if self.budget.max_steps == Some(0) {
            problem("budget.max_steps".into(), "must be at least 1".into());
        }
        if self.budget.max_tokens == Some(0) {
            problem("budget.max_tokens".into(), "must be at least 1".into());
        }
        if let Some(text) = &self.budget.max_wall_time {
            match parse_duration(text) {
                Ok(d) if d.is_zero() => problem(
                    "budget.max_wall_time".into(),
                    "must be longer than zero".into(),
                ),
                Ok(_) => {}
                Err(e) => problem(
                    "budget.max_wall_time".into(),
                    format!("`{text}` is not a duration: {e}"),
                ),
            }
        }
        out
    }
}
