//! Group chats: round robin, a selector agent naming the next speaker, or
//! a swarm whose speaker keeps the floor until it hands off; composable stop
//! conditions.

use amaos_mesh::approval::INPUT;
use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;

use amaos_teams::{Condition, HandoffToUser, Manager, Termination};

use super::budget::Budget;
use super::step::StepId;
use super::turn::{HUMAN, Turn, converse, converse_turn};
use super::{Ctx, Emitter, RunError, effects};
use crate::provider::ChatModel;

/// A person's answer to `agent`'s handoff to `user` at `step`: the message
/// when one was sent (SendInput), `None` when the wait ended without one
/// (expiry, or a rejection), and INPUT_REQUIRED when nobody was asked yet:
/// the run stops and the task waits for a person, holding no worker.
fn person_answer<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    agent: &amaos_teams::AgentSpec,
    step: StepId,
    budget: &Budget,
    last: &str,
) -> Result<Option<String>, RunError> {
    // Stable across attempts, as tool calls' keys are.
    let call_id = format!("{}:{step}:{HUMAN}:{}", ctx.input.run_id, budget.steps);
    match ctx.input.approvals.get(&call_id) {
        Some(decision) if decision.approved => Ok(Some(decision.comment.clone())),
        Some(_) => Ok(None),
        None => {
            let mut arguments = serde_json::Map::new();
            arguments.insert(
                "last_message".into(),
                last.chars().take(2_000).collect::<String>().into(),
            );
            Err(RunError::InputRequired {
                agent: agent.name.clone(),
                asked: Box::new(pb::ApprovalRequested {
                    call_id,
                    tool: INPUT.into(),
                    arguments_sha256: amaos_mesh::approval::arguments_sha256(INPUT, &arguments),
                    arguments: Some(amaos_proto::json::map_to_struct(&arguments)),
                    reason: format!(
                        "agent `{}` handed the conversation to a person: answer with a message",
                        agent.name
                    ),
                }),
            })
        }
    }
}

