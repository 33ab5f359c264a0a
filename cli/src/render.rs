//! How the CLI shows tasks and events: one readable line each by default,
//! JSON objects (one per line) with `--json`.

use std::time::SystemTime;

use amaos_proto::agents::v1::run_event::Payload;
use amaos_proto::json::{struct_to_map, value_to_json};
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::task_event::Kind;
use serde_json::{Value, json};

/// The contract's name of a task state, without the prefix.
pub fn state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Unspecified => "UNSPECIFIED",
        pb::TaskState::Pending => "PENDING",
        pb::TaskState::Queued => "QUEUED",
        pb::TaskState::Running => "RUNNING",
        pb::TaskState::Succeeded => "SUCCEEDED",
        pb::TaskState::Failed => "FAILED",
        pb::TaskState::Cancelled => "CANCELLED",
        pb::TaskState::TimedOut => "TIMED_OUT",
        pb::TaskState::NeedsReview => "NEEDS_REVIEW",
        pb::TaskState::InputRequired => "INPUT_REQUIRED",
    }
}

/// The contract's name of an approval state, without the prefix.
pub fn approval_state_name(state: i32) -> &'static str {
    match pb::ApprovalState::try_from(state).unwrap_or(pb::ApprovalState::Unspecified) {
        pb::ApprovalState::Unspecified => "UNSPECIFIED",
        pb::ApprovalState::Pending => "PENDING",
        pb::ApprovalState::Approved => "APPROVED",
        pb::ApprovalState::Rejected => "REJECTED",
        pb::ApprovalState::Expired => "EXPIRED",
    }
}

/// An approval as JSON.
pub fn approval_json(a: &pb::Approval) -> Value {
    json!({
        "approval_id": a.approval_id,
        "task_id": a.task_id,
        "team": a.team,
        "attempt": a.attempt,
        "agent": a.agent,
        "tool": a.tool,
        "arguments": a.arguments.as_ref().map(|s| Value::Object(struct_to_map(s))),
        "arguments_sha256": a.arguments_sha256,
        "reason": a.reason,
        "state": approval_state_name(a.state),
        "requested_at": time(&a.requested_at),
        "expires_at": time(&a.expires_at),
        "decided_by": a.decided_by,
        "comment": a.comment,
        "decided_at": time(&a.decided_at),
    })
}

/// An approval as one readable line.
pub fn approval_line(a: &pb::Approval) -> String {
    let arguments = a
        .arguments
        .as_ref()
        .map(|s| Value::Object(struct_to_map(s)).to_string())
        .unwrap_or_default();
    let mut line = format!(
        "{} {} {} {} {}: {} {}",
        a.task_id,
        a.approval_id,
        approval_state_name(a.state),
        a.team,
        a.agent,
        a.tool,
        clip(&arguments, 80)
    );
    if !a.decided_by.is_empty() {
        line.push_str(&format!(" — by {}", a.decided_by));
    }
    line
}

fn time(ts: &Option<prost_types::Timestamp>) -> Value {
    ts.as_ref()
        .and_then(amaos_proto::time::system_time)
        .map(|t| Value::String(humantime::format_rfc3339_millis(t).to_string()))
        .unwrap_or(Value::Null)
}

/// A task as JSON.
pub fn task_json(t: &pb::Task) -> Value {
    json!({
        "task_id": t.task_id,
        "tenant": t.tenant,
        "team": t.team,
        "state": state_name(t.state),
        "attempt": t.attempt,
        "input": t.input,
        "output": t.output,
        "error": t.error.as_ref().map(|e| json!({"class": e.class, "message": e.message})),
        "session_id": t.session_id,
        "worker_id": t.worker_id,
        "labels": t.labels,
        "created_at": time(&t.created_at),
        "started_at": time(&t.started_at),
        "finished_at": time(&t.finished_at),
    })
}

/// A task as one line: id, state, team, age.
pub fn task_line(t: &pb::Task) -> String {
    let created = t
        .created_at
        .as_ref()
        .and_then(amaos_proto::time::system_time)
        .map(|c| humantime::format_rfc3339_seconds(c).to_string())
        .unwrap_or_default();
    format!(
        "{}  {:<10} {:<24} {}",
        t.task_id,
        state_name(t.state),
        t.team,
        created
    )
}

/// A task in full, for `amaos task`.
pub fn task_details(t: &pb::Task) -> String {
    let mut out = format!(
        "task      {}\nteam      {}\nstate     {}\nattempt   {}\nworker    {}\ninput     {}\n",
        t.task_id,
        t.team,
        state_name(t.state),
        t.attempt,
        t.worker_id,
        t.input
    );
    if let Some(e) = &t.error {
        out.push_str(&format!("error     {}\n", e.message));
    }
    if !t.output.is_empty() {
        out.push_str(&format!("output\n{}\n", t.output));
    }
    out
}

