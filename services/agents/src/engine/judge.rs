//! The judge: scores a team's output against its criteria and sends it
//! back for revision, passes it, or escalates it to a person.

use amaos_proto::agents::v1 as pb;
use amaos_proto::agents::v1::run_event::Payload;

use super::budget::Budget;
use super::step::StepId;
use super::turn::converse;
use super::{Ctx, Emitter, RunError};
use crate::provider::ChatModel;

/// What a judge answered.
#[derive(Debug, PartialEq)]
struct Judgement {
    kind: pb::VerdictKind,
    score: f64,
    feedback: String,
}

/// Reads a verdict: a JSON object `{"verdict": "pass|revise|escalate",
/// "score": 0..1, "feedback": "…"}`, possibly inside other text.
fn parse_verdict(text: &str, threshold: f64) -> Option<Judgement> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let score = v["score"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
    let feedback = v["feedback"].as_str().unwrap_or_default().to_owned();
    let kind = match v["verdict"].as_str()?.to_ascii_lowercase().as_str() {
        "escalate" => pb::VerdictKind::Escalate,
        "pass" if score >= threshold => pb::VerdictKind::Pass,
        "pass" | "revise" => pb::VerdictKind::Revise,
        _ => return None,
    };
    Some(Judgement {
        kind,
        score,
        feedback,
    })
}

/// Scores the output; a revision goes back to the agent that produced it
/// with the judge's feedback, up to `max_revisions` times; then escalates.
pub(super) async fn run_judge<M: ChatModel>(
    ctx: &Ctx<'_, M>,
    judge: &amaos_teams::JudgeSpec,
    mut output: String,
    producer: &str,
    budget: &mut Budget,
    events: &mut Emitter,
) -> Result<String, RunError> {
    let judge_agent = ctx
        .spec
        .agent(&judge.agent)
        .ok_or_else(|| RunError::Dependency(format!("no judge agent `{}`", judge.agent)))?;
    let producer = ctx.spec.agent(producer).unwrap_or(judge_agent);
    for revision in 0..=judge.max_revisions {
        let prompt = format!(
            "Judge this output against the criteria.\nCriteria:\n- {}\nPassing score: {}\n\nOutput:\n{output}\n\n\
             Answer with a JSON object: {{\"verdict\": \"pass\" | \"revise\" | \"escalate\", \"score\": 0 to 1, \"feedback\": \"...\"}}",
            judge.criteria.join("\n- "),
            judge.threshold
        );
        let answer = converse(
            ctx,
            judge_agent,
            &prompt,
            StepId::Verdict { revision },
            &[],
            budget,
            events,
        )
        .await?;
        let judgement = parse_verdict(&answer, judge.threshold).unwrap_or(Judgement {
            kind: pb::VerdictKind::Escalate,
            score: 0.0,
            feedback: "the judge's answer was not a verdict".into(),
        });
        let kind = settle(judgement.kind, revision, judge.max_revisions);
        events
            .emit(
                &judge_agent.name,
                Payload::Verdict(pb::Verdict {
                    kind: kind as i32,
                    score: judgement.score,
                    feedback: judgement.feedback.clone(),
                    revision,
                }),
            )
            .await?;
        match kind {
            pb::VerdictKind::Pass => return Ok(output),
            pb::VerdictKind::Revise => {
                let prompt = format!(
                    "Your previous output:\n{output}\n\nA reviewer asks for a revision: {}\nProduce the revised output.",
                    judgement.feedback
                );
                output = converse(
                    ctx,
                    producer,
                    &prompt,
                    StepId::Revision { revision },
                    ctx.tools,
                    budget,
                    events,
                )
                .await?;
            }
            _ => return Err(RunError::NeedsReview(judgement.feedback)),
        }
    }
    Err(RunError::NeedsReview("revisions exhausted".into()))
}

