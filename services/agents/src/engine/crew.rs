//! Crews: tasks in order (sequential), or a manager delegating them to
//! workers (hierarchical).

use std::collections::HashMap;

use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;
use amaos_teams::{AgentSpec, Assignee};

use super::budget::Budget;
use super::step::StepId;
use super::turn::converse;
use super::{Ctx, Emitter, RunError, effects};
use crate::provider::ChatModel;

/// A crew's tasks in order; returns the last output and the agent that wrote it.
pub(super) async fn run_crew_tasks<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    crew: &amaos_teams::CrewSpec,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let Ctx {
        spec,
        input,
        tools,
        text,
        top,
        ..
    } = *ctx;
    let mut last_agent = String::new();
    let total = crew.tasks.len() as u32;
    let mut outputs: HashMap<&str, String> = HashMap::new();
    let mut last = String::new();
    for (index, task) in crew.tasks.iter().enumerate() {
        if let Assignee::Team(team) = &task.assignee {
            events
                .emit(
                    team,
                    Payload::TaskStarted(pb::TaskStarted {
                        task: task.name.clone(),
                        index: index as u32 + 1,
                        total,
                        agent: team.clone(),
                    }),
                )
                .await?;
            let mut prompt = task.description.replace("{input}", text);
            if !task.expected_output.is_empty() {
                prompt.push_str(&format!("\n\nExpected output: {}", task.expected_output));
            }
            for source in &task.context {
                if let Some(text) = outputs.get(source.as_str()) {
                    prompt.push_str(&format!("\n\nContext from task `{source}`:\n{text}"));
                }
            }
            let (output, producer) = super::run_nested(ctx, team, &prompt, budget, events).await?;
            events
                .emit(
                    team,
                    Payload::TaskCompleted(pb::TaskCompleted {
                        task: task.name.clone(),
                        output: output.clone(),
                    }),
                )
                .await?;
            outputs.insert(task.name.as_str(), output.clone());
            last_agent = producer;
            last = output;
            continue;
        }
        // Validated specs name only declared agents, and assign every task of
        // a sequential crew.
        let agent = match &task.assignee {
            Assignee::Agent(name) => spec.agent(name),
            Assignee::Team(_) | Assignee::Manager => None,
        }
        .ok_or_else(|| RunError::Dependency(format!("task `{}` names no agent", task.name)))?;
        events
            .emit(
                &agent.name,
                Payload::TaskStarted(pb::TaskStarted {
                    task: task.name.clone(),
                    index: index as u32 + 1,
                    total,
                    agent: agent.name.clone(),
                }),
            )
            .await?;
        let description = task.description.replace("{input}", text);
        let mut prompt = description.clone();
        if !task.expected_output.is_empty() {
            prompt.push_str(&format!("\n\nExpected output: {}", task.expected_output));
        }
        for (source, text) in input.context.iter().filter(|_| top) {
            prompt.push_str(&format!("\n\nContext from `{source}`:\n{text}"));
        }
        for source in &task.context {
            if let Some(text) = outputs.get(source.as_str()) {
                prompt.push_str(&format!("\n\nContext from task `{source}`:\n{text}"));
            }
        }
        effects::add_memories(ctx, agent, &description, &mut prompt, events).await?;
        let output = converse(
            ctx,
            agent,
            &prompt,
            StepId::Task(index),
            tools,
            budget,
            events,
        )
        .await?;
        effects::store_result(ctx, agent, &task.name, &output, events).await?;
        events
            .emit(
                &agent.name,
                Payload::TaskCompleted(pb::TaskCompleted {
                    task: task.name.clone(),
                    output: output.clone(),
                }),
            )
            .await?;
        outputs.insert(task.name.as_str(), output.clone());
        last_agent = agent.name.clone();
        last = output;
    }
    Ok((last, last_agent))
}

/// Most delegations a manager makes in one run.
const MAX_DELEGATIONS: usize = 64;

/// What a manager decided.
#[derive(Debug, PartialEq)]
enum Decision {
    Delegate { to: String, task: String },
    Final(String),
}

