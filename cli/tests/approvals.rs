//! Approval gates through the real mesh: a gated tool call stops the run in
//! INPUT_REQUIRED, people list and decide it under RBAC, and the resumed
//! attempt replays the calls made before and runs the approved one once.

mod common;

use std::time::Duration;

use amaos_mesh::config::StoreBackend;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::map_to_struct;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use common::TestMesh;
use tonic::Code;

/// A crew: `logger` appends to log.txt freely, then `payer`, whose calls
/// need approval, appends to pay.txt and answers.
fn gated_spec(on_rejection: &str) -> String {
    format!(
        r#"name: gated
on_rejection: {on_rejection}
agents:
  - name: logger
    role: r
    goal: g
    tools: [file_write]
    replay:
      - tool: {{ name: file_write, args: {{ path: log.txt, content: "start {{input}}\n", append: true }} }}
      - say: "logged"
  - name: payer
    role: r
    goal: g
    tools: [file_write]
    approval: required
    replay:
      - tool: {{ name: file_write, args: {{ path: pay.txt, content: "pay {{input}}\n", append: true }} }}
      - say: "paid"
crew:
  tasks:
    - {{ name: log, description: "log {{input}}", agent: logger }}
    - {{ name: pay, description: "pay {{input}}", agent: payer }}
"#
    )
}

fn redis_mesh(config: &mut amaos_mesh::Config) {
    let url =
        std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    config.orchestrator.backend = StoreBackend::Redis;
    config.orchestrator.redis_url = url;
    config.orchestrator.redis_prefix = format!("amaos-approvals-{}", amaos_mesh::new_id());
}

