//! One agent's turn: its conversation with its model until it answers with
//! text or hands off, calling the tools it asks for in between.

use amaos_mesh::approval::{self, EXPIRY};
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::{json_to_value, map_to_struct, struct_to_map};
use amaos_teams::{AgentSpec, Approval, OnRejection};
use tracing::Instrument;

use super::budget::Budget;
use super::effects::Halt;
use super::step::StepId;
use super::{Ctx, Emitter, RunError, effects};
use crate::provider::{ChatMessage, ChatModel, Reply, ToolCallRequest, ToolSpec};

/// The handoff tool a swarm offers its agents.
pub const HANDOFF_TOOL: &str = "handoff";
/// The handoff target that stops a swarm and hands over to a person.
pub const HUMAN: &str = "user";

/// How an agent's turn ended.
pub(super) enum Turn {
    /// It answered.
    Said(String),
    /// It handed the conversation to another agent (or `user`); the reason
    /// is in the emitted `Handoff` event.
    Handoff {
        /// To whom.
        to: String,
    },
}

fn system_prompt(agent: &AgentSpec) -> String {
    let mut s = format!("You are {}. Your goal: {}.", agent.role, agent.goal);
    if !agent.backstory.is_empty() {
        s.push_str(&format!(" {}", agent.backstory));
    }
    if !agent.tools.is_empty() {
        s.push_str(&format!(" Tools you may call: {}.", agent.tools.join(", ")));
    }
    s
}

/// One agent's conversation on one task, until it answers with text.
pub(super) async fn converse<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    step: StepId,
    tools: &[ToolSpec],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<String, RunError> {
    match converse_turn(ctx, agent, prompt, step, tools, &[], budget, events).await? {
        Turn::Said(text) => Ok(text),
        // No handoff targets were offered, so none can come back.
        Turn::Handoff { to } => Err(RunError::Dependency(format!(
            "unexpected handoff to `{to}`"
        ))),
    }
}

/// One agent's turn, offered `handoffs` as targets, in an `invoke_agent` span
/// (OpenTelemetry GenAI conventions).
#[allow(clippy::too_many_arguments)]
pub(super) async fn converse_turn<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    step: StepId,
    tools: &[ToolSpec],
    handoffs: &[String],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<Turn, RunError> {
    let span = tracing::info_span!(
        "invoke_agent",
        otel.name = %format!("invoke_agent {}", agent.name),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %agent.name,
        gen_ai.request.model = %agent.model,
        amaos.step = %step,
    );
    if let Some(remote) = &agent.remote {
        return remote_turn(ctx, agent, remote, prompt, step, budget, events)
            .instrument(span)
            .await
            .map(Turn::Said);
    }
    converse_inner(ctx, agent, prompt, step, tools, handoffs, budget, events)
        .instrument(span)
        .await
}

/// A remote agent's turn: one A2A message with the prompt, answered by the
/// remote task's output. It counts as a step of the budget; the message id
/// is the run's and the step's, the same on every attempt.
async fn remote_turn<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    remote: &amaos_teams::RemoteAgent,
    prompt: &str,
    step: StepId,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<String, RunError> {
    budget.take_step()?;
    events
        .emit(
            &agent.name,
            Payload::Message(pb::Message {
                role: "user".into(),
                content: prompt.to_owned(),
            }),
        )
        .await?;
    let message_id = format!("amaos:{}:{}:{step}", ctx.input.run_id, agent.name);
    let context = if ctx.input.session_id.is_empty() {
        ctx.input.run_id.clone()
    } else {
        ctx.input.session_id.clone()
    };
    let said = ctx
        .services
        .remotes
        .ask(remote, &message_id, &context, prompt)
        .await
        .map_err(|e| match e {
            crate::remote::RemoteError::NotAllowed(_) => RunError::Invalid(e.to_string()),
            crate::remote::RemoteError::Call { .. } => RunError::Provider(e.to_string()),
        })?;
    events
        .emit(
            &agent.name,
            Payload::Message(pb::Message {
                role: "assistant".into(),
                content: said.clone(),
            }),
        )
        .await?;
    Ok(said)
}

