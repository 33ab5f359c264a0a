//! A team's shape as a graph for people to look at (the dashboard draws
//! it): crew tasks in order with the agents that carry them out, a group
//! chat with its speakers and its selector, the manager of a hierarchical
//! crew, nested teams of a hybrid (their nodes prefixed with the nested
//! team's id), and the judge.
//!
//! Everything this service reads of a spec to draw it is read here, so a
//! change to the spec's types touches this file only. The graph is bounded
//! by the spec's own bounds (agents, tasks, nested teams), and descriptions
//! are cut short: it is an outline, not a copy of the spec.

use amaos_proto::agents::v1::{TeamEdge, TeamGraph, TeamNode, TeamNodeKind};
use amaos_teams::{Assignee, CrewSpec, GroupChatSpec, Manager, Process, Shape, TeamSpec};

/// Longest `detail` of a node, in characters.
const MAX_DETAIL: usize = 160;

/// The id of the root node (the team itself).
pub const ROOT: &str = "team";

/// The graph of `spec`.
pub fn team_graph(spec: &TeamSpec) -> TeamGraph {
    let mut graph = Builder::default();
    graph.node(
        ROOT.into(),
        &spec.name,
        TeamNodeKind::Team,
        "",
        &format!("{} team", kind_label(spec.kind())),
    );
    let top = Scope {
        spec,
        id: ROOT.into(),
        prefix: String::new(),
        parent: String::new(),
    };
    // Where the output the judge sees comes from.
    let last = match &spec.shape {
        Shape::Crew(crew) => graph.crew(&top, crew, true),
        Shape::GroupChat(chat) => graph.chat(&top, chat, spec.participants()),
    };
    if let Some(judge) = &spec.judge {
        let id = graph.agent(&top, &judge.agent, TeamNodeKind::Judge);
        graph.edge(&last, &id, "judges");
        if judge.max_revisions > 0 {
            graph.edge(&id, &last, "revise");
        }
    }
    graph.done()
}

fn kind_label(kind: &str) -> &str {
    match kind {
        "group_chat" => "group chat",
        other => other,
    }
}

/// Where nodes are being added: the team or one of its nested teams.
struct Scope<'a> {
    /// The outer team (agents and nested teams are looked up there).
    spec: &'a TeamSpec,
    /// The scope's node id (`team`, or `team:<name>`).
    id: String,
    /// Prefixed to the ids of the scope's nodes (`team:<name>/`).
    prefix: String,
    /// The `parent` of the scope's nodes.
    parent: String,
}

#[derive(Default)]
struct Builder {
    nodes: Vec<TeamNode>,
    edges: Vec<TeamEdge>,
}