/// An event as JSON.
pub fn event_json(e: &pb::TaskEvent) -> Value {
    let body = match &e.kind {
        Some(Kind::StateChanged(s)) => json!({
            "type": "state_changed",
            "from": state_name(s.from),
            "to": state_name(s.to),
            "reason": s.reason,
            "attempt": s.attempt,
        }),
        Some(Kind::RunEvent(r)) => {
            let payload = match &r.payload {
                Some(Payload::RunStarted(p)) => {
                    json!({"type": "run_started", "team": p.team, "kind": p.kind, "agents": p.agents})
                }
                Some(Payload::TaskStarted(p)) => {
                    json!({"type": "task_started", "task": p.task, "index": p.index, "total": p.total})
                }
                Some(Payload::Message(p)) => {
                    json!({"type": "message", "role": p.role, "content": p.content})
                }
                Some(Payload::ToolCall(p)) => json!({
                    "type": "tool_call", "call_id": p.call_id, "tool": p.tool,
                    "arguments": p.arguments.as_ref().map(|a| Value::Object(struct_to_map(a))),
                }),
                Some(Payload::ToolResult(p)) => json!({
                    "type": "tool_result", "call_id": p.call_id, "tool": p.tool,
                    "result": p.result.as_ref().map(value_to_json), "is_error": p.is_error, "error": p.error,
                }),
                Some(Payload::MemoryRecalled(p)) => {
                    json!({"type": "memory_recalled", "count": p.count, "memory_ids": p.memory_ids})
                }
                Some(Payload::MemoryStored(p)) => {
                    json!({"type": "memory_stored", "memory_id": p.memory_id})
                }
                Some(Payload::Handoff(p)) => {
                    json!({"type": "handoff", "from": p.from, "to": p.to, "reason": p.reason})
                }
                Some(Payload::ApprovalRequested(p)) => json!({
                    "type": "approval_requested", "call_id": p.call_id, "tool": p.tool,
                    "arguments": p.arguments.as_ref().map(|a| Value::Object(struct_to_map(a))),
                    "arguments_sha256": p.arguments_sha256, "reason": p.reason,
                }),
                Some(Payload::SpeakerSelected(p)) => {
                    json!({"type": "speaker_selected", "speaker": p.speaker, "method": p.method})
                }
                Some(Payload::Verdict(p)) => {
                    json!({"type": "verdict", "kind": p.kind, "score": p.score, "feedback": p.feedback})
                }
                Some(Payload::TokenUsage(p)) => json!({
                    "type": "token_usage", "model": p.model, "prompt_tokens": p.prompt_tokens,
                    "completion_tokens": p.completion_tokens, "cost_usd": p.cost_usd,
                }),
                Some(Payload::TaskCompleted(p)) => {
                    json!({"type": "task_completed", "task": p.task, "output": p.output})
                }
                Some(Payload::RunCompleted(p)) => {
                    json!({"type": "run_completed", "output": p.output})
                }
                Some(Payload::RunFailed(p)) => {
                    json!({"type": "run_failed", "reason": p.reason, "class": p.class})
                }
                None => json!({"type": "unknown"}),
            };
            json!({"type": "run_event", "agent": r.agent, "run_sequence": r.sequence, "event": payload})
        }
        None => json!({"type": "unknown"}),
    };
    json!({"sequence": e.sequence, "task_id": e.task_id, "at": time(&e.at), "event": body})
}

fn clip(text: &str, max: usize) -> String {
    let line = text.replace('\n', " ⏎ ");
    if line.chars().count() <= max {
        line
    } else {
        format!("{}…", line.chars().take(max).collect::<String>())
    }
}

/// Tracks the crew step for the progress prefix.
#[derive(Default)]
pub struct Progress {
    step: Option<(u32, u32, String)>,
    started: Option<SystemTime>,
}