/// The verdict given: a revision asked for when no revision is left
/// escalates instead.
fn settle(kind: pb::VerdictKind, revision: u32, max_revisions: u32) -> pb::VerdictKind {
    if kind == pb::VerdictKind::Revise && revision == max_revisions {
        pb::VerdictKind::Escalate
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judgement(kind: pb::VerdictKind, score: f64, feedback: &str) -> Option<Judgement> {
        Some(Judgement {
            kind,
            score,
            feedback: feedback.into(),
        })
    }

    #[test]
    fn a_pass_at_or_above_the_threshold_passes() {
        assert_eq!(
            parse_verdict(
                r#"{"verdict": "pass", "score": 0.8, "feedback": "good"}"#,
                0.8
            ),
            judgement(pb::VerdictKind::Pass, 0.8, "good")
        );
    }

    #[test]
    fn a_pass_below_the_threshold_is_a_revision() {
        assert_eq!(
            parse_verdict(
                r#"{"verdict": "pass", "score": 0.5, "feedback": "ok"}"#,
                0.8
            ),
            judgement(pb::VerdictKind::Revise, 0.5, "ok")
        );
        assert_eq!(
            parse_verdict(r#"{"verdict": "pass"}"#, 0.1),
            judgement(pb::VerdictKind::Revise, 0.0, ""),
            "a missing score is 0"
        );
    }

    #[test]
    fn revise_and_escalate_are_read_whatever_the_score_and_case() {
        assert_eq!(
            parse_verdict(
                r#"{"verdict": "REVISE", "score": 1, "feedback": "more"}"#,
                0.5
            ),
            judgement(pb::VerdictKind::Revise, 1.0, "more")
        );
        assert_eq!(
            parse_verdict(r#"{"verdict": "Escalate", "score": 0.9}"#, 0.5),
            judgement(pb::VerdictKind::Escalate, 0.9, "")
        );
    }

    #[test]
    fn the_score_is_clamped_to_zero_to_one() {
        assert_eq!(
            parse_verdict(r#"{"verdict": "pass", "score": 7}"#, 0.9),
            judgement(pb::VerdictKind::Pass, 1.0, "")
        );
        assert_eq!(
            parse_verdict(r#"{"verdict": "revise", "score": -2}"#, 0.9),
            judgement(pb::VerdictKind::Revise, 0.0, "")
        );
        assert_eq!(
            parse_verdict(r#"{"verdict": "pass", "score": "high"}"#, 0.0),
            judgement(pb::VerdictKind::Pass, 0.0, ""),
            "a score that is no number is 0"
        );
    }

    #[test]
    fn a_verdict_inside_other_text_is_found() {
        assert_eq!(
            parse_verdict(
                "My verdict:\n{\"verdict\": \"pass\", \"score\": 0.9}\nThanks",
                0.7
            ),
            judgement(pb::VerdictKind::Pass, 0.9, "")
        );
    }

    #[test]
    fn anything_else_is_no_verdict() {
        for text in [
            "",
            "pass",
            "{not json}",
            r#"{"score": 1}"#,
            r#"{"verdict": "maybe", "score": 1}"#,
            r#"{"verdict": true}"#,
            "} {",
        ] {
            assert_eq!(parse_verdict(text, 0.5), None, "{text}");
        }
    }

    #[test]
    fn a_revision_asked_for_when_none_is_left_escalates() {
        use pb::VerdictKind::{Escalate, Pass, Revise};
        assert_eq!(settle(Revise, 0, 2), Revise);
        assert_eq!(settle(Revise, 1, 2), Revise);
        assert_eq!(settle(Revise, 2, 2), Escalate);
        assert_eq!(settle(Revise, 0, 0), Escalate);
        assert_eq!(settle(Pass, 2, 2), Pass);
        assert_eq!(settle(Escalate, 0, 2), Escalate);
    }

    #[test]
    fn braces_in_any_order_and_text_around_them_in_any_script_are_read_safely() {
        for text in [
            "}{",
            "} é {",
            "{é}",
            "{{{{",
            "\u{1F600}{}",
            "ß}",
            "{\"verdict\": \"pass\"",
        ] {
            assert_eq!(parse_verdict(text, 0.5), None, "{text}");
        }
        assert_eq!(
            parse_verdict(
                "ü{\"verdict\": \"pass\", \"score\": 0.9, \"feedback\": \"ß\"}ü",
                0.5
            ),
            judgement(pb::VerdictKind::Pass, 0.9, "ß")
        );
    }
}
