//! The Agent2Agent protocol with a client that is not AMAOS code:
//! `clients/python/a2a_client.py` runs the reference SDK (`a2a-sdk[grpc]`
//! 1.x) against the in-process mesh — the card from the gateway, a streamed
//! crew, a cancel, an approval answered over A2A, listings and errors — after
//! checking that AMAOS's `lf.a2a.v1` contract matches the SDK's on the wire.
//!
//! This test uses outside resources: a Python with `a2a-sdk[grpc]` and
//! `grpcio-tools` — `$AMAOS_PYTHON`, else `.amaos/venv-grpc/bin/python`,
//! which `scripts/test` makes. Without it the test fails and says so.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{TestMesh, python, repo_root, research_crew, run_client};

/// How long the script may take: three team runs, a cancel, the checks.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn has_sdk(python: &PathBuf) -> bool {
    std::process::Command::new(python)
        .args([
            "-c",
            "import a2a.client, a2a.types.a2a_pb2, grpc_tools.protoc",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The teams the mesh serves: the research crew, the gated payout crew, and
/// a copy of the research crew whose model calls take a minute each.
fn teams_dir(dir: &std::path::Path) -> PathBuf {
    let teams = dir.join("teams");
    std::fs::create_dir_all(&teams).unwrap();
    std::fs::write(teams.join("research-crew.yaml"), research_crew()).unwrap();
    std::fs::copy(
        repo_root().join("examples/teams/approved-payout.yaml"),
        teams.join("approved-payout.yaml"),
    )
    .unwrap();
    let slow = research_crew()
        .replace("name: research-crew", "name: slow-crew")
        .replace(
            "    memory: true\n",
            "    memory: true\n    replay_latency: 60s\n",
        );
    assert!(slow.contains("slow-crew") && slow.contains("replay_latency"));
    std::fs::write(teams.join("slow-crew.yaml"), slow).unwrap();
    // A swarm that asks the customer for the order number.
    std::fs::write(teams.join("helpdesk.yaml"), common::HELPDESK).unwrap();
    teams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_a2a_sdk_discovers_streams_cancels_and_approves() {
    let python = python();
    assert!(
        has_sdk(&python),
        "the A2A client test cannot run: {} cannot import a2a-sdk and grpc_tools. \
         Run scripts/test, which makes .amaos/venv-grpc, or point AMAOS_PYTHON at a \
         Python with a2a-sdk[grpc] and grpcio-tools.",
        python.display()
    );
    let scratch = tempfile::tempdir().unwrap();
    let teams = teams_dir(scratch.path());
    let mesh = TestMesh::start_with(|c| c.agents.teams_dir = teams).await;
    // A developer may submit, read, cancel and approve its team's calls.
    let key = mesh.create_key("acme", "developer").await;

    let mut client = tokio::process::Command::new(&python);
    client
        .arg(repo_root().join("clients/python/a2a_client.py"))
        .args(["--gateway", &mesh.config.gateway.url, "--key", &key])
        .arg("--proto-root")
        .arg(repo_root().join("proto"));
    let stdout = run_client(client, SCRIPT_TIMEOUT, "the A2A client").await;
    assert!(stdout.contains("a2a client: all checks passed"), "{stdout}");
    mesh.stop().await;
}

/// A federated crew: its first member is the research crew of another
/// AMAOS mesh, reached over A2A with a credential from the worker's secret
/// store; its second member edits what came back.
fn federated_crew(partner_url: &str) -> String {
    format!(
        r#"
name: federated-crew
agents:
  - name: partner
    role: Partner research crew
    goal: Research the topic
    kind: a2a
    url: {partner_url}
    skill: research-crew
  - name: editor
    role: Editor
    goal: Edit the research into a note
    replay:
      - say: "Edited note on {{input}}."
crew:
  process: sequential
  tasks:
    - {{ name: research, description: "Research {{input}}", agent: partner, expected_output: notes }}
    - {{ name: edit, description: "Edit the research on {{input}}", agent: editor, expected_output: a note }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crew_member_can_be_an_agent_of_another_mesh() {
    use amaos_proto::orchestrator::v1 as pb;
    let scratch = tempfile::tempdir().unwrap();
    let partner_teams = scratch.path().join("partner-teams");
    std::fs::create_dir_all(&partner_teams).unwrap();
    std::fs::write(partner_teams.join("research-crew.yaml"), research_crew()).unwrap();
    let partner = TestMesh::start_with(|c| c.agents.teams_dir = partner_teams).await;
    let partner_key = partner.create_key("partner", "developer").await;
    let partner_url = partner.config.orchestrator.url.clone();

    // The credential lives in the worker's secret store, never in the spec.
    let secrets = scratch.path().join("secrets.json");
    std::fs::write(
        &secrets,
        serde_json::json!({ "a2a/partner": partner_key }).to_string(),
    )
    .unwrap();
    let remote_url = partner_url.clone();
    let mesh = TestMesh::start_with(move |c| {
        c.secrets.file = Some(secrets);
        c.agents.a2a_remotes = vec![amaos_mesh::config::A2aRemote {
            url: remote_url,
            api_key_env: None,
            api_key_secret: Some("a2a/partner".into()),
            timeout: Duration::from_secs(60),
            max_retries: 2,
        }];
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;

    let task_id = mesh
        .submit(&key, &federated_crew(&partner_url), "vector databases")
        .await;
    let events = mesh.events(&key, &task_id).await;
    let task = mesh.task(&key, &task_id).await;
    assert_eq!(
        task.state,
        pb::TaskState::Succeeded as i32,
        "{:?}",
        task.error
    );
    assert_eq!(task.output, "Edited note on vector databases.");
    // The partner's answer is the remote crew's output, as its events say.
    let partner_said: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::task_event::Kind::RunEvent(run)) if run.agent == "partner" => {
                match &run.payload {
                    Some(amaos_proto::agents::v1::run_event::Payload::Message(m))
                        if m.role == "assistant" =>
                    {
                        Some(m.content.clone())
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    assert_eq!(partner_said.len(), 1, "{partner_said:?}");

    // On the partner's side: one task of its tenant, its output what the
    // member answered, the message id the run's own.
    let listed = partner
        .orchestrator()
        .list_tasks(TestMesh::with_key(
            &partner_key,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let remote = &listed[0];
    assert_eq!(remote.team, "research-crew");
    assert_eq!(remote.state, pb::TaskState::Succeeded as i32);
    assert_eq!(remote.output, partner_said[0]);
    let message_id = &remote.labels["a2a.message_id"];
    assert!(
        message_id.starts_with(&format!("amaos:{task_id}:partner:")),
        "{message_id}"
    );

    // A URL the worker does not list is refused without a call: the task
    // fails as invalid, and the partner sees nothing new.
    let stray = federated_crew("http://127.0.0.1:9");
    let stray_id = mesh.submit(&key, &stray, "anything").await;
    mesh.events(&key, &stray_id).await;
    let stray_task = mesh.task(&key, &stray_id).await;
    assert_eq!(stray_task.state, pb::TaskState::Failed as i32);
    let error = stray_task.error.unwrap();
    assert_eq!(error.class, pb::ErrorClass::Invalid as i32, "{error:?}");
    assert!(error.message.contains("not allowed"), "{error:?}");

    mesh.stop().await;
    partner.stop().await;
}
