//! The retry policy's decisions, without a worker or a store.

use super::*;
use crate::task::{Fallback, RetryPolicy};

fn task(stage_attempts: u32, stage: u32, fallbacks: Vec<Fallback>) -> Task {
    let mut task = Task::sample("acme");
    task.state = TaskState::Running;
    task.attempt = stage_attempts;
    task.stage_attempts = stage_attempts;
    task.stage = stage;
    task.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        retry_on: vec![ErrorClass::Transient],
    };
    task.fallbacks = fallbacks;
    task
}

fn fail(class: ErrorClass) -> Failure {
    Failure::new(class, "boom")
}

/// The state a finished outcome ends in, or `None` for a retry.
fn finished(outcome: &Outcome) -> Option<TaskState> {
    match outcome {
        Outcome::Finished { state, .. } => Some(*state),
        _ => None,
    }
}

/// `(after, next_stage)` of a retry, or `None`.
fn retry(outcome: &Outcome) -> Option<(Duration, bool)> {
    match outcome {
        Outcome::Retry {
            after, next_stage, ..
        } => Some((*after, *next_stage)),
        _ => None,
    }
}

#[test]
fn a_retryable_failure_with_attempts_left_retries_in_its_stage_after_the_backoff() {
    let t = task(1, 0, vec![]);
    let outcome = decide(&t, fail(ErrorClass::Transient), true, 1.0);
    assert_eq!(
        retry(&outcome),
        Some((t.retry.backoff(2, 1.0), false)),
        "{outcome:?}"
    );
    // The jitter moves the wait within its range, never above the cap.
    let low = retry(&decide(&t, fail(ErrorClass::Transient), true, 0.0)).unwrap();
    assert!(low.0 <= t.retry.backoff(2, 1.0));
    let late = task(2, 0, vec![]);
    let (after, _) = retry(&decide(&late, fail(ErrorClass::Transient), true, 1.0)).unwrap();
    assert!(after <= late.retry.max_backoff);
}

#[test]
fn the_error_is_kept_whatever_is_decided() {
    let t = task(1, 0, vec![]);
    for outcome in [
        decide(&t, fail(ErrorClass::Transient), true, 0.5),
        decide(&t, fail(ErrorClass::Internal), false, 0.5),
    ] {
        let error = match outcome {
            Outcome::Retry { error, .. } | Outcome::Finished { error, .. } => error,
            Outcome::Succeeded { .. } => panic!("a failure never succeeds"),
            Outcome::AwaitInput(_) => panic!("a failure never waits for a person"),
        };
        assert_eq!(error.message, "boom");
    }
}

#[test]
fn an_exhausted_stage_moves_to_the_next_fallback_at_once() {
    let t = task(3, 0, vec![Fallback::Model("backup".into())]);
    let outcome = decide(&t, fail(ErrorClass::Transient), true, 0.5);
    assert_eq!(retry(&outcome), Some((Duration::ZERO, true)), "{outcome:?}");
    // A failure the policy does not retry skips to the fallback too.
    let fresh = task(1, 0, vec![Fallback::Team("other".into())]);
    let outcome = decide(&fresh, fail(ErrorClass::Provider), false, 0.5);
    assert_eq!(retry(&outcome), Some((Duration::ZERO, true)), "{outcome:?}");
}

#[test]
fn the_last_stage_exhausted_fails_the_task() {
    let none = task(3, 0, vec![]);
    assert_eq!(
        finished(&decide(&none, fail(ErrorClass::Transient), true, 0.5)),
        Some(TaskState::Failed)
    );
    // Stage 1 is the only fallback's: none is left after it.
    let used = task(3, 1, vec![Fallback::Model("backup".into())]);
    assert_eq!(
        finished(&decide(&used, fail(ErrorClass::Transient), true, 0.5)),
        Some(TaskState::Failed)
    );
}

#[test]
fn invalid_input_fails_without_trying_a_fallback() {
    let t = task(1, 0, vec![Fallback::Team("other".into())]);
    assert_eq!(
        finished(&decide(&t, fail(ErrorClass::Invalid), false, 0.5)),
        Some(TaskState::Failed)
    );
}

#[test]
fn cancellation_and_review_end_the_task_even_with_retries_and_fallbacks_left() {
    let t = task(1, 0, vec![Fallback::Team("other".into())]);
    assert_eq!(
        finished(&decide(&t, fail(ErrorClass::Cancelled), true, 0.5)),
        Some(TaskState::Cancelled)
    );
    assert_eq!(
        finished(&decide(&t, fail(ErrorClass::Review), true, 0.5)),
        Some(TaskState::NeedsReview)
    );
}