impl Progress {
    /// An event as one line, prefixed with elapsed time and crew step; `None`
    /// for events not worth a line (token usage).
    pub fn line(&mut self, e: &pb::TaskEvent) -> Option<String> {
        let at = e.at.as_ref().and_then(amaos_proto::time::system_time);
        let started = *self
            .started
            .get_or_insert(at.unwrap_or_else(SystemTime::now));
        let elapsed = at
            .and_then(|a| a.duration_since(started).ok())
            .unwrap_or_default()
            .as_secs_f64();
        let text = match &e.kind {
            Some(Kind::StateChanged(s)) => format!("● {} — {}", state_name(s.to), s.reason),
            Some(Kind::RunEvent(r)) => {
                let who = if r.agent.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", r.agent)
                };
                match &r.payload {
                    Some(Payload::RunStarted(p)) => format!(
                        "run started: {} ({}) with {}",
                        p.team,
                        p.kind,
                        p.agents.join(", ")
                    ),
                    Some(Payload::TaskStarted(p)) => {
                        self.step = Some((p.index, p.total, p.task.clone()));
                        format!("▶ task {} assigned to {}", p.task, p.agent)
                    }
                    Some(Payload::Message(p)) if p.role == "assistant" => {
                        format!("{who}says {}", clip(&p.content, 100))
                    }
                    Some(Payload::Message(_)) => return None,
                    Some(Payload::ApprovalRequested(p)) => {
                        format!("{who}waits for approval of {}: {}", p.tool, p.reason)
                    }
                    Some(Payload::ToolCall(p)) => format!(
                        "{who}calls {} {}",
                        p.tool,
                        clip(
                            &p.arguments
                                .as_ref()
                                .map(|a| Value::Object(struct_to_map(a)).to_string())
                                .unwrap_or_default(),
                            80
                        )
                    ),
                    Some(Payload::ToolResult(p)) if p.is_error => {
                        format!("{who}{} failed: {}", p.tool, clip(&p.error, 100))
                    }
                    Some(Payload::ToolResult(p)) => format!(
                        "{who}{} → {}",
                        p.tool,
                        clip(
                            &p.result
                                .as_ref()
                                .map(|v| value_to_json(v).to_string())
                                .unwrap_or_default(),
                            80
                        )
                    ),
                    Some(Payload::MemoryRecalled(p)) => {
                        format!("{who}recalled {} memories", p.count)
                    }
                    Some(Payload::MemoryStored(p)) => format!("{who}remembered {}", p.memory_id),
                    Some(Payload::TaskCompleted(p)) => format!("✓ task {} done", p.task),
                    Some(Payload::RunCompleted(_)) => "run completed".into(),
                    Some(Payload::RunFailed(p)) => {
                        format!("run failed ({}): {}", p.class, p.reason)
                    }
                    Some(Payload::Handoff(p)) => {
                        format!("handoff {} → {}: {}", p.from, p.to, p.reason)
                    }
                    Some(Payload::SpeakerSelected(p)) => {
                        format!("next speaker: {} ({})", p.speaker, p.method)
                    }
                    Some(Payload::Verdict(p)) => format!(
                        "verdict {:?} score {:.2}: {}",
                        p.kind,
                        p.score,
                        clip(&p.feedback, 80)
                    ),
                    Some(Payload::TokenUsage(_)) | None => return None,
                }
            }
            None => return None,
        };
        let step = match &self.step {
            Some((i, n, task)) => format!("[{i}/{n} {task}] "),
            None => String::new(),
        };
        Some(format!("{elapsed:>7.2}s {step}{text}"))
    }
}

fn usage_value(u: &pb::Usage) -> Value {
    let wall = u
        .wall_time
        .as_ref()
        .and_then(amaos_proto::time::duration)
        .unwrap_or_default();
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cost_usd": u.cost_usd,
        "model_calls": u.model_calls,
        "tool_calls": u.tool_calls,
        "wall_time_s": wall.as_secs_f64(),
        "attempts": u.attempts,
    })
}

/// A GetUsage answer as one JSON object.
pub fn usage_json(r: &pb::GetUsageResponse) -> Value {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            json!({
                "tenant": row.tenant,
                "team": row.team,
                "day": row.day,
                "usage": row.usage.as_ref().map(usage_value),
            })
        })
        .collect();
    let budgets: Vec<Value> = r
        .budgets
        .iter()
        .map(|b| {
            json!({
                "scope": b.scope,
                "limit_usd": b.limit_usd,
                "spent_usd": b.spent_usd,
                "config_key": b.config_key,
            })
        })
        .collect();
    json!({
        "rows": rows,
        "total": r.total.as_ref().map(usage_value),
        "budgets": budgets,
    })
}

/// A GetUsage answer as a table: one line per row, the total, the budgets.
pub fn usage_table(r: &pb::GetUsageResponse, one_task: bool) -> String {
    use std::fmt::Write;
    let line = |label: &str, u: &pb::Usage| {
        let wall = u
            .wall_time
            .as_ref()
            .and_then(amaos_proto::time::duration)
            .unwrap_or_default();
        format!(
            "{label:<40} {:>10} {:>10} {:>10.4} {:>7} {:>7} {:>9.1}s {:>8}\n",
            u.input_tokens,
            u.output_tokens,
            u.cost_usd,
            u.model_calls,
            u.tool_calls,
            wall.as_secs_f64(),
            u.attempts
        )
    };
    let mut out = format!(
        "{:<40} {:>10} {:>10} {:>10} {:>7} {:>7} {:>10} {:>8}\n",
        "", "tokens in", "tokens out", "cost $", "models", "tools", "wall", "attempts"
    );
    if !one_task {
        for row in &r.rows {
            let label = [row.tenant.as_str(), row.team.as_str(), row.day.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" / ");
            out.push_str(&line(&label, &row.usage.unwrap_or_default()));
        }
    }
    out.push_str(&line("total", &r.total.unwrap_or_default()));
    for b in &r.budgets {
        let _ = writeln!(
            out,
            "budget {}: ${:.2} of ${:.2} this month ({})",
            b.scope, b.spent_usd, b.limit_usd, b.config_key
        );
    }
    out
}