impl Builder {
    fn has(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id)
    }

    fn node(&mut self, id: String, label: &str, kind: TeamNodeKind, parent: &str, detail: &str) {
        if self.has(&id) {
            return;
        }
        self.nodes.push(TeamNode {
            id,
            label: label.to_owned(),
            kind: kind as i32,
            parent: parent.to_owned(),
            detail: short(detail),
        });
    }

    fn edge(&mut self, from: &str, to: &str, label: &str) {
        let edge = TeamEdge {
            from: from.to_owned(),
            to: to.to_owned(),
            label: label.to_owned(),
        };
        if !self.edges.contains(&edge) {
            self.edges.push(edge);
        }
    }

    /// The node of agent `name` in `scope` (added once, with the kind it is
    /// first met as: a manager or selector stays one), returning its id.
    fn agent(&mut self, scope: &Scope<'_>, name: &str, kind: TeamNodeKind) -> String {
        let id = format!("{}agent:{name}", scope.prefix);
        let detail = match scope.spec.agent(name) {
            Some(agent) => {
                let mut detail = agent.role.clone();
                if !agent.tools.is_empty() {
                    detail.push_str(&format!(" · tools: {}", agent.tools.join(", ")));
                }
                if agent.memory {
                    detail.push_str(" · memory");
                }
                detail
            }
            None => String::new(),
        };
        self.node(id.clone(), name, kind, &scope.parent, &detail);
        id
    }

    /// The node of nested team `name` (always at the top level, whatever
    /// refers to it), with its own crew or chat inside; returns its id.
    fn nested(&mut self, spec: &TeamSpec, name: &str) -> String {
        let id = format!("team:{name}");
        if self.has(&id) {
            return id;
        }
        let Some(nested) = spec.nested(name) else {
            // Validation rules this out; draw what is named all the same.
            self.node(id.clone(), name, TeamNodeKind::Team, "", "");
            return id;
        };
        let kind = match nested.shape {
            Shape::Crew(_) => "nested crew",
            Shape::GroupChat(_) => "nested group chat",
        };
        let detail = if nested.description.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind} · {}", nested.description)
        };
        self.node(id.clone(), name, TeamNodeKind::Team, "", &detail);
        let scope = Scope {
            spec,
            id: id.clone(),
            prefix: format!("{id}/"),
            parent: id.clone(),
        };
        match &nested.shape {
            Shape::Crew(crew) => {
                self.crew(&scope, crew, false);
            }
            Shape::GroupChat(chat) => {
                let inner = spec.nested_spec(nested);
                self.chat(&scope, chat, inner.participants());
            }
        }
        id
    }

    /// A crew's tasks in order; returns the last task's id (the crew's
    /// output).
    fn crew(&mut self, scope: &Scope<'_>, crew: &CrewSpec, top: bool) -> String {
        let manager = match &crew.process {
            Process::Hierarchical { manager: m } => {
                let id = self.agent(scope, m, TeamNodeKind::Manager);
                self.edge(&scope.id, &id, "starts");
                Some(id)
            }
            _ => None,
        };
        let mut previous: Option<String> = None;
        for task in &crew.tasks {
            let id = format!("{}task:{}", scope.prefix, task.name);
            self.node(
                id.clone(),
                &task.name,
                TeamNodeKind::Task,
                &scope.parent,
                &task.description,
            );
            match (&previous, &manager) {
                (Some(p), _) => self.edge(p, &id, "next"),
                (None, None) => self.edge(&scope.id, &id, "starts"),
                (None, Some(_)) => {}
            }
            if let Some(m) = &manager {
                self.edge(m, &id, "delegates");
            }
            for source in &task.context {
                // The task just before is already joined by `next`.
                if previous.as_deref() != Some(&format!("{}task:{source}", scope.prefix)) {
                    self.edge(&format!("{}task:{source}", scope.prefix), &id, "context");
                }
            }
            match &task.assignee {
                Assignee::Team(team) if top => {
                    let nested = self.nested(scope.spec, team);
                    self.edge(&id, &nested, "runs");
                }
                Assignee::Agent(name) => {
                    let agent = self.agent(scope, name, TeamNodeKind::Agent);
                    let label = if manager.is_some() {
                        "hint"
                    } else {
                        "assigned"
                    };
                    self.edge(&id, &agent, label);
                }
                _ => {}
            }
            previous = Some(id);
        }
        // The manager may hand any task to any other agent of the team
        // (the task's `agent` is only a hint): draw whom it can choose.
        if let (Some(m), Process::Hierarchical { manager: name }) = (&manager, &crew.process) {
            let judge = scope.spec.judge.as_ref().map(|j| j.agent.as_str());
            for agent in &scope.spec.agents {
                if agent.name != *name && Some(agent.name.as_str()) != judge {
                    let id = self.agent(scope, &agent.name, TeamNodeKind::Agent);
                    self.edge(m, &id, "delegates to");
                }
            }
        }
        previous.unwrap_or_else(|| scope.id.clone())
    }

    /// A group chat with its speakers; returns the chat's id (its output).
    fn chat(&mut self, scope: &Scope<'_>, chat: &GroupChatSpec, speakers: Vec<&str>) -> String {
        let id = format!("{}chat", scope.prefix);
        let manager = match chat.manager {
            Manager::RoundRobin => "round robin",
            Manager::Selector(_) => "selector",
            Manager::Swarm => "swarm",
        };
        self.node(
            id.clone(),
            "group chat",
            TeamNodeKind::Chat,
            &scope.parent,
            &format!("{manager} · {}", chat.task),
        );
        self.edge(&scope.id, &id, "starts");
        let selector = match &chat.manager {
            Manager::Selector(s) => {
                let s = self.agent(scope, s, TeamNodeKind::Selector);
                self.edge(&id, &s, "asks");
                Some(s)
            }
            _ => None,
        };
        for (turn, speaker) in speakers.into_iter().enumerate() {
            let node = match scope.spec.nested(speaker) {
                Some(_) if scope.prefix.is_empty() => self.nested(scope.spec, speaker),
                _ => self.agent(scope, speaker, TeamNodeKind::Agent),
            };
            match (&selector, &chat.manager) {
                (Some(s), _) => self.edge(s, &node, "selects"),
                (None, Manager::RoundRobin) => self.edge(&id, &node, &format!("turn {}", turn + 1)),
                (None, Manager::Swarm) if turn == 0 => self.edge(&id, &node, "starts"),
                (None, _) => self.edge(&id, &node, "hands off"),
            }
        }
        id
    }

    fn done(self) -> TeamGraph {
        TeamGraph {
            nodes: self.nodes,
            edges: self.edges,
        }
    }
}