/// The handoff tool offered with `handoffs` as its targets.
fn handoff_tool(handoffs: &[String]) -> ToolSpec {
    ToolSpec {
        name: HANDOFF_TOOL.into(),
        description:
            "Hand the conversation to another agent, or to `user` to stop and ask a person.".into(),
        parameters: serde_json::json!({
            "type": "object",
            "required": ["to"],
            "properties": {
                "to": {"type": "string", "enum": handoffs},
                "reason": {"type": "string"}
            }
        }),
    }
}

/// The handoff a tool call asks for — its target and reason — when it calls
/// the handoff tool naming one of `handoffs`; any other call is a tool call.
fn requested_handoff(
    name: &str,
    args: &serde_json::Map<String, serde_json::Value>,
    handoffs: &[String],
) -> Option<(String, String)> {
    if name != HANDOFF_TOOL || handoffs.is_empty() {
        return None;
    }
    let field = |key: &str| {
        args.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let to = field("to");
    handoffs.contains(&to).then(|| (to, field("reason")))
}

#[allow(clippy::too_many_arguments)]
async fn converse_inner<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    prompt: &str,
    step: StepId,
    tools: &[ToolSpec],
    handoffs: &[String],
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<Turn, RunError> {
    let model = ctx.model;
    let mut messages = vec![
        ChatMessage::text("system", system_prompt(agent)),
        ChatMessage::text("user", prompt),
    ];
    let mut offered: Vec<ToolSpec> = tools
        .iter()
        .filter(|t| agent.tools.contains(&t.name))
        .cloned()
        .collect();
    if !handoffs.is_empty() {
        offered.push(handoff_tool(handoffs));
    }
    events
        .emit(
            &agent.name,
            Payload::Message(pb::Message {
                role: "user".into(),
                content: prompt.to_owned(),
            }),
        )
        .await?;
    loop {
        budget.take_step()?;
        let chat_span = tracing::info_span!(
            "chat",
            otel.name = %format!("chat {}", agent.model),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = model.provider(&agent.model),
            gen_ai.agent.name = %agent.name,
            gen_ai.request.model = %agent.model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            amaos.cost_usd = tracing::field::Empty,
        );
        let completion = model
            .complete(agent, &messages, &offered)
            .instrument(chat_span.clone())
            .await
            .map_err(|e| RunError::Provider(e.to_string()))?;
        chat_span.record("gen_ai.usage.input_tokens", completion.usage.prompt_tokens);
        chat_span.record(
            "gen_ai.usage.output_tokens",
            completion.usage.completion_tokens,
        );
        chat_span.record("gen_ai.response.model", completion.model.as_str());
        chat_span.record(
            "gen_ai.response.finish_reasons",
            match &completion.reply {
                Reply::ToolCalls(_) => "tool_calls",
                _ => "stop",
            },
        );
        chat_span.record("amaos.cost_usd", completion.cost_usd);
        budget.add_usage(completion.usage);
        events
            .emit(
                &agent.name,
                Payload::TokenUsage(pb::TokenUsage {
                    model: completion.model.clone(),
                    prompt_tokens: completion.usage.prompt_tokens,
                    completion_tokens: completion.usage.completion_tokens,
                    cost_usd: completion.cost_usd,
                }),
            )
            .await?;
        budget.check_tokens()?;
        match completion.reply {
            Reply::Text(text) => {
                events
                    .emit(
                        &agent.name,
                        Payload::Message(pb::Message {
                            role: "assistant".into(),
                            content: text.clone(),
                        }),
                    )
                    .await?;
                budget.note_message(&text)?;
                return Ok(Turn::Said(text));
            }
            Reply::ToolCalls(calls) => {
                messages.push(ChatMessage {
                    role: "assistant",
                    content: String::new(),
                    tool_calls: calls.clone(),
                    tool_call_id: None,
                });
                for (n, call) in calls.into_iter().enumerate() {
                    if let Some((to, reason)) = requested_handoff(&call.name, &call.args, handoffs)
                    {
                        events
                            .emit(
                                &agent.name,
                                Payload::Handoff(pb::Handoff {
                                    from: agent.name.clone(),
                                    to: to.clone(),
                                    reason,
                                }),
                            )
                            .await?;
                        return Ok(Turn::Handoff { to });
                    }
                    // Stable across attempts, so a retried run replays recorded side effects.
                    let call_id = step.call_key(&ctx.input.run_id, budget.steps, n);
                    messages.push(call_tool(ctx, agent, call_id, call, events).await?);
                }
            }
        }
    }
}

/// Runs one tool call `agent` asked for under `call_id`, emitting the call
/// and its result; returns the tool message for the model. A failure of the
/// call is text for the model; a failure of the platform ends the turn.
async fn call_tool<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &AgentSpec,
    call_id: String,
    call: ToolCallRequest,
    events: &mut Emitter,
) -> Result<ChatMessage, RunError> {
    let ToolCallRequest { id, name, args } = call;
    // The arguments as the tools service sees them: a protobuf Struct.
    let arguments = map_to_struct(&args);
    events
        .emit(
            &agent.name,
            Payload::ToolCall(pb::ToolCall {
                call_id: call_id.clone(),
                tool: name.clone(),
                arguments: Some(arguments.clone()),
            }),
        )
        .await?;
    let outcome = if agent.tools.contains(&name) {
        // Fingerprinted as the tools service does (from the Struct), and
        // only when a gate is involved: ungated calls skip the hash.
        let sha256 = || approval::arguments_sha256(&name, &struct_to_map(&arguments));
        let asked = |reason: String| RunError::InputRequired {
            agent: agent.name.clone(),
            asked: Box::new(pb::ApprovalRequested {
                call_id: call_id.clone(),
                tool: name.clone(),
                arguments: Some(arguments.clone()),
                arguments_sha256: sha256(),
                reason,
            }),
        };
        match ctx.input.approvals.get(&call_id) {
            // Fail closed: a decision covers exactly the arguments decided on.
            Some(decision) if decision.arguments_sha256 != sha256() => Ok(Err(format!(
                "refused: the call's arguments differ from the ones `{}` decided on",
                decision.decided_by
            ))),
            Some(decision) if !decision.approved => {
                let why = if decision.decided_by == EXPIRY {
                    "nobody approved the call in time".to_owned()
                } else if decision.comment.is_empty() {
                    format!("`{}` rejected the call", decision.decided_by)
                } else {
                    format!(
                        "`{}` rejected the call: {}",
                        decision.decided_by, decision.comment
                    )
                };
                if ctx.spec.on_rejection == OnRejection::Fail {
                    return Err(RunError::Rejected(format!("`{name}`: {why}")));
                }
                Ok(Err(format!("rejected: {why}")))
            }
            None if agent.approval == Approval::Required => {
                return Err(asked(format!(
                    "the team spec requires approval of agent `{}`'s tool calls",
                    agent.name
                )));
            }
            _ => {
                let span = tracing::info_span!(
                    "execute_tool",
                    otel.name = %format!("execute_tool {name}"),
                    gen_ai.operation.name = "execute_tool",
                    gen_ai.tool.name = %name,
                    gen_ai.tool.call.id = %call_id,
                );
                match effects::invoke(
                    ctx.services,
                    ctx.caller,
                    ctx.input,
                    &call_id,
                    &name,
                    arguments.clone(),
                )
                .instrument(span)
                .await
                {
                    Ok(outcome) => Ok(outcome),
                    Err(Halt::NeedsApproval(reason)) => return Err(asked(reason)),
                    Err(Halt::Platform(failure)) => Err(failure),
                }
            }
        }
    } else {
        Ok(Err(format!(
            "tool `{name}` is not allowed for agent `{}`",
            agent.name
        )))
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(failure) => {
            events
                .emit(
                    &agent.name,
                    Payload::ToolResult(pb::ToolResult {
                        call_id,
                        tool: name,
                        result: None,
                        is_error: true,
                        error: failure.clone(),
                    }),
                )
                .await?;
            return Err(RunError::Dependency(failure));
        }
    };
    let (result, error) = match outcome {
        Ok(value) => (Some(value), String::new()),
        Err(error) => (None, error),
    };
    let message = ChatMessage {
        role: "tool",
        content: match &result {
            Some(value) => value.to_string(),
            None => format!("error: {error}"),
        },
        tool_calls: Vec::new(),
        tool_call_id: Some(id),
    };
    events
        .emit(
            &agent.name,
            Payload::ToolResult(pb::ToolResult {
                call_id,
                tool: name,
                result: result.as_ref().map(json_to_value),
                is_error: result.is_none(),
                error,
            }),
        )
        .await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().cloned().unwrap_or_default()
    }

    fn targets() -> Vec<String> {
        vec!["b".into(), HUMAN.into()]
    }

    #[test]
    fn a_handoff_to_an_offered_target_is_a_handoff() {
        let call = args(serde_json::json!({"to": "b", "reason": "your turn"}));
        assert_eq!(
            requested_handoff(HANDOFF_TOOL, &call, &targets()),
            Some(("b".into(), "your turn".into()))
        );
        let call = args(serde_json::json!({"to": "user"}));
        assert_eq!(
            requested_handoff(HANDOFF_TOOL, &call, &targets()),
            Some((HUMAN.into(), String::new()))
        );
    }

    #[test]
    fn any_other_call_is_a_tool_call() {
        let to_b = args(serde_json::json!({"to": "b"}));
        assert_eq!(requested_handoff("file_write", &to_b, &targets()), None);
        assert_eq!(
            requested_handoff(HANDOFF_TOOL, &to_b, &[]),
            None,
            "no handoff was offered"
        );
        for call in [
            serde_json::json!({"to": "c"}),
            serde_json::json!({"to": 1}),
            serde_json::json!({}),
        ] {
            assert_eq!(
                requested_handoff(HANDOFF_TOOL, &args(call.clone()), &targets()),
                None,
                "{call}"
            );
        }
    }

    #[test]
    fn the_handoff_tool_offers_exactly_the_targets() {
        let tool = handoff_tool(&targets());
        assert_eq!(tool.name, HANDOFF_TOOL);
        assert_eq!(
            tool.parameters["properties"]["to"]["enum"],
            serde_json::json!(["b", "user"])
        );
        assert_eq!(tool.parameters["required"], serde_json::json!(["to"]));
    }

    #[test]
    fn the_system_prompt_names_role_goal_backstory_and_tools() {
        let bare = AgentSpec {
            name: "a".into(),
            role: "R".into(),
            goal: "g".into(),
            backstory: String::new(),
            model: amaos_teams::REPLAY_MODEL.into(),
            tools: Vec::new(),
            memory: false,
            replay: Vec::new(),
            replay_latency: None,
            approval: amaos_teams::Approval::None,
            remote: None,
        };
        let agent = AgentSpec {
            role: "Writer".into(),
            goal: "write well".into(),
            backstory: "Ten years at a paper.".into(),
            tools: vec!["search".into(), "file_write".into()],
            ..bare.clone()
        };
        assert_eq!(
            system_prompt(&agent),
            "You are Writer. Your goal: write well. Ten years at a paper. Tools you may call: search, file_write."
        );
        assert_eq!(system_prompt(&bare), "You are R. Your goal: g.");
    }
}
