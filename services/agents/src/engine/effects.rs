//! The run's side effects: tool calls through the tools service, recalls
//! and results through the memory service.

use std::collections::HashMap;

use amaos_mesh::caller::Caller;
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::value_to_json;
use amaos_proto::memory::v1 as mem;
use amaos_proto::tools::v1 as tools;
use amaos_teams::{AgentSpec, TeamSpec};

use super::step::memory_key;
use super::{Ctx, Emitter, RunError, RunInput, Services};
use crate::provider::{ChatModel, ToolSpec};

/// Most memories recalled before a task.
const RECALL_TOP_K: u32 = 3;

/// The schemas of the tools the tools service offers this run.
pub(super) async fn tool_specs(
    services: &Services,
    caller: &Caller,
) -> Result<Vec<ToolSpec>, RunError> {
    let tools = services
        .tools
        .clone()
        .list_tools(caller.request(tools::ListToolsRequest {}))
        .await
        .map_err(|s| RunError::Dependency(format!("tools service: {}", s.message())))?
        .into_inner()
        .tools;
    Ok(tools
        .into_iter()
        .map(|t| ToolSpec {
            name: t.name,
            description: t.description,
            parameters: t
                .input_schema
                .as_ref()
                .map(|s| serde_json::Value::Object(amaos_proto::json::struct_to_map(s)))
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
        .collect())
}

/// Whether a failed tool call is the platform's, not the call's: the tools
/// service (or what it depends on: the journal, the sandbox, the run check)
/// could not run it or answer for it. Such a failure ends the attempt as
/// transient, so it is retried — given to the model as text, it let a run
/// succeed without a side effect it was meant to have.
fn platform_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unauthenticated
            | tonic::Code::Aborted
            | tonic::Code::DataLoss
    )
}

/// Why a tool call did not give the model a result.
pub(super) enum Halt {
    /// The platform could not run it: the attempt ends as transient.
    Platform(String),
    /// The tools service gates the tool: a person must approve the call.
    NeedsApproval(String),
}

/// Calls a tool; a failure of the call becomes text for the model, never a
/// crash; a failure of the platform, or a call that needs approval, is an
/// `Err` of the outer result.
pub(super) async fn invoke(
    services: &Services,
    caller: &Caller,
    input: &RunInput,
    call_id: &str,
    tool: &str,
    arguments: prost_types::Struct,
) -> Result<Result<serde_json::Value, String>, Halt> {
    let request = caller.request(tools::InvokeToolRequest {
        tool: tool.to_owned(),
        arguments: Some(arguments),
        task_id: input.run_id.clone(),
        // Stable across attempts, so a retried run replays recorded side effects.
        idempotency_key: call_id.to_owned(),
        timeout: None,
    });
    match services.tools.clone().invoke_tool(request).await {
        Ok(response) => Ok(Ok(response
            .into_inner()
            .result
            .as_ref()
            .map(value_to_json)
            .unwrap_or(serde_json::Value::Null))),
        Err(status) if platform_failure(status.code()) => Err(Halt::Platform(format!(
            "tools service could not run `{tool}`: {:?}: {}",
            status.code(),
            status.message()
        ))),
        Err(status) if amaos_mesh::approval::is_required(&status) => {
            Err(Halt::NeedsApproval(status.message().to_owned()))
        }
        Err(status) => Ok(Err(format!("{:?}: {}", status.code(), status.message()))),
    }
}

/// Before a turn of an agent with `memory: true`: recalls what is relevant
/// to `query` (scoped to the run's tenant, team, agent and session) into
/// `prompt`, and emits what was recalled.
pub(super) async fn add_memories<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    query: &str,
    prompt: &mut String,
    events: &mut Emitter,
) -> Result<(), RunError> {
    if !agent.memory {
        return Ok(());
    }
    let memories = recall(ctx.services, ctx.caller, ctx.spec, agent, ctx.input, query).await;
    if memories.is_empty() {
        return Ok(());
    }
    prompt.push_str("\n\nRelevant memories:");
    for (_, text) in &memories {
        prompt.push_str(&format!("\n- {text}"));
    }
    events
        .emit(
            &agent.name,
            Payload::MemoryRecalled(pb::MemoryRecalled {
                count: memories.len() as u32,
                memory_ids: memories.into_iter().map(|(id, _)| id).collect(),
            }),
        )
        .await
}

/// After an agent with `memory: true` produced a result: remembers it.
pub(super) async fn store_result<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    task: &str,
    output: &str,
    events: &mut Emitter,
) -> Result<(), RunError> {
    if !agent.memory {
        return Ok(());
    }
    let memory_id = remember(
        ctx.services,
        ctx.caller,
        ctx.spec,
        agent,
        ctx.input,
        task,
        output,
    )
    .await?;
    events
        .emit(
            &agent.name,
            Payload::MemoryStored(pb::MemoryStored { memory_id }),
        )
        .await
}

async fn recall(
    services: &Services,
    caller: &Caller,
    spec: &TeamSpec,
    agent: &AgentSpec,
    input: &RunInput,
    query: &str,
) -> Vec<(String, String)> {
    let request = caller.request(mem::RecallRequest {
        query: query.to_owned(),
        filter: Some(mem::MemoryFilter {
            team: spec.name.clone(),
            agent: agent.name.clone(),
            session_id: input.session_id.clone(),
            ..Default::default()
        }),
        top_k: RECALL_TOP_K,
        min_score: 0.0,
    });
    match services.memory.clone().recall(request).await {
        Ok(response) => response
            .into_inner()
            .memories
            .into_iter()
            .filter_map(|m| m.item)
            .map(|item| (item.memory_id, item.text))
            .collect(),
        Err(status) => {
            // Recall only enriches the prompt: the task can go on without it.
            tracing::warn!(code = ?status.code(), message = status.message(), "memory recall failed; continuing");
            Vec::new()
        }
    }
}

async fn remember(
    services: &Services,
    caller: &Caller,
    spec: &TeamSpec,
    agent: &AgentSpec,
    input: &RunInput,
    task: &str,
    output: &str,
) -> Result<String, RunError> {
    let request = caller.request(mem::RememberRequest {
        team: spec.name.clone(),
        agent: agent.name.clone(),
        session_id: input.session_id.clone(),
        kind: mem::MemoryKind::Result as i32,
        text: output.to_owned(),
        metadata: HashMap::from([
            ("task".to_owned(), task.to_owned()),
            ("run_id".to_owned(), input.run_id.clone()),
        ]),
        ttl: None,
        idempotency_key: memory_key(&input.run_id, task),
    });
    services
        .memory
        .clone()
        .remember(request)
        .await
        .map(|r| r.into_inner().memory_id)
        .map_err(|status| RunError::Dependency(format!("memory service: {}", status.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_platform_failing_is_a_platform_failure() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::Unauthenticated,
            Code::Aborted,
            Code::DataLoss,
        ] {
            assert!(platform_failure(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::AlreadyExists,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Cancelled,
        ] {
            assert!(!platform_failure(code), "{code:?}");
        }
    }
}