/// A group chat; returns the last message and the agent that wrote it (for
/// a nested crew's message, the crew's last agent).
pub(super) async fn run_chat<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    chat: &amaos_teams::GroupChatSpec,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, String), RunError> {
    let participants = ctx.spec.participants();
    let opening = chat.task.replace("{input}", ctx.text);
    events
        .emit(
            "",
            Payload::Message(pb::Message {
                role: "user".into(),
                content: opening.clone(),
            }),
        )
        .await?;
    let mut transcript: Vec<(String, String)> = vec![("user".into(), opening)];
    let mut producer = String::new();
    let started = tokio::time::Instant::now();
    let mut turn = 0usize;
    let mut calls = 0usize;
    // In a swarm the speaker keeps the floor until it hands off.
    let mut holder = participants[0].to_owned();
    let swarm = chat.manager == Manager::Swarm;
    loop {
        let (speaker, method) = match &chat.manager {
            Manager::Selector(selector) => {
                select_speaker(
                    ctx,
                    selector,
                    &participants,
                    &transcript,
                    turn,
                    budget,
                    events,
                )
                .await?
            }
            Manager::Swarm => (holder.clone(), "handoff"),
            Manager::RoundRobin => (round_robin(&participants, turn).to_owned(), "round_robin"),
        };
        events
            .emit(
                "",
                Payload::SpeakerSelected(pb::SpeakerSelected {
                    speaker: speaker.clone(),
                    method: method.into(),
                }),
            )
            .await?;
        let reply = if let Some(agent) = ctx.spec.agent(&speaker) {
            let mut prompt = render(&transcript);
            let latest = transcript
                .last()
                .map(|(_, t)| t.as_str())
                .unwrap_or_default();
            effects::add_memories(ctx, agent, latest, &mut prompt, events).await?;
            prompt.push_str(&format!(
                "\n\nYou are {}. Reply with your next message.",
                agent.name
            ));
            let handoffs: Vec<String> = if swarm {
                handoff_targets(&participants, &speaker)
            } else {
                Vec::new()
            };
            calls += 1;
            let turn_result = converse_turn(
                ctx,
                agent,
                &prompt,
                StepId::ChatTurn(calls),
                ctx.tools,
                &handoffs,
                budget,
                events,
            )
            .await?;
            match turn_result {
                Turn::Said(text) => {
                    producer = agent.name.clone();
                    text
                }
                Turn::Handoff { to } if to == HUMAN => {
                    let (_, last) = transcript.last().cloned().unwrap_or_default();
                    if chat.handoff_to_user == HandoffToUser::End {
                        // A handoff to a person ends the chat with what was said so far.
                        return Ok((last, producer));
                    }
                    match person_answer(ctx, agent, StepId::ChatTurn(calls), budget, &last)? {
                        Some(message) => {
                            // The person's message joins the conversation;
                            // the agent that handed over keeps the floor.
                            events
                                .emit(
                                    "",
                                    Payload::Message(pb::Message {
                                        role: "user".into(),
                                        content: message.clone(),
                                    }),
                                )
                                .await?;
                            transcript.push(("user".into(), message));
                            holder = speaker.clone();
                            continue;
                        }
                        // Nobody answered in time, or a person declined.
                        None => return Ok((last, producer)),
                    }
                }
                Turn::Handoff { to } => {
                    holder = to;
                    continue;
                }
            }
        } else {
            // A nested crew takes its turn: it works on the conversation so far.
            let (text, by) =
                super::run_nested(ctx, &speaker, &render(&transcript), budget, events).await?;
            events
                .emit(
                    &speaker,
                    Payload::Message(pb::Message {
                        role: "assistant".into(),
                        content: text.clone(),
                    }),
                )
                .await?;
            producer = by;
            text
        };
        transcript.push((speaker.clone(), reply));
        turn += 1;
        if let Some(reason) = stop_reason(
            &chat.termination,
            &transcript,
            turn,
            budget.tokens,
            started.elapsed(),
        ) {
            tracing::debug!(%reason, "group chat stopped");
            let (_, last) = transcript.pop().unwrap_or_default();
            if let Some(agent) = ctx.spec.agent(&producer) {
                let label = format!("chat-{}-{turn}", agent.name);
                effects::store_result(ctx, agent, &label, &last, events).await?;
            }
            return Ok((last, producer));
        }
    }
}

fn render(transcript: &[(String, String)]) -> String {
    let mut out = String::from("Conversation so far:");
    for (who, text) in transcript {
        out.push_str(&format!("\n[{who}] {text}"));
    }
    out
}

/// Whether the chat stops after `messages` agent messages, and why.
fn stop_reason(
    termination: &Termination,
    transcript: &[(String, String)],
    messages: usize,
    tokens: u64,
    elapsed: std::time::Duration,
) -> Option<String> {
    let last = transcript
        .last()
        .map(|(_, t)| t.as_str())
        .unwrap_or_default();
    let holds = |c: &Condition| -> Option<String> {
        match c {
            Condition::MaxMessages(n) => (messages as u32 >= *n).then(|| format!("{n} messages")),
            Condition::TextMention(text) => last
                .contains(text.as_str())
                .then(|| format!("`{text}` mentioned")),
            Condition::MaxTokens(n) => (tokens >= *n).then(|| format!("{n} tokens used")),
            Condition::Timeout(limit) => (elapsed >= *limit).then(|| format!("{limit:?} elapsed")),
        }
    };
    if let Some(reason) = termination.any.iter().find_map(holds) {
        return Some(reason);
    }
    if !termination.all.is_empty() {
        let reasons: Option<Vec<String>> = termination.all.iter().map(holds).collect();
        return reasons.map(|r| r.join(" and "));
    }
    None
}

