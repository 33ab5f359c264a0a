//! Group chats and the judge through the real mesh, on the replay model:
//! round robin with a text-mention stop, a selector whose invalid pick falls
//! back to round robin, a judge's revise → pass, and escalation to review.

mod common;

use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::agents::v1::{SpeakerSelected, Verdict, VerdictKind};
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use common::{TestMesh, repo_root};

async fn run(mesh: &TestMesh, key: &str, spec: &str, input: &str) -> (pb::Task, Vec<Payload>) {
    let task_id = mesh.submit(key, spec, input).await;
    let payloads = mesh
        .events(key, &task_id)
        .await
        .into_iter()
        .filter_map(|e| match e.kind {
            Some(Kind::RunEvent(run)) => run.payload,
            _ => None,
        })
        .collect();
    let task = mesh.task(key, &task_id).await;
    (task, payloads)
}

fn speakers(payloads: &[Payload]) -> Vec<(String, String)> {
    payloads
        .iter()
        .filter_map(|p| match p {
            Payload::SpeakerSelected(SpeakerSelected { speaker, method }) => {
                Some((speaker.clone(), method.clone()))
            }
            _ => None,
        })
        .collect()
}

fn verdicts(payloads: &[Payload]) -> Vec<i32> {
    payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Verdict(Verdict { kind, .. }) => Some(*kind),
            _ => None,
        })
        .collect()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples/teams").join(name)).unwrap()
}

#[tokio::test]
async fn a_round_robin_chat_stops_on_its_mention_and_the_judge_revises_then_passes() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let (task, payloads) = run(
        &mesh,
        &key,
        &example("round-robin-chat.yaml"),
        "remote work",
    )
    .await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let order: Vec<String> = speakers(&payloads).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        order,
        ["optimist", "skeptic", "optimist"],
        "stopped at AGREED, not at 4 messages"
    );
    assert_eq!(
        verdicts(&payloads),
        [VerdictKind::Revise as i32, VerdictKind::Pass as i32]
    );
    assert_eq!(
        task.output,
        "Conclusion: adopt remote work step by step, measuring collaboration costs as you go."
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_selector_chat_falls_back_to_round_robin_after_an_invalid_pick() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let (task, payloads) = run(
        &mesh,
        &key,
        &example("selector-chat.yaml"),
        "a product launch",
    )
    .await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(
        speakers(&payloads),
        [
            ("planner".to_owned(), "selector".to_owned()),
            ("writer".to_owned(), "fallback".to_owned())
        ]
    );
    assert_eq!(
        task.output,
        "Announcement: a product launch ships next week."
    );
    mesh.stop().await;
}

#[tokio::test]
async fn an_escalated_verdict_ends_the_task_in_needs_review() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let spec = r#"name: escalating
agents:
  - name: author
    role: Author
    goal: Write
    replay:
      - say: "a draft about {input}"
  - name: reviewer
    role: Reviewer
    goal: Judge
    replay:
      - say: 'Looks risky. {"verdict": "escalate", "score": 0.2, "feedback": "legal must review this"}'
crew:
  tasks:
    - { name: draft, description: "Draft {input}", agent: author }
judge:
  agent: reviewer
  criteria: [No legal risk]
"#;
    let (task, payloads) = run(&mesh, &key, spec, "a contract").await;
    assert_eq!(task.state, pb::TaskState::NeedsReview as i32, "{task:?}");
    assert!(
        task.error
            .unwrap()
            .message
            .contains("legal must review this")
    );
    assert_eq!(verdicts(&payloads), [VerdictKind::Escalate as i32]);
    assert_eq!(task.attempt, 1, "an escalation is not retried");
    mesh.stop().await;
}

#[test]
fn chat_specs_are_validated_with_lines() {
    let both = example("round-robin-chat.yaml").replace("judge:\n", "crew:\n  tasks: []\njudge:\n");
    let errors = amaos_teams::parse(&both).unwrap_err();
    assert!(errors.to_string().contains("not both"), "{errors}");
    let no_stop = example("round-robin-chat.yaml").replace(
        "  termination:\n    any:\n      - text_mention: AGREED\n      - max_messages: 4\n",
        "  termination: {}\n",
    );
    let errors = amaos_teams::parse(&no_stop).unwrap_err();
    assert!(errors.to_string().contains("stop condition"), "{errors}");
    assert!(errors.0[0].line.is_some(), "{errors}");
    let two_in_one = example("round-robin-chat.yaml").replace(
        "      - max_messages: 4\n",
        "      - { max_messages: 4, max_tokens: 9 }\n",
    );
    let errors = amaos_teams::parse(&two_in_one).unwrap_err();
    assert_eq!(
        errors.0[0].field, "group_chat.termination.any[1]",
        "{errors}"
    );
}