/// Polls a task until it is in `state` (at most 30 s).
async fn reaches(mesh: &TestMesh, key: &str, task_id: &str, state: pb::TaskState) -> pb::Task {
    for _ in 0..300 {
        let task = mesh.task(key, task_id).await;
        if task.state == state as i32 {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {task_id} never reached {state:?}");
}

async fn pending(mesh: &TestMesh, key: &str, task_id: &str) -> Vec<pb::Approval> {
    mesh.orchestrator()
        .list_approvals(TestMesh::with_key(
            key,
            pb::ListApprovalsRequest {
                task_id: task_id.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .approvals
}

async fn decide(
    mesh: &TestMesh,
    key: &str,
    approval: &pb::Approval,
    decision: pb::Decision,
    comment: &str,
) -> Result<pb::DecideApprovalResponse, tonic::Status> {
    mesh.orchestrator()
        .decide_approval(TestMesh::with_key(
            key,
            pb::DecideApprovalRequest {
                task_id: approval.task_id.clone(),
                approval_id: approval.approval_id.clone(),
                decision: decision as i32,
                comment: comment.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

fn workspace_file(mesh: &TestMesh, tenant: &str, task_id: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(
        mesh.config
            .workspace_dir()
            .join(format!("{tenant}/{task_id}/{name}")),
    )
    .ok()
}

#[tokio::test]
async fn a_gated_call_waits_for_a_person_and_runs_once_approved() {
    let mesh = TestMesh::start_with(redis_mesh).await;
    let developer = mesh.create_key("acme", "developer").await;
    let viewer = mesh.create_key("acme", "viewer").await;
    let stranger = mesh.create_key("globex", "developer").await;
    let task_id = mesh.submit(&developer, &gated_spec("continue"), "42").await;
    let waiting = reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;
    assert_eq!(waiting.approvals.len(), 1, "{waiting:?}");
    // Before the gate: the logger's call ran; the payer's did not.
    assert_eq!(
        workspace_file(&mesh, "acme", &task_id, "log.txt").as_deref(),
        Some("start 42\n")
    );
    assert_eq!(workspace_file(&mesh, "acme", &task_id, "pay.txt"), None);

    // A viewer sees what waits, with the exact arguments, but may not decide.
    let listed = pending(&mesh, &viewer, &task_id).await;
    assert_eq!(listed.len(), 1);
    let approval = listed[0].clone();
    assert_eq!(approval.tool, "file_write");
    assert_eq!(approval.agent, "payer");
    assert_eq!(approval.state, pb::ApprovalState::Pending as i32);
    let args = approval.arguments.clone().unwrap();
    assert_eq!(
        amaos_proto::json::struct_to_map(&args)["content"],
        serde_json::json!("pay 42\n")
    );
    let refused = decide(&mesh, &viewer, &approval, pb::Decision::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Another tenant does not even find it.
    let refused = decide(&mesh, &stranger, &approval, pb::Decision::Approve, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    // Still waiting: refusals changed nothing.
    reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;

    let decided = decide(&mesh, &developer, &approval, pb::Decision::Approve, "ok")
        .await
        .unwrap();
    assert_eq!(
        decided.approval.unwrap().state,
        pb::ApprovalState::Approved as i32
    );
    // A second decision on the same approval fails closed.
    let stale = decide(&mesh, &developer, &approval, pb::Decision::Reject, "")
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");

    let events = mesh.events(&developer, &task_id).await;
    let task = mesh.task(&developer, &task_id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.attempt, 2);
    // Exactly once each: the logger's call replayed from the journal, the
    // payer's ran with the approved arguments.
    assert_eq!(
        workspace_file(&mesh, "acme", &task_id, "log.txt").as_deref(),
        Some("start 42\n")
    );
    assert_eq!(
        workspace_file(&mesh, "acme", &task_id, "pay.txt").as_deref(),
        Some("pay 42\n")
    );
    let states: Vec<i32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StateChanged(s)) => Some(s.to),
            _ => None,
        })
        .collect();
    assert!(
        states.windows(2).any(|w| w
            == [
                pb::TaskState::InputRequired as i32,
                pb::TaskState::Queued as i32
            ]),
        "{states:?}"
    );
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        Some(Kind::RunEvent(r)) if matches!(r.payload, Some(Payload::ApprovalRequested(_)))
    )));
    // Nothing waits any more.
    assert!(pending(&mesh, &developer, &task_id).await.is_empty());
    mesh.stop().await;
}

#[tokio::test]
async fn a_rejection_reaches_the_model_or_fails_the_task_per_the_spec() {
    let mesh = TestMesh::start().await;
    let developer = mesh.create_key("acme", "developer").await;
    for (on_rejection, state) in [
        ("continue", pb::TaskState::Succeeded),
        ("fail", pb::TaskState::Failed),
    ] {
        let task_id = mesh
            .submit(&developer, &gated_spec(on_rejection), "7")
            .await;
        reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;
        let approval = pending(&mesh, &developer, &task_id).await.remove(0);
        decide(
            &mesh,
            &developer,
            &approval,
            pb::Decision::Reject,
            "not this month",
        )
        .await
        .unwrap();
        let events = mesh.events(&developer, &task_id).await;
        let task = mesh.task(&developer, &task_id).await;
        assert_eq!(task.state, state as i32, "{on_rejection}: {task:?}");
        assert_eq!(workspace_file(&mesh, "acme", &task_id, "pay.txt"), None);
        if on_rejection == "continue" {
            // The model got the rejection, with the comment, as the result.
            let rejected = events.iter().any(|e| match &e.kind {
                Some(Kind::RunEvent(r)) => matches!(
                    &r.payload,
                    Some(Payload::ToolResult(t)) if t.is_error && t.error.contains("not this month")
                ),
                _ => false,
            });
            assert!(rejected, "{events:?}");
        } else {
            assert!(
                task.error.unwrap().message.contains("not this month"),
                "the failure names the rejection"
            );
        }
    }
    mesh.stop().await;
}

#[tokio::test]
async fn the_tools_service_gates_configured_tools_for_every_caller() {
    let mesh =
        TestMesh::start_with(|c| c.tools.approval_required = vec!["file_write".into()]).await;
    let developer = mesh.create_key("acme", "developer").await;
    // The spec asks for no approval; the platform's policy does.
    let spec = gated_spec("continue").replace("    approval: required\n", "");
    let task_id = mesh.submit(&developer, &spec, "9").await;
    reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;
    let approval = pending(&mesh, &developer, &task_id).await.remove(0);
    assert_eq!(
        approval.agent, "logger",
        "the first gated call is the logger's"
    );
    assert!(
        approval.reason.contains("tools.approval_required"),
        "{approval:?}"
    );
    assert_eq!(workspace_file(&mesh, "acme", &task_id, "log.txt"), None);

    // A caller without a grant — here an agent token of no run — is refused
    // with the detail the engine recognises.
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let args = serde_json::json!({ "path": "x.txt", "content": "x" });
    let status = tools
        .invoke_tool(mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "file_write".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-1".into(),
                idempotency_key: "k-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(amaos_mesh::approval::is_required(&status), "{status:?}");
    // Ungated tools still run.
    let status = tools
        .invoke_tool(mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "file_list".into(),
                task_id: "t-1".into(),
                ..Default::default()
            },
        ))
        .await;
    assert!(status.is_ok(), "{status:?}");

    // Approving both gated calls in turn finishes the task.
    decide(&mesh, &developer, &approval, pb::Decision::Approve, "")
        .await
        .unwrap();
    reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;
    let second = pending(&mesh, &developer, &task_id).await.remove(0);
    assert_eq!(second.agent, "payer");
    decide(&mesh, &developer, &second, pb::Decision::Approve, "")
        .await
        .unwrap();
    mesh.events(&developer, &task_id).await;
    let task = mesh.task(&developer, &task_id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.attempt, 3);
    assert_eq!(
        workspace_file(&mesh, "acme", &task_id, "log.txt").as_deref(),
        Some("start 9\n")
    );
    assert_eq!(
        workspace_file(&mesh, "acme", &task_id, "pay.txt").as_deref(),
        Some("pay 9\n")
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_swarm_waits_for_a_persons_message_and_carries_on_with_it() {
    let mesh = TestMesh::start_with(redis_mesh).await;
    let developer = mesh.create_key("acme", "developer").await;
    let viewer = mesh.create_key("acme", "viewer").await;
    let task_id = mesh.submit(&developer, common::HELPDESK, "a refund").await;
    let waiting = reaches(&mesh, &developer, &task_id, pb::TaskState::InputRequired).await;
    assert_eq!(waiting.approvals.len(), 1, "{waiting:?}");
    assert_eq!(waiting.approvals[0].tool, "user");
    assert_eq!(waiting.approvals[0].agent, "triage");

    let send = |key: &str, task_id: &str, message: &str| {
        let request = TestMesh::with_key(
            key,
            pb::SendInputRequest {
                task_id: task_id.into(),
                message: message.into(),
            },
        );
        let mut orchestrator = mesh.orchestrator();
        async move { orchestrator.send_input(request).await }
    };
    // A viewer may not answer; an empty message is no answer.
    let refused = send(&viewer, &task_id, "order 1042").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let empty = send(&developer, &task_id, "  ").await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    // A task waiting for a tool call's approval takes no message.
    let gated = mesh.submit(&developer, &gated_spec("continue"), "7").await;
    reaches(&mesh, &developer, &gated, pb::TaskState::InputRequired).await;
    let wrong = send(&developer, &gated, "hello").await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");

    let answered = send(&developer, &task_id, "order 1042").await.unwrap();
    assert_ne!(
        answered.into_inner().task.unwrap().state,
        pb::TaskState::InputRequired as i32
    );
    let events = mesh.events(&developer, &task_id).await;
    let task = mesh.task(&developer, &task_id).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!(task.output, "Refund issued for a refund.");
    // The person's message joined the conversation the agent answered.
    let said: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::RunEvent(r)) => match &r.payload {
                Some(Payload::Message(m)) => Some((m.role.clone(), m.content.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(
        said.iter()
            .any(|(role, text)| role == "user" && text == "order 1042"),
        "{said:?}"
    );
    assert!(
        said.iter().any(|(role, text)| role == "user"
            && text.contains("order 1042")
            && text.contains("triage")),
        "the agent's prompt carries the message: {said:?}"
    );
    // A second answer finds nothing waiting.
    let stale = send(&developer, &task_id, "again").await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    mesh.stop().await;
}