/// The selector agent names the next speaker; an invalid name is asked for
/// once more, then the turn falls back to round robin.
async fn select_speaker<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    selector: &str,
    participants: &[&str],
    transcript: &[(String, String)],
    turn: usize,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<(String, &'static str), RunError> {
    let names = participants;
    let selector = ctx
        .spec
        .agent(selector)
        .ok_or_else(|| RunError::Dependency("the selector agent is missing".into()))?;
    for attempt in 0..2 {
        let prompt = format!(
            "{}\n\nWho speaks next? Answer with exactly one of: {}.{}",
            render(transcript),
            names.join(", "),
            if attempt > 0 {
                " Your last answer named nobody on that list."
            } else {
                ""
            }
        );
        let pick = converse(
            ctx,
            selector,
            &prompt,
            StepId::Selector { turn, attempt },
            &[],
            budget,
            events,
        )
        .await?;
        if let Some(pick) = named_speaker(&pick, names) {
            return Ok((pick.to_owned(), "selector"));
        }
    }
    Ok((round_robin(participants, turn).to_owned(), "fallback"))
}

/// The participant whose turn `turn` (from 0) is in round robin.
fn round_robin<'a>(participants: &[&'a str], turn: usize) -> &'a str {
    participants[turn % participants.len()]
}

/// The participant a selector's answer names: the answer without
/// surrounding whitespace and punctuation, if it is one of `names`.
fn named_speaker<'a>(answer: &'a str, names: &[&str]) -> Option<&'a str> {
    let pick = answer
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
    names.contains(&pick).then_some(pick)
}