/// Reads `{"delegate": {"to": …, "task": …}}` or `{"final": …}` from a
/// manager's answer; anything else is taken as its final answer.
fn parse_decision(text: &str) -> Decision {
    let json = text
        .find('{')
        .zip(text.rfind('}'))
        .and_then(|(a, b)| text.get(a..=b))
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    match json {
        Some(v) if v["delegate"].is_object() => Decision::Delegate {
            to: v["delegate"]["to"].as_str().unwrap_or_default().to_owned(),
            task: v["delegate"]["task"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        Some(v) if v["final"].is_string() => {
            Decision::Final(v["final"].as_str().unwrap_or_default().to_owned())
        }
        _ => Decision::Final(text.to_owned()),
    }
}

/// A hierarchical crew: the manager plans over the crew's tasks, delegates
/// pieces of work to workers by name (each delegation really runs the worker,
/// with its tools and memory), reviews what comes back, may send work back
/// with feedback, and finally answers.
pub(super) async fn run_hierarchical<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    crew: &amaos_teams::CrewSpec,
    manager_name: &str,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let manager = ctx
        .spec
        .agent(manager_name)
        .ok_or_else(|| RunError::Dependency(format!("no manager `{manager_name}`")))?;
    let workers: Vec<&AgentSpec> = ctx
        .spec
        .agents
        .iter()
        .filter(|a| a.name != manager.name)
        .collect();
    let mut brief = format!("You manage a crew working on: {}\n\nTasks:", ctx.text);
    for t in &crew.tasks {
        brief.push_str(&format!(
            "\n- {}: {} (expected: {})",
            t.name,
            t.description.replace("{input}", ctx.text),
            t.expected_output
        ));
    }
    brief.push_str("\n\nWorkers:");
    for w in &workers {
        brief.push_str(&format!("\n- {} ({}): {}", w.name, w.role, w.goal));
    }
    brief.push_str(
        "\n\nAnswer with JSON: {\"delegate\": {\"to\": worker, \"task\": what to do}} to hand out work \
         (send work back with feedback the same way), or {\"final\": the crew's output} when done.",
    );
    let mut results = String::new();
    for round in 0..MAX_DELEGATIONS {
        let prompt = if results.is_empty() {
            brief.clone()
        } else {
            format!("{brief}\n\nResults so far:{results}")
        };
        let answer = converse(
            ctx,
            manager,
            &prompt,
            StepId::Manager { round },
            &[],
            budget,
            events,
        )
        .await?;
        let (to, task) = match parse_decision(&answer) {
            Decision::Final(output) => return Ok((output, manager.name.clone())),
            Decision::Delegate { to, task } => (to, task),
        };
        let Some(worker) = workers.iter().find(|w| w.name == to) else {
            results.push_str(&format!(
                "\n[system] `{to}` is not a worker of this crew; choose one of the list."
            ));
            continue;
        };
        events
            .emit(
                &manager.name,
                Payload::Handoff(pb::Handoff {
                    from: manager.name.clone(),
                    to: worker.name.clone(),
                    reason: task.clone(),
                }),
            )
            .await?;
        let label = format!("delegation {}", round + 1);
        events
            .emit(
                &worker.name,
                Payload::TaskStarted(pb::TaskStarted {
                    task: label.clone(),
                    index: round as u32 + 1,
                    total: 0,
                    agent: worker.name.clone(),
                }),
            )
            .await?;
        let output = converse(
            ctx,
            worker,
            &task,
            StepId::Delegation { round },
            ctx.tools,
            budget,
            events,
        )
        .await?;
        events
            .emit(
                &worker.name,
                Payload::TaskCompleted(pb::TaskCompleted {
                    task: label,
                    output: output.clone(),
                }),
            )
            .await?;
        results.push_str(&format!("\n[{}] {}", worker.name, output));
    }
    Err(RunError::Budget(format!(
        "the manager made {MAX_DELEGATIONS} delegations without a final answer"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delegate(to: &str, task: &str) -> Decision {
        Decision::Delegate {
            to: to.into(),
            task: task.into(),
        }
    }

    #[test]
    fn a_delegation_names_the_worker_and_the_task() {
        assert_eq!(
            parse_decision(r#"{"delegate": {"to": "writer", "task": "draft it"}}"#),
            delegate("writer", "draft it")
        );
    }

    #[test]
    fn json_inside_other_text_is_found() {
        assert_eq!(
            parse_decision("Next:\n```json\n{\"delegate\": {\"to\": \"a\", \"task\": \"t\"}}\n```"),
            delegate("a", "t")
        );
        assert_eq!(
            parse_decision(r#"Done. {"final": "the report"} Thanks."#),
            Decision::Final("the report".into())
        );
    }

    #[test]
    fn a_delegation_with_missing_fields_has_empty_ones() {
        assert_eq!(parse_decision(r#"{"delegate": {}}"#), delegate("", ""));
        assert_eq!(
            parse_decision(r#"{"delegate": {"to": 3, "task": "t"}}"#),
            delegate("", "t")
        );
    }

    #[test]
    fn a_delegation_wins_over_a_final_answer() {
        assert_eq!(
            parse_decision(r#"{"final": "x", "delegate": {"to": "a", "task": "t"}}"#),
            delegate("a", "t")
        );
    }

    #[test]
    fn anything_else_is_the_whole_answer_taken_as_final() {
        for text in [
            "plain text",
            "",
            "{not json}",
            r#"{"final": 42}"#,
            r#"{"delegate": "writer"}"#,
            r#"{"other": 1}"#,
            "} {",
        ] {
            assert_eq!(parse_decision(text), Decision::Final(text.into()), "{text}");
        }
    }

    #[test]
    fn braces_in_any_order_and_text_around_them_in_any_script_are_read_safely() {
        // Byte offsets of `{` and `}` next to multi-byte characters, braces
        // the wrong way round, unclosed objects: never a panic, always the
        // whole answer as final.
        for text in [
            "}{",
            "} é {",
            "{é}",
            "{{{{",
            "}}}}",
            "{\"delegate\": {\"to\": \"a\"",
            "\u{1F600}{}",
            "ß}",
        ] {
            assert_eq!(parse_decision(text), Decision::Final(text.into()), "{text}");
        }
        assert_eq!(
            parse_decision("ü{\"final\": \"ß\"}ü"),
            Decision::Final("ß".into())
        );
        assert_eq!(
            parse_decision("→ {\"delegate\": {\"to\": \"é\", \"task\": \"ü\"}} ←"),
            delegate("é", "ü")
        );
    }
}