fn short(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MAX_DETAIL) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(yaml: &str) -> TeamGraph {
        team_graph(&amaos_teams::parse(yaml).unwrap())
    }

    fn example(name: &str) -> TeamGraph {
        let path = format!(
            "{}/../../examples/teams/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        graph(&std::fs::read_to_string(path).unwrap())
    }

    fn ids(graph: &TeamGraph, kind: TeamNodeKind) -> Vec<&str> {
        graph
            .nodes
            .iter()
            .filter(|n| n.kind == kind as i32)
            .map(|n| n.id.as_str())
            .collect()
    }

    fn edges(graph: &TeamGraph) -> Vec<(&str, &str, &str)> {
        graph
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.label.as_str()))
            .collect()
    }

    /// Every edge joins two nodes of the graph, and ids are unique.
    fn well_formed(graph: &TeamGraph) {
        let mut seen = std::collections::HashSet::new();
        for node in &graph.nodes {
            assert!(seen.insert(node.id.as_str()), "duplicate node {}", node.id);
            assert!(node.parent.is_empty() || seen.contains(node.parent.as_str()));
        }
        for e in &graph.edges {
            assert!(seen.contains(e.from.as_str()), "dangling {e:?}");
            assert!(seen.contains(e.to.as_str()), "dangling {e:?}");
        }
    }

    #[test]
    fn a_sequential_crew_is_its_tasks_in_order_with_their_agents() {
        let g = example("research-crew");
        well_formed(&g);
        assert_eq!(g.nodes[0].id, ROOT);
        assert_eq!(g.nodes[0].label, "research-crew");
        assert_eq!(ids(&g, TeamNodeKind::Task), ["task:research", "task:write"]);
        assert_eq!(
            ids(&g, TeamNodeKind::Agent),
            ["agent:researcher", "agent:writer"]
        );
        assert_eq!(
            edges(&g),
            [
                ("team", "task:research", "starts"),
                ("task:research", "agent:researcher", "assigned"),
                ("task:research", "task:write", "next"),
                ("task:write", "agent:writer", "assigned"),
            ]
        );
        let researcher = g.nodes.iter().find(|n| n.id == "agent:researcher").unwrap();
        assert_eq!(
            researcher.detail,
            "Senior research analyst · tools: file_write, file_list · memory"
        );
    }

    #[test]
    fn a_hierarchical_crew_has_its_manager_delegate_every_task() {
        let g = example("hierarchical-crew");
        well_formed(&g);
        let managers = ids(&g, TeamNodeKind::Manager);
        assert_eq!(managers.len(), 1);
        let tasks = ids(&g, TeamNodeKind::Task);
        assert!(!tasks.is_empty());
        for task in &tasks {
            assert!(edges(&g).contains(&(managers[0], task, "delegates")));
        }
        assert!(edges(&g).contains(&("team", managers[0], "starts")));
        assert!(!edges(&g).iter().any(|e| e.2 == "assigned"));
        // Every other agent is someone the manager can delegate to.
        let agents = ids(&g, TeamNodeKind::Agent);
        assert!(!agents.is_empty());
        for agent in agents {
            assert!(edges(&g).contains(&(managers[0], agent, "delegates to")));
        }
    }

    #[test]
    fn a_round_robin_chat_numbers_its_turns() {
        let g = example("round-robin-chat");
        well_formed(&g);
        assert_eq!(ids(&g, TeamNodeKind::Chat), ["chat"]);
        // The chat's output goes to the judge; every other edge is a turn.
        let turns: Vec<_> = edges(&g)
            .into_iter()
            .filter(|e| e.0 == "chat" && e.2 != "judges")
            .map(|e| e.2.to_owned())
            .collect();
        assert!(turns.len() >= 2);
        for (i, label) in turns.iter().enumerate() {
            assert_eq!(*label, format!("turn {}", i + 1));
        }
    }

    #[test]
    fn a_selector_chat_draws_the_selector_picking_each_speaker() {
        let g = example("selector-chat");
        well_formed(&g);
        let selector = ids(&g, TeamNodeKind::Selector);
        assert_eq!(selector.len(), 1);
        assert!(edges(&g).contains(&("chat", selector[0], "asks")));
        let picks = edges(&g).iter().filter(|e| e.2 == "selects").count();
        assert!(picks >= 2);
        // The selector is not among the speakers.
        assert!(!edges(&g).contains(&(selector[0], selector[0], "selects")));
    }

    #[test]
    fn a_swarm_starts_with_its_first_speaker() {
        let g = example("swarm");
        well_formed(&g);
        let from_chat: Vec<_> = edges(&g)
            .into_iter()
            .filter(|e| e.0 == "chat")
            .map(|e| e.2)
            .collect();
        assert_eq!(from_chat[0], "starts");
        assert!(from_chat[1..].iter().all(|l| *l == "hands off"));
    }

    #[test]
    fn a_hybrid_nests_its_teams_and_the_judge_closes_the_loop() {
        let g = example("hybrid-launch");
        well_formed(&g);
        assert_eq!(ids(&g, TeamNodeKind::Team), ["team", "team:debate"]);
        let e = edges(&g);
        assert!(e.contains(&("task:decide", "team:debate", "runs")));
        assert!(e.contains(&("team:debate", "team:debate/chat", "starts")));
        assert!(e.contains(&("team:debate/chat", "team:debate/agent:marketer", "turn 1")));
        assert!(e.contains(&("team:debate/chat", "team:debate/agent:engineer", "turn 2")));
        assert!(e.contains(&("task:plan", "agent:reviewer", "judges")));
        assert!(e.contains(&("agent:reviewer", "task:plan", "revise")));
        // `plan` takes `decide` as context, which `next` already joins.
        assert!(!e.iter().any(|e| e.2 == "context"));
        let inner = g.nodes.iter().find(|n| n.id == "team:debate/chat").unwrap();
        assert_eq!(inner.parent, "team:debate");
        assert_eq!(ids(&g, TeamNodeKind::Judge), ["agent:reviewer"]);
    }

    #[test]
    fn context_from_further_back_is_its_own_edge() {
        let g = graph(
            r#"name: three
agents:
  - { name: a, role: A, goal: g, replay: [{ say: done }] }
crew:
  tasks:
    - { name: one, description: d, agent: a }
    - { name: two, description: d, agent: a }
    - { name: three, description: d, agent: a, context: [one, two] }
"#,
        );
        well_formed(&g);
        let e = edges(&g);
        assert!(e.contains(&("task:one", "task:three", "context")));
        assert!(!e.contains(&("task:two", "task:three", "context")));
        // One agent node, however many tasks it has.
        assert_eq!(ids(&g, TeamNodeKind::Agent), ["agent:a"]);
    }

    #[test]
    fn details_are_cut_short() {
        let long = "word ".repeat(200);
        let g = graph(&format!(
            "name: t\nagents:\n  - {{ name: a, role: A, goal: g, replay: [{{ say: done }}] }}\ncrew:\n  tasks:\n    - {{ name: one, description: \"{long}\", agent: a }}\n"
        ));
        let task = g.nodes.iter().find(|n| n.id == "task:one").unwrap();
        assert_eq!(task.detail.chars().count(), MAX_DETAIL + 1);
        assert!(task.detail.ends_with('…'));
    }
}