/// Whom a swarm's `speaker` may hand the conversation to: every other
/// participant, then a person.
fn handoff_targets(participants: &[&str], speaker: &str) -> Vec<String> {
    participants
        .iter()
        .filter(|n| **n != speaker)
        .map(|n| (*n).to_owned())
        .chain(std::iter::once(HUMAN.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn transcript(last: &str) -> Vec<(String, String)> {
        vec![
            ("user".into(), "the task".into()),
            ("a".into(), last.into()),
        ]
    }

    fn messages(n: u32) -> Condition {
        Condition::MaxMessages(n)
    }

    fn mention(text: &str) -> Condition {
        Condition::TextMention(text.into())
    }

    fn tokens(n: u64) -> Condition {
        Condition::MaxTokens(n)
    }

    fn timeout(t: Duration) -> Condition {
        Condition::Timeout(t)
    }

    fn any(conditions: Vec<Condition>) -> Termination {
        Termination {
            any: conditions,
            all: Vec::new(),
        }
    }

    fn all(conditions: Vec<Condition>) -> Termination {
        Termination {
            any: Vec::new(),
            all: conditions,
        }
    }

    #[test]
    fn no_condition_never_stops() {
        let t = transcript("TERMINATE");
        assert_eq!(
            stop_reason(&Termination::default(), &t, 1000, u64::MAX, Duration::MAX),
            None
        );
    }

    #[test]
    fn each_condition_holds_from_its_limit_on() {
        let t = transcript("all done, TERMINATE");
        let zero = Duration::ZERO;
        assert_eq!(stop_reason(&any(vec![messages(3)]), &t, 2, 0, zero), None);
        assert_eq!(
            stop_reason(&any(vec![messages(3)]), &t, 3, 0, zero).as_deref(),
            Some("3 messages")
        );
        assert_eq!(
            stop_reason(&any(vec![mention("TERMINATE")]), &t, 1, 0, zero).as_deref(),
            Some("`TERMINATE` mentioned")
        );
        assert_eq!(
            stop_reason(&any(vec![mention("terminate")]), &t, 1, 0, zero),
            None,
            "a mention is case-sensitive"
        );
        assert_eq!(stop_reason(&any(vec![tokens(100)]), &t, 1, 99, zero), None);
        assert_eq!(
            stop_reason(&any(vec![tokens(100)]), &t, 1, 100, zero).as_deref(),
            Some("100 tokens used")
        );
        let limit = Duration::from_secs(120);
        assert_eq!(
            stop_reason(
                &any(vec![timeout(limit)]),
                &t,
                1,
                0,
                limit - Duration::from_millis(1)
            ),
            None
        );
        assert_eq!(
            stop_reason(&any(vec![timeout(limit)]), &t, 1, 0, limit).as_deref(),
            Some("120s elapsed")
        );
    }

    #[test]
    fn only_the_last_message_is_searched_for_a_mention() {
        let t = vec![
            ("user".into(), "say TERMINATE when done".into()),
            ("a".into(), "working".into()),
        ];
        assert_eq!(
            stop_reason(&any(vec![mention("TERMINATE")]), &t, 1, 0, Duration::ZERO),
            None
        );
    }

    #[test]
    fn the_first_condition_of_any_that_holds_is_the_reason() {
        let t = transcript("TERMINATE");
        let termination = any(vec![messages(10), mention("TERMINATE"), tokens(5)]);
        assert_eq!(
            stop_reason(&termination, &t, 1, 10, Duration::ZERO).as_deref(),
            Some("`TERMINATE` mentioned")
        );
    }

    #[test]
    fn all_stops_only_when_every_condition_holds() {
        let t = transcript("TERMINATE");
        let termination = all(vec![messages(2), mention("TERMINATE")]);
        assert_eq!(stop_reason(&termination, &t, 1, 0, Duration::ZERO), None);
        assert_eq!(
            stop_reason(&termination, &t, 2, 0, Duration::ZERO).as_deref(),
            Some("2 messages and `TERMINATE` mentioned")
        );
    }

    #[test]
    fn any_is_checked_before_all() {
        let t = transcript("x");
        let termination = Termination {
            any: vec![tokens(10)],
            all: vec![messages(1), mention("never")],
        };
        assert_eq!(
            stop_reason(&termination, &t, 5, 10, Duration::ZERO).as_deref(),
            Some("10 tokens used")
        );
        assert_eq!(stop_reason(&termination, &t, 5, 9, Duration::ZERO), None);
    }

    #[test]
    fn round_robin_cycles_through_the_participants() {
        let p = ["a", "b", "c"];
        let order: Vec<&str> = (0..7).map(|turn| round_robin(&p, turn)).collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn a_selector_answer_names_a_participant_without_surrounding_punctuation() {
        let names = ["writer", "fact-checker", "editor_2"];
        assert_eq!(named_speaker("writer", &names), Some("writer"));
        assert_eq!(named_speaker("  `writer`.\n", &names), Some("writer"));
        assert_eq!(
            named_speaker("**fact-checker**", &names),
            Some("fact-checker")
        );
        assert_eq!(named_speaker("\"editor_2\"", &names), Some("editor_2"));
    }

    #[test]
    fn a_single_participant_speaks_every_turn() {
        for turn in [0, 1, 2, 1000] {
            assert_eq!(round_robin(&["solo"], turn), "solo");
        }
    }

    #[test]
    fn a_selector_answer_in_any_quotes_or_brackets_names_the_participant() {
        let names = ["writer"];
        for answer in [
            "«writer»",
            "(writer)",
            "[writer]!",
            "“writer”",
            "writer…",
            "> writer",
        ] {
            assert_eq!(named_speaker(answer, &names), Some("writer"), "{answer:?}");
        }
        for answer in ["wri ter", "writer\neditor", "writer's", "ẅriter"] {
            assert_eq!(named_speaker(answer, &names), None, "{answer:?}");
        }
    }

    #[test]
    fn a_selector_answer_naming_nobody_on_the_list_is_none() {
        let names = ["writer", "editor"];
        for answer in ["Writer", "the writer", "writer, editor", "", "reviewer"] {
            assert_eq!(named_speaker(answer, &names), None, "{answer:?}");
        }
    }

    #[test]
    fn a_swarm_speaker_may_hand_off_to_the_others_and_a_person() {
        assert_eq!(
            handoff_targets(&["a", "b", "c"], "b"),
            ["a".to_owned(), "c".to_owned(), HUMAN.to_owned()]
        );
        assert_eq!(handoff_targets(&["a"], "a"), [HUMAN.to_owned()]);
    }

    #[test]
    fn the_transcript_renders_one_line_per_message() {
        assert_eq!(
            render(&transcript("hi")),
            "Conversation so far:\n[user] the task\n[a] hi"
        );
        assert_eq!(render(&[]), "Conversation so far:");
    }
}
