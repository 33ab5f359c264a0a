//! End-to-end tests of the whole mesh in one process: every service on its own
//! loopback port, talking real gRPC.
//!
//! # Layout
//!
//! - `crew`: a crew end to end (plaintext and mTLS), bad specs, unknown teams, cancellation.
//! - `access`: API keys, message limits and the audit trail.
//! - `tokens`: every service verifies tokens; forged and confused tokens are refused.
//! - `tenancy`: memory and tasks never cross tenants.
//! - `tool_calls`: workspace confinement, replayed tool calls, the shell sandbox, MCP tools.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod crew;
mod tenancy;
mod tokens;
mod tool_calls;

use std::time::Duration;

use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::map_to_struct;
use amaos_proto::memory::v1 as memory;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use common::{TestMesh, research_crew};
use tonic::Code;
use tonic_types::StatusExt;

fn submit_spec(spec: String, input: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::SpecYaml(spec)),
        }),
        input: input.into(),
        session_id: "s-1".into(),
        ..Default::default()
    }
}

async fn watch_all(mesh: &TestMesh, key: &str, task_id: &str) -> Vec<pb::TaskEvent> {
    mesh.events(key, task_id).await
}

/// Forgets a session's memories as `tenant`'s agent; how many went.
async fn forget_session(
    mesh: &TestMesh,
    memory: &mut MemoryServiceClient<amaos_mesh::client::MeshChannel>,
    tenant: &str,
    session: &str,
) -> u64 {
    memory
        .forget(mesh.internal(
            tenant,
            &["agent"],
            memory::ForgetRequest {
                target: Some(memory::forget_request::Target::Scope(
                    memory::MemoryFilter {
                        session_id: session.into(),
                        ..Default::default()
                    },
                )),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .forgotten
}

/// A compact name per event, to compare orders.
fn label(e: &pb::TaskEvent) -> String {
    match &e.kind {
        Some(Kind::StateChanged(s)) => format!("state:{}", amaos_cli::render::state_name(s.to)),
        Some(Kind::RunEvent(r)) => match &r.payload {
            Some(Payload::RunStarted(_)) => "run_started".into(),
            Some(Payload::TaskStarted(t)) => format!("task_started:{}", t.task),
            Some(Payload::Message(m)) => format!("message:{}", m.role),
            Some(Payload::ToolCall(t)) => format!("tool_call:{}", t.tool),
            Some(Payload::ToolResult(t)) => format!(
                "tool_result:{}{}",
                t.tool,
                if t.is_error { ":error" } else { "" }
            ),
            Some(Payload::MemoryRecalled(_)) => "memory_recalled".into(),
            Some(Payload::MemoryStored(_)) => "memory_stored".into(),
            Some(Payload::TokenUsage(_)) => "token_usage".into(),
            Some(Payload::TaskCompleted(t)) => format!("task_completed:{}", t.task),
            Some(Payload::RunCompleted(_)) => "run_completed".into(),
            Some(Payload::RunFailed(f)) => format!("run_failed:{}", f.reason),
            other => format!("{other:?}"),
        },
        None => "none".into(),
    }
}

/// Polls `check` until it yields a value; fails naming `what` after ten
/// seconds. For effects that land a moment after the call that causes them.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
