use std::time::Duration;

use super::*;

const GOOD: &str = r#"name: demo
description: two agents
agents:
  - name: researcher
    role: Researcher
    goal: Find facts
    tools: [file_write]
    replay:
      - tool: { name: file_write, args: { path: notes.md, content: "about {input}" } }
      - say: "notes written"
  - name: writer
    role: Writer
    goal: Write
    replay:
      - say: "the brief"
crew:
  process: sequential
  tasks:
    - name: research
      description: Research {input}
      agent: researcher
    - name: write
      description: Write it up
      agent: writer
      context: [research]
"#;

#[test]
fn a_good_spec_parses() {
    let spec = parse(GOOD).unwrap();
    assert_eq!(spec.agents.len(), 2);
    let Shape::Crew(crew) = &spec.shape else {
        panic!("a crew: {:?}", spec.shape)
    };
    assert_eq!(crew.process, Process::Sequential);
    assert_eq!(crew.tasks[1].context, vec!["research"]);
    assert_eq!(crew.tasks[1].assignee, Assignee::Agent("writer".into()));
    let ReplayTurn::Tool(tool) = &spec.agents[0].replay[0] else {
        panic!("a tool turn: {:?}", spec.agents[0].replay)
    };
    assert_eq!(tool.name, "file_write");
}

#[test]
fn a_syntax_error_names_its_line() {
    let bad = GOOD.replace("  - name: writer\n", "  - name: writer\n   oops: [\n");
    let errors = parse(&bad).unwrap_err();
    assert!(errors.0[0].line.is_some(), "{errors}");
    assert!(errors.to_string().starts_with("line "), "{errors}");
}

#[test]
fn an_unknown_field_names_its_line_and_field() {
    let bad = GOOD.replace("    goal: Write\n", "    goal: Write\n    gaol: typo\n");
    let errors = parse(&bad).unwrap_err();
    let error = &errors.0[0];
    assert_eq!(error.line, Some(14), "{errors}");
    assert!(error.message.contains("gaol"), "{errors}");
}

#[test]
fn a_semantic_error_names_its_line_and_field() {
    let bad = GOOD.replace("      agent: writer\n", "      agent: writr\n");
    let errors = parse(&bad).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let error = &errors.0[0];
    assert_eq!(error.field, "crew.tasks[1].agent");
    assert_eq!(error.line, Some(24), "{errors}");
    assert_eq!(
        error.to_string(),
        "line 24: `crew.tasks[1].agent`: no agent is named `writr`"
    );
}

#[test]
fn context_must_name_an_earlier_task() {
    let bad = GOOD.replace("context: [research]", "context: [write]");
    let errors = parse(&bad).unwrap_err();
    assert_eq!(errors.0[0].field, "crew.tasks[1].context[0]");
    assert_eq!(errors.0[0].line, Some(25));
}

#[test]
fn a_tool_outside_the_agents_tools_is_refused() {
    let bad = GOOD.replace("tools: [file_write]", "tools: []");
    let errors = parse(&bad).unwrap_err();
    assert_eq!(errors.0[0].field, "agents[0].replay[0].tool.name");
    assert_eq!(errors.0[0].line, Some(9));
}

#[test]
fn the_hybrid_example_parses_as_a_hybrid() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/teams/hybrid-launch.yaml"),
    )
    .unwrap();
    let spec = parse(&text).unwrap();
    assert_eq!(spec.kind(), "hybrid");
    let nested = spec.nested_spec(spec.nested("debate").unwrap());
    assert_eq!(nested.participants(), ["marketer", "engineer"]);
    assert!(nested.judge.is_none() && nested.teams.is_empty());
}

#[test]
fn hybrid_mistakes_name_their_line_and_field() {
    let spec = r#"name: h
agents:
  - name: a
    role: r
    goal: g
    replay: [{ say: hi }]
  - name: b
    role: r
    goal: g
    replay: [{ say: hi }]
teams:
  - name: a
    crew: { tasks: [{ name: t, description: d, agent: a }] }
  - name: chat
    group_chat:
      manager: round_robin
      task: talk
      termination: { any: [{ max_messages: 2 }] }
  - name: inner
    crew: { tasks: [{ name: t, description: d, team: chat }] }
group_chat:
  manager: swarm
  participants: [a, inner, chat, ghost]
  task: go
  termination: { any: [{ max_messages: 2 }] }
"#;
    let errors = parse(spec).unwrap_err().0;
    let found: Vec<(Option<usize>, &str)> =
        errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    for (line, field, words) in [
        (12, "teams[0].name", "already an agent"),
        (15, "teams[1].group_chat.participants", "lists its speakers"),
        (20, "teams[2].crew.tasks[0].team", "do not nest further"),
        (23, "group_chat.participants[1]", "cannot hand off"),
        (23, "group_chat.participants[2]", "must be a crew"),
        (23, "group_chat.participants[3]", "no agent or nested team"),
    ] {
        let e = errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error at {field}: {found:?}"));
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(words), "{e}");
    }
}

#[test]
fn a_task_names_an_agent_or_a_team_not_both() {
    let bad = GOOD.replace(
        "      agent: writer\n",
        "      agent: writer\n      team: nobody\n",
    );
    let errors = parse(&bad).unwrap_err();
    assert_eq!(errors.0[0].field, "crew.tasks[1].team", "{errors}");
    assert!(errors.0[0].message.contains("not both"), "{errors}");
}

