//! A team document → a [`TeamSpec`]. [`crate::parse`] converts only a
//! document [`super::check`] found nothing wrong with, so these conversions
//! fail only where the types themselves could not hold the document (both
//! a crew and a chat, a hierarchical crew without a manager, …); they say
//! so in the checks' words rather than trusting the checks.

use super::check::{Problem, parse_duration};
use super::doc::{
    AgentDoc, AgentKindDoc, BudgetDoc, ChatDoc, ConditionDoc, CrewDoc, JudgeDoc, ManagerDoc,
    NestedDoc, ProcessDoc, TaskDoc, TeamDoc, TurnDoc,
};
use super::{
    AgentSpec, Approval, Assignee, Budget, Condition, CrewSpec, CrewTask, GroupChatSpec,
    HandoffToUser, JudgeSpec, Manager, NestedTeam, Process, RemoteAgent, ReplayTurn, Shape,
    TeamSpec, Termination,
};

fn problem<T>(field: impl Into<String>, message: &str) -> Result<T, Problem> {
    Err((field.into(), message.to_owned()))
}

impl TryFrom<TeamDoc> for TeamSpec {
    type Error = Problem;

    fn try_from(doc: TeamDoc) -> Result<Self, Problem> {
        // Resolved before the chat is moved out: who speaks when the spec lists no one.
        let speakers: Vec<String> = doc.participants().into_iter().map(str::to_owned).collect();
        let TeamDoc {
            name,
            description,
            agents,
            crew,
            group_chat,
            judge,
            budget,
            teams,
            input,
            approval,
            on_rejection,
        } = doc;
        let shape = match (crew, group_chat) {
            (Some(crew), None) => Shape::Crew(crew_spec(crew, "crew")?),
            (None, Some(chat)) => Shape::GroupChat(chat_spec(chat, speakers, "group_chat")?),
            (Some(_), Some(_)) => {
                return problem(
                    "group_chat",
                    "a team is a `crew` or a `group_chat`, not both",
                );
            }
            (None, None) => return problem("", "a team needs a `crew` or a `group_chat`"),
        };
        Ok(TeamSpec {
            name,
            description,
            agents: agents
                .into_iter()
                .enumerate()
                .map(|(i, a)| agent_spec(a, approval, &format!("agents[{i}]")))
                .collect::<Result<_, _>>()?,
            shape,
            judge: judge.map(judge_spec),
            budget: budget_spec(budget)?,
            teams: teams
                .into_iter()
                .enumerate()
                .map(|(i, t)| nested_team(t, &format!("teams[{i}]")))
                .collect::<Result<_, _>>()?,
            input,
            on_rejection,
        })
    }
}

fn nested_team(doc: NestedDoc, at: &str) -> Result<NestedTeam, Problem> {
    let NestedDoc {
        name,
        description,
        crew,
        group_chat,
    } = doc;
    let shape = match (crew, group_chat) {
        (Some(crew), None) => Shape::Crew(crew_spec(crew, &format!("{at}.crew"))?),
        (None, Some(chat)) => {
            // A nested chat lists its speakers.
            let speakers = chat.participants.clone();
            Shape::GroupChat(chat_spec(chat, speakers, &format!("{at}.group_chat"))?)
        }
        _ => {
            return problem(
                at,
                "a nested team has exactly one of `crew` or `group_chat`",
            );
        }
    };
    Ok(NestedTeam {
        name,
        description,
        shape,
    })
}

fn crew_spec(doc: CrewDoc, at: &str) -> Result<CrewSpec, Problem> {
    let CrewDoc {
        process,
        manager,
        tasks,
    } = doc;
    let process = match (process, manager) {
        (ProcessDoc::Sequential, _) => Process::Sequential,
        (ProcessDoc::Hierarchical, Some(manager)) => Process::Hierarchical { manager },
        (ProcessDoc::Hierarchical, None) => {
            return problem(
                format!("{at}.manager"),
                "a hierarchical crew needs a manager agent",
            );
        }
    };
    let hierarchical = matches!(process, Process::Hierarchical { .. });
    Ok(CrewSpec {
        tasks: tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| crew_task(t, hierarchical, &format!("{at}.tasks[{i}]")))
            .collect::<Result<_, _>>()?,
        process,
    })
}

fn crew_task(doc: TaskDoc, hierarchical: bool, at: &str) -> Result<CrewTask, Problem> {
    let TaskDoc {
        name,
        description,
        expected_output,
        agent,
        team,
        context,
    } = doc;
    let assignee = match (team, agent.is_empty()) {
        (Some(team), true) => Assignee::Team(team),
        (Some(_), false) => {
            return problem(
                format!("{at}.team"),
                "a task names an `agent` or a `team`, not both",
            );
        }
        (None, false) => Assignee::Agent(agent),
        (None, true) if hierarchical => Assignee::Manager,
        (None, true) => return problem(format!("{at}.agent"), "no agent is named ``"),
    };
    Ok(CrewTask {
        name,
        description,
        expected_output,
        assignee,
        context,
    })
}

