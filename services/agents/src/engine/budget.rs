//! The run's budget: model calls, tokens and loop detection, one for the
//! whole run, nested teams included.

use amaos_teams::TeamSpec;

use super::{RunError, RunInput};
use crate::provider::Usage;

/// The same message this many times in a row is a loop: the run stops.
const LOOP_REPEATS: u32 = 3;

/// What one run has used and may use.
pub(super) struct Budget {
    /// Model calls so far; the current call's number once it is taken.
    pub(super) steps: u32,
    /// Tokens used so far.
    pub(super) tokens: u64,
    max_steps: u32,
    max_tokens: Option<u64>,
    /// The last assistant message and how many times in a row it was said.
    repeated: (String, u32),
}

impl Budget {
    /// The budget of a run of `spec`: the tighter of the spec's limits and
    /// the run's.
    pub(super) fn new(spec: &TeamSpec, input: &RunInput) -> Self {
        Self::with_limits(
            spec.budget.max_steps,
            spec.budget.max_tokens,
            input.max_steps,
            input.max_tokens,
        )
    }

    fn with_limits(
        spec_steps: Option<u32>,
        spec_tokens: Option<u64>,
        run_steps: u32,
        run_tokens: Option<u64>,
    ) -> Self {
        Self {
            steps: 0,
            tokens: 0,
            max_steps: spec_steps.unwrap_or(run_steps).min(run_steps),
            max_tokens: match (spec_tokens, run_tokens) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            repeated: (String::new(), 0),
        }
    }

    /// Takes one model call; fails once the run has made all it may.
    pub(super) fn take_step(&mut self) -> Result<(), RunError> {
        self.steps += 1;
        if self.steps > self.max_steps {
            return Err(RunError::Budget(format!(
                "the run used its {} model calls",
                self.max_steps
            )));
        }
        Ok(())
    }

    /// Counts the tokens of one model call.
    pub(super) fn add_usage(&mut self, usage: Usage) {
        self.tokens += usage.prompt_tokens + usage.completion_tokens;
    }

    /// Fails once the run has used more tokens than it may.
    pub(super) fn check_tokens(&self) -> Result<(), RunError> {
        if let Some(max) = self.max_tokens
            && self.tokens > max
        {
            return Err(RunError::Budget(format!(
                "the run used more than its {max} tokens"
            )));
        }
        Ok(())
    }

    /// Notes an agent's message; fails when it is the same message
    /// [`LOOP_REPEATS`] times in a row.
    pub(super) fn note_message(&mut self, text: &str) -> Result<(), RunError> {
        if self.repeated.0 == text {
            self.repeated.1 += 1;
            if self.repeated.1 >= LOOP_REPEATS {
                return Err(RunError::Budget(format!(
                    "loop detected: the same message {LOOP_REPEATS} times in a row"
                )));
            }
        } else {
            self.repeated = (text.to_owned(), 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
        }
    }

    #[test]
    fn limits_are_the_tighter_of_the_spec_and_the_run() {
        let b = Budget::with_limits(Some(5), Some(900), 10, Some(1000));
        assert_eq!((b.max_steps, b.max_tokens), (5, Some(900)));
        let b = Budget::with_limits(Some(50), Some(2000), 10, Some(1000));
        assert_eq!((b.max_steps, b.max_tokens), (10, Some(1000)));
        let b = Budget::with_limits(None, None, 10, None);
        assert_eq!((b.max_steps, b.max_tokens), (10, None));
        let b = Budget::with_limits(None, Some(7), 10, None);
        assert_eq!(b.max_tokens, Some(7));
        let b = Budget::with_limits(None, None, 10, Some(8));
        assert_eq!(b.max_tokens, Some(8));
    }

    #[test]
    fn the_step_after_the_last_allowed_one_fails() {
        let mut b = Budget::with_limits(Some(2), None, 10, None);
        assert!(b.take_step().is_ok());
        assert!(b.take_step().is_ok());
        let err = b.take_step().unwrap_err();
        assert_eq!(err.to_string(), "the run used its 2 model calls");
        assert_eq!(err.class(), "budget");
        assert_eq!(b.steps, 3);
    }

    #[test]
    fn tokens_fail_only_beyond_the_limit() {
        let mut b = Budget::with_limits(None, Some(100), 10, None);
        b.add_usage(usage(60, 40));
        assert_eq!(b.tokens, 100);
        assert!(b.check_tokens().is_ok());
        b.add_usage(usage(1, 0));
        let err = b.check_tokens().unwrap_err();
        assert_eq!(err.to_string(), "the run used more than its 100 tokens");

        let mut unlimited = Budget::with_limits(None, None, 10, None);
        unlimited.add_usage(usage(u64::MAX / 2, 0));
        assert!(unlimited.check_tokens().is_ok());
    }

    #[test]
    fn the_same_message_three_times_in_a_row_is_a_loop() {
        let mut b = Budget::with_limits(None, None, 10, None);
        assert!(b.note_message("a").is_ok());
        assert!(b.note_message("a").is_ok());
        let err = b.note_message("a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "loop detected: the same message 3 times in a row"
        );
    }

    #[test]
    fn another_message_in_between_resets_the_count() {
        let mut b = Budget::with_limits(None, None, 10, None);
        for text in ["a", "a", "b", "a", "a", "b", "b"] {
            assert!(b.note_message(text).is_ok(), "{text}");
        }
        assert!(b.note_message("b").is_err());
    }

    #[test]
    fn the_empty_message_counts_like_any_other_from_the_start() {
        // The count starts at ("", 0): a first empty message counts once.
        let mut b = Budget::with_limits(None, None, 10, None);
        assert!(b.note_message("").is_ok());
        assert!(b.note_message("").is_ok());
        assert!(b.note_message("").is_err());
    }
}