#[test]
fn durations_and_defaults_arrive_resolved() {
    let spec = parse(
        r#"name: chat
agents:
  - name: a
    role: r
    goal: g
    replay_latency: 250ms
    replay: [{ say: hi }]
  - name: pick
    role: r
    goal: g
    replay: [{ say: a }]
  - name: judge
    role: r
    goal: g
    replay: [{ say: "{}" }]
group_chat:
  manager: selector
  selector: pick
  task: talk
  termination: { any: [{ timeout: 2m }, { text_mention: DONE }] }
judge: { agent: judge, criteria: [good] }
budget: { max_wall_time: 1h }
"#,
    )
    .unwrap();
    assert_eq!(spec.kind(), "group_chat");
    assert_eq!(
        spec.agents[0].replay_latency,
        Some(Duration::from_millis(250))
    );
    assert_eq!(spec.budget.max_wall_time, Some(Duration::from_secs(3600)));
    let Shape::GroupChat(chat) = &spec.shape else {
        panic!("a chat: {:?}", spec.shape)
    };
    assert_eq!(chat.manager, Manager::Selector("pick".into()));
    // Neither the selector nor the judge speaks when no one is listed.
    assert_eq!(spec.participants(), ["a"]);
    assert_eq!(
        chat.termination.any,
        [
            Condition::Timeout(Duration::from_secs(120)),
            Condition::TextMention("DONE".into())
        ]
    );
    assert_eq!(spec.judge.unwrap().threshold, 0.7);
}

#[test]
fn a_hierarchical_task_without_an_agent_is_the_managers_to_assign() {
    let spec = parse(
        r#"name: h
agents:
  - { name: boss, role: r, goal: g, replay: [{ say: hi }] }
  - { name: w, role: r, goal: g, replay: [{ say: hi }] }
crew:
  process: hierarchical
  manager: boss
  tasks: [{ name: t, description: d }]
"#,
    )
    .unwrap();
    let Shape::Crew(crew) = &spec.shape else {
        panic!("a crew: {:?}", spec.shape)
    };
    assert_eq!(
        crew.process,
        Process::Hierarchical {
            manager: "boss".into()
        }
    );
    assert_eq!(crew.tasks[0].assignee, Assignee::Manager);
}

#[test]
fn both_or_neither_shape_is_refused() {
    let both = GOOD.to_owned()
        + "group_chat:\n  manager: round_robin\n  task: t\n  termination: { any: [{ max_messages: 1 }] }\n";
    let errors = parse(&both).unwrap_err();
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.field == "group_chat" && e.message.contains("not both")),
        "{errors}"
    );
    let crew_at = GOOD.find("crew:").unwrap();
    let errors = parse(&GOOD[..crew_at]).unwrap_err();
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.message == "a team needs a `crew` or a `group_chat`"),
        "{errors}"
    );
}

#[test]
fn a_problem_path_inside_the_request_field_has_no_trailing_dot() {
    let whole = SpecError {
        line: Some(2),
        field: String::new(),
        message: "bad".into(),
    };
    assert_eq!(whole.path_within("spec_yaml"), "spec_yaml");
    let inside = SpecError {
        line: Some(3),
        field: "agents[0].model".into(),
        message: "bad".into(),
    };
    assert_eq!(inside.path_within("spec_yaml"), "spec_yaml.agents[0].model");
}

#[test]
fn input_is_optional_unless_the_spec_requires_it() {
    let spec = parse(GOOD).unwrap();
    assert_eq!(spec.input, Input::Optional);
    assert_eq!(spec.input.refuses(""), None);
    let required = parse(&format!("{GOOD}input: required\n")).unwrap();
    assert_eq!(required.input, Input::Required);
    assert!(required.input.refuses("").is_some());
    assert!(required.input.refuses(" \n\t").is_some());
    assert_eq!(required.input.refuses("edge caching"), None);
    let optional = parse(&format!("{GOOD}input: optional\n")).unwrap();
    assert_eq!(optional.input, Input::Optional);
    let Err(errors) = parse(&format!("{GOOD}input: sometimes\n")) else {
        panic!("an unknown input rule is refused")
    };
    assert_eq!(errors.0[0].field, "input", "{errors}");
}

/// GOOD with its researcher replaced by `agent` (YAML lines, indented).
fn with_researcher(agent: &str) -> String {
    let start = GOOD.find("  - name: researcher").unwrap();
    let end = GOOD.find("  - name: writer").unwrap();
    format!("{}{agent}{}", &GOOD[..start], &GOOD[end..])
}

#[test]
fn a_remote_agent_names_its_url_and_has_no_model_of_its_own() {
    let spec = parse(&with_researcher(
        "  - name: researcher\n    role: Partner\n    goal: Research\n    kind: a2a\n    url: http://partner:50051\n    skill: research-crew\n",
    ))
    .unwrap();
    assert_eq!(
        spec.agents[0].remote,
        Some(RemoteAgent {
            url: "http://partner:50051".into(),
            skill: Some("research-crew".into()),
        })
    );
    assert_eq!(spec.agents[1].remote, None);
}

#[test]
fn a_remote_agent_is_refused_without_a_url_or_with_tools() {
    let errors = |agent: &str| parse(&with_researcher(agent)).unwrap_err().to_string();
    let no_url = errors("  - name: researcher\n    role: R\n    goal: G\n    kind: a2a\n");
    assert!(no_url.contains("agents[0].url"), "{no_url}");
    let tools = errors(
        "  - name: researcher\n    role: R\n    goal: G\n    kind: a2a\n    url: http://p:1\n    tools: [file_write]\n",
    );
    assert!(tools.contains("agents[0].kind"), "{tools}");
    let not_remote = errors(
        "  - name: researcher\n    role: R\n    goal: G\n    url: http://p:1\n    replay: [{ say: x }]\n",
    );
    assert!(not_remote.contains("kind: a2a"), "{not_remote}");
    let scheme =
        errors("  - name: researcher\n    role: R\n    goal: G\n    kind: a2a\n    url: ftp://p\n");
    assert!(scheme.contains("http://"), "{scheme}");
}
