//! Refusals after the permission check are recorded as denials.

use super::*;

/// A request refused after its permission check — bad input, another
/// tenant's task, a cyclic workflow — is recorded as denied, never as
/// allowed (the orchestrator used to record `allow` first and refuse after).
#[tokio::test]
async fn refusals_after_the_permission_check_are_recorded_as_denials() {
    let mesh = TestMesh::start().await;
    let theirs = mesh.create_key("acme", "developer").await;
    let their_task = mesh
        .submit(&theirs, &common::research_crew(), "theirs")
        .await;
    let mine = mesh.create_key("hooli", "developer").await;
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .submit_task(TestMesh::with_key(
            &mine,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml("name: [unclosed".into())),
                }),
                input: "x".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = orchestrator
        .cancel_task(TestMesh::with_key(
            &mine,
            pb::CancelTaskRequest {
                task_id: their_task.clone(),
                reason: String::new(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let step = |key: &str, after: &str| pb::WorkflowTask {
        key: key.into(),
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::Name("research-crew".into())),
        }),
        input: "x".into(),
        depends_on: vec![after.into()],
        ..Default::default()
    };
    let status = orchestrator
        .submit_workflow(TestMesh::with_key(
            &mine,
            pb::SubmitWorkflowRequest {
                name: "loop".into(),
                tasks: vec![step("a", "b"), step("b", "a")],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let decisions: Vec<String> = std::fs::read_to_string(mesh.config.audit_file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["tenant"] == "hooli" && r["action"] != "keys.create")
        .map(|r| format!("{} {} {}", r["action"], r["object"], r["decision"]))
        .collect();
    assert_eq!(
        decisions,
        [
            r#""task.submit" "tasks" "deny""#.to_owned(),
            format!(r#""task.cancel" "{their_task}" "deny""#),
            r#""workflow.submit" "workflows" "deny""#.to_owned(),
        ],
        "{decisions:?}"
    );
    mesh.stop().await;
}