fn chat_spec(doc: ChatDoc, speakers: Vec<String>, at: &str) -> Result<GroupChatSpec, Problem> {
    let ChatDoc {
        manager,
        participants: _,
        task,
        selector,
        termination,
        handoff_to_user,
    } = doc;
    if handoff_to_user == HandoffToUser::Wait && manager != ManagerDoc::Swarm {
        return problem(
            format!("{at}.handoff_to_user"),
            "only a swarm hands off to `user`: `wait` needs `manager: swarm`",
        );
    }
    let manager = match (manager, selector) {
        (ManagerDoc::RoundRobin, _) => Manager::RoundRobin,
        (ManagerDoc::Swarm, _) => Manager::Swarm,
        (ManagerDoc::Selector, Some(selector)) => Manager::Selector(selector),
        (ManagerDoc::Selector, None) => {
            return problem(
                format!("{at}.selector"),
                "the `selector` manager needs a selector agent",
            );
        }
    };
    if speakers.is_empty() {
        return problem(
            format!("{at}.participants"),
            "a group chat needs at least one speaker",
        );
    }
    let conditions = |list: &str, docs: Vec<ConditionDoc>| -> Result<Vec<Condition>, Problem> {
        docs.into_iter()
            .enumerate()
            .map(|(i, c)| condition(c, &format!("{at}.termination.{list}[{i}]")))
            .collect()
    };
    Ok(GroupChatSpec {
        manager,
        participants: speakers,
        task,
        termination: Termination {
            any: conditions("any", termination.any)?,
            all: conditions("all", termination.all)?,
        },
        handoff_to_user,
    })
}

fn condition(doc: ConditionDoc, at: &str) -> Result<Condition, Problem> {
    match doc {
        ConditionDoc {
            max_messages: Some(n),
            text_mention: None,
            max_tokens: None,
            timeout: None,
        } => Ok(Condition::MaxMessages(n)),
        ConditionDoc {
            max_messages: None,
            text_mention: Some(text),
            max_tokens: None,
            timeout: None,
        } => Ok(Condition::TextMention(text)),
        ConditionDoc {
            max_messages: None,
            text_mention: None,
            max_tokens: Some(n),
            timeout: None,
        } => Ok(Condition::MaxTokens(n)),
        ConditionDoc {
            max_messages: None,
            text_mention: None,
            max_tokens: None,
            timeout: Some(text),
        } => parse_duration(&text)
            .map(Condition::Timeout)
            .or_else(|e| problem(format!("{at}.timeout"), &e)),
        _ => problem(
            at,
            "a condition has exactly one of max_messages, text_mention, max_tokens or timeout",
        ),
    }
}

fn judge_spec(doc: JudgeDoc) -> JudgeSpec {
    let JudgeDoc {
        agent,
        criteria,
        threshold,
        max_revisions,
    } = doc;
    JudgeSpec {
        agent,
        criteria,
        threshold,
        max_revisions,
    }
}

fn agent_spec(doc: AgentDoc, team_approval: Approval, at: &str) -> Result<AgentSpec, Problem> {
    let AgentDoc {
        name,
        role,
        goal,
        backstory,
        model,
        tools,
        memory,
        replay,
        replay_latency,
        approval,
        kind,
        url,
        skill,
    } = doc;
    let remote = match kind {
        AgentKindDoc::Llm => {
            if url.is_some() || skill.is_some() {
                return problem(
                    format!("{at}.url"),
                    "`url` and `skill` belong to a remote agent: add `kind: a2a`",
                );
            }
            None
        }
        AgentKindDoc::A2a => {
            let Some(url) = url else {
                return problem(
                    format!("{at}.url"),
                    "a `kind: a2a` agent needs the `url` of its A2A gRPC endpoint",
                );
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                return problem(
                    format!("{at}.url"),
                    &format!("`{url}` is not an http:// or https:// URL"),
                );
            }
            if !tools.is_empty() || !replay.is_empty() {
                return problem(
                    format!("{at}.kind"),
                    "a remote agent has no `tools` or `replay` of its own: the remote system runs it",
                );
            }
            if skill
                .as_ref()
                .is_some_and(|s| s.is_empty() || s.len() > 256)
            {
                return problem(format!("{at}.skill"), "1 to 256 characters");
            }
            Some(RemoteAgent { url, skill })
        }
    };
    let replay = replay
        .into_iter()
        .enumerate()
        .map(|(j, turn)| match turn {
            TurnDoc {
                say: Some(text),
                tool: None,
            } => Ok(ReplayTurn::Say(text)),
            TurnDoc {
                say: None,
                tool: Some(tool),
            } => Ok(ReplayTurn::Tool(tool)),
            _ => problem(
                format!("{at}.replay[{j}]"),
                "a turn has exactly one of `say` or `tool`",
            ),
        })
        .collect::<Result<_, _>>()?;
    let replay_latency = replay_latency
        .map(|text| parse_duration(&text))
        .transpose()
        .or_else(|e| problem(format!("{at}.replay_latency"), &e))?;
    Ok(AgentSpec {
        name,
        role,
        goal,
        backstory,
        model,
        tools,
        memory,
        replay,
        replay_latency,
        approval: if team_approval == Approval::Required {
            Approval::Required
        } else {
            approval
        },
        remote,
    })
}

fn budget_spec(doc: BudgetDoc) -> Result<Budget, Problem> {
    let BudgetDoc {
        max_steps,
        max_tokens,
        max_wall_time,
    } = doc;
    Ok(Budget {
        max_steps,
        max_tokens,
        max_wall_time: max_wall_time
            .map(|text| parse_duration(&text))
            .transpose()
            .or_else(|e| problem("budget.max_wall_time", &e))?,
    })
}
