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
    let task_id = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml(spec.into())),
                }),
                input: input.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
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