#[tokio::test]
async fn a_chat_repeating_itself_is_stopped_as_a_loop() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let spec = r#"name: echo-chamber
agents:
  - name: echo
    role: Echo
    goal: Repeat
    replay:
      - say: "same again"
      - say: "same again"
      - say: "same again"
      - say: "never reached"
group_chat:
  manager: round_robin
  task: "Talk about {input}"
  termination:
    any:
      - max_messages: 10
"#;
    let (task, _) = run(&mesh, &key, spec, "x").await;
    assert_eq!(task.state, pb::TaskState::Failed as i32, "{task:?}");
    let error = task.error.unwrap();
    assert!(error.message.contains("loop detected"), "{}", error.message);
    assert_eq!(error.class, pb::ErrorClass::Budget as i32);
    mesh.stop().await;
}

#[tokio::test]
async fn a_swarm_hands_off_and_a_handoff_to_the_user_ends_it() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let (task, payloads) = run(&mesh, &key, &example("swarm.yaml"), "order 42").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let handoffs: Vec<(String, String)> = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Handoff(h) => Some((h.from.clone(), h.to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        handoffs,
        [
            ("triage".to_owned(), "billing".to_owned()),
            ("billing".to_owned(), "user".to_owned())
        ]
    );
    assert_eq!(
        task.output,
        "Refund approved for order 42; it reaches the card in 3 to 5 days."
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_hierarchical_manager_delegates_reviews_and_sends_work_back() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let (task, payloads) = run(
        &mesh,
        &key,
        &example("hierarchical-crew.yaml"),
        "edge caching",
    )
    .await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let delegations: Vec<String> = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Handoff(h) if h.from == "lead" => Some(h.to.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        delegations,
        ["researcher", "writer", "writer"],
        "the writer got its work back once"
    );
    // The delegation really reached the researcher: its tool ran in the workspace.
    let facts = mesh
        .config
        .workspace_dir()
        .join("acme")
        .join(&task.task_id)
        .join("facts.md");
    assert!(
        std::fs::read_to_string(facts)
            .unwrap()
            .contains("stale data")
    );
    assert_eq!(
        task.output,
        "Brief on edge caching: it cuts latency by serving from nearby nodes; the trade-off is stale data."
    );
    mesh.stop().await;
}

/// A one-agent round-robin chat whose agent says `lines` in turn, stopping on `termination`.
fn chat(termination: &str, budget: &str, latency: &str, lines: &[&str]) -> String {
    let turns: String = lines
        .iter()
        .map(|l| format!("      - say: \"{l}\"\n"))
        .collect();
    format!(
        "name: chatty\nagents:\n  - name: talker\n    role: Talker\n    goal: Talk\n{latency}    replay:\n{turns}group_chat:\n  manager: round_robin\n  task: \"Talk about {{input}}\"\n  termination:\n{termination}{budget}"
    )
}

#[tokio::test]
async fn every_stop_condition_and_budget_ends_a_chat_with_its_reason() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let lines = [
        "one",
        "two",
        "three DONE",
        "four",
        "five",
        "six",
        "seven",
        "eight",
    ];
    let messages = |payloads: &[Payload]| speakers(payloads).len();

    // Token budget of the chat: the first message already uses more than one token.
    let spec = chat("    any:\n      - max_tokens: 1\n", "", "", &lines);
    let (task, payloads) = run(&mesh, &key, &spec, "x").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!((messages(&payloads), task.output.as_str()), (1, "one"));

    // `all`: two messages are not enough without the mention, and the mention comes third.
    let spec = chat(
        "    all:\n      - max_messages: 2\n      - text_mention: DONE\n",
        "",
        "",
        &lines,
    );
    let (task, payloads) = run(&mesh, &key, &spec, "x").await;
    assert_eq!(
        (messages(&payloads), task.output.as_str()),
        (3, "three DONE")
    );

    // A timeout: 100 ms a message against 250 ms stops long before 8 messages.
    let spec = chat(
        "    any:\n      - timeout: 250ms\n      - max_messages: 8\n",
        "",
        "    replay_latency: 100ms\n",
        &lines,
    );
    let (task, payloads) = run(&mesh, &key, &spec, "x").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let n = messages(&payloads);
    assert!((2..=6).contains(&n), "stopped after {n} messages");

    // Budgets fail the run with the budget named, whatever the chat's own condition.
    for (budget, latency, words) in [
        ("budget:\n  max_steps: 2\n", "", "model calls"),
        ("budget:\n  max_tokens: 5\n", "", "tokens"),
        (
            "budget:\n  max_wall_time: 300ms\n",
            "    replay_latency: 150ms\n",
            "longer than",
        ),
    ] {
        let spec = chat(
            "    any:\n      - max_messages: 8\n",
            budget,
            latency,
            &lines,
        );
        let (task, _) = run(&mesh, &key, &spec, "x").await;
        assert_eq!(
            task.state,
            pb::TaskState::Failed as i32,
            "{budget}: {task:?}"
        );
        let error = task.error.unwrap();
        assert!(error.message.contains(words), "{budget}: {}", error.message);
        assert_eq!(error.class, pb::ErrorClass::Budget as i32);
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_hybrid_crew_hands_a_task_to_a_nested_chat_and_the_judge_passes_the_plan() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let (task, payloads) = run(&mesh, &key, &example("hybrid-launch.yaml"), "the v2 API").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let tasks: Vec<(String, String)> = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::TaskStarted(t) => Some((t.task.clone(), t.agent.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tasks,
        [
            ("decide".to_owned(), "debate".to_owned()),
            ("plan".to_owned(), "editor".to_owned())
        ]
    );
    let order: Vec<String> = speakers(&payloads).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        order,
        ["marketer", "engineer", "marketer"],
        "the nested chat ran to AGREED"
    );
    let decided = payloads.iter().find_map(|p| match p {
        Payload::TaskCompleted(t) if t.task == "decide" => Some(t.output.clone()),
        _ => None,
    });
    assert_eq!(
        decided.as_deref(),
        Some("Agreed on a staged rollout with the guide first. AGREED")
    );
    assert_eq!(verdicts(&payloads), [VerdictKind::Pass as i32]);
    assert!(
        task.output.starts_with("Plan for the v2 API:"),
        "{}",
        task.output
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_group_chat_member_that_is_a_crew_runs_its_tasks_on_the_conversation() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let spec = r#"name: panel
agents:
  - name: host
    role: Host
    goal: Ask the question
    replay:
      - say: "What should we know about {input}?"
  - name: analyst
    role: Analyst
    goal: Dig out facts
    replay:
      - say: "Facts: {input} is fast but costly."
  - name: summarizer
    role: Summarizer
    goal: Condense
    replay:
      - say: "Summary: {input} trades cost for speed."
teams:
  - name: research
    crew:
      tasks:
        - name: dig
          description: "Find facts for this conversation: {input}"
          agent: analyst
        - name: sum
          description: Summarize the facts
          agent: summarizer
          context: [dig]
group_chat:
  manager: round_robin
  participants: [host, research]
  task: "Brief us on {input}"
  termination:
    any:
      - max_messages: 2
"#;
    let (task, payloads) = run(&mesh, &key, spec, "caching").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    let order: Vec<String> = speakers(&payloads).into_iter().map(|(s, _)| s).collect();
    assert_eq!(order, ["host", "research"]);
    let crew_tasks: Vec<String> = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::TaskCompleted(t) => Some(t.task.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(crew_tasks, ["dig", "sum"]);
    assert_eq!(task.output, "Summary: caching trades cost for speed.");
    mesh.stop().await;
}

#[tokio::test]
async fn a_chat_agent_with_memory_remembers_its_result_and_recalls_it_next_session_turn() {
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let spec = r#"name: recaller
agents:
  - name: sage
    role: Sage
    goal: Remember what was concluded
    memory: true
    replay:
      - say: "{input} pays off for read-heavy workloads"
group_chat:
  manager: round_robin
  task: "Talk about {input}"
  termination:
    any:
      - max_messages: 1
"#;
    let submit = |session: &str| pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::SpecYaml(spec.into())),
        }),
        input: "caching".into(),
        session_id: session.into(),
        ..Default::default()
    };
    let mut stored = Vec::new();
    let mut recalled = Vec::new();
    for _ in 0..2 {
        let task_id = mesh
            .orchestrator()
            .submit_task(TestMesh::with_key(&key, submit("s-1")))
            .await
            .unwrap()
            .into_inner()
            .task_id;
        for e in mesh.events(&key, &task_id).await {
            if let Some(Kind::RunEvent(run)) = e.kind {
                match run.payload {
                    Some(Payload::MemoryStored(m)) => stored.push(m.memory_id),
                    Some(Payload::MemoryRecalled(m)) => recalled.extend(m.memory_ids),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(stored.len(), 2, "each run remembers its result");
    assert_eq!(
        recalled,
        [stored[0].clone()],
        "the second run recalled the first one's result before its turn"
    );
    mesh.stop().await;
}
