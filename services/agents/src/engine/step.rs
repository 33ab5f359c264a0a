//! Which step of a run a model conversation is, and the idempotency keys
//! derived from it.
//!
//! A tool call's key is `{run_id}:{step}:{model_call}:{n}`: the step's
//! number (below), the run's model-call counter when the call was asked for,
//! and the call's place in the model's answer. Keys are stable across
//! attempts, so a retried run replays the side effects the tools journal
//! recorded — which is why the numbers are frozen: a key that changed would
//! run a recorded side effect again.

use std::fmt;

/// Where the steps of each kind are numbered from, apart from crew tasks'.
const CHAT_BASE: usize = 1_000;
const DELEGATION_BASE: usize = 50_000;
const JUDGE_BASE: usize = 100_000;
/// A judge's revisions are numbered from here, past its verdicts.
const REVISION_OFFSET: usize = 500;
/// The selector's picks are numbered in blocks of this size per turn.
const SELECTOR_STRIDE: usize = 10;
/// A turn's selector picks start this far into the turn's block.
const SELECTOR_OFFSET: usize = 5;

/// One step of a run: a conversation of one agent with its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepId {
    /// A crew's task, by its index (from 0) in the crew.
    Task(usize),
    /// An agent's turn in a group chat, by the count of agent turns so far
    /// (from 1).
    ChatTurn(usize),
    /// The selector naming the speaker of chat turn `turn` (from 0); a
    /// second `attempt` (0 or 1) follows an invalid name.
    Selector {
        /// The chat turn.
        turn: usize,
        /// The attempt.
        attempt: usize,
    },
    /// A hierarchical crew's manager deciding in delegation round `round`
    /// (from 0).
    Manager {
        /// The round.
        round: usize,
    },
    /// The worker the manager delegated to in round `round` (from 0).
    Delegation {
        /// The round.
        round: usize,
    },
    /// The judge judging revision `revision` (0 is the first output).
    Verdict {
        /// The revision.
        revision: u32,
    },
    /// The producer revising its output after verdict `revision`.
    Revision {
        /// The verdict's revision.
        revision: u32,
    },
}

impl StepId {
    /// The step's number in keys (frozen: see the module's comment).
    pub(super) fn number(self) -> usize {
        match self {
            StepId::Task(index) => index,
            StepId::ChatTurn(calls) => CHAT_BASE + calls,
            StepId::Selector { turn, attempt } => {
                CHAT_BASE + turn * SELECTOR_STRIDE + SELECTOR_OFFSET + attempt
            }
            StepId::Manager { round } => DELEGATION_BASE + round * 2,
            StepId::Delegation { round } => DELEGATION_BASE + round * 2 + 1,
            StepId::Verdict { revision } => JUDGE_BASE + revision as usize,
            StepId::Revision { revision } => JUDGE_BASE + REVISION_OFFSET + revision as usize,
        }
    }

    /// The idempotency key (and event `call_id`) of the `call`-th tool call
    /// (from 0) that model call number `model_call` of this step asked for.
    pub(super) fn call_key(self, run_id: &str, model_call: u32, call: usize) -> String {
        format!("{run_id}:{self}:{model_call}:{call}")
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The idempotency key of the memory an agent stores for task `label`.
pub(super) fn memory_key(run_id: &str, label: &str) -> String {
    format!("{run_id}:{label}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are persisted in the tools journal: these strings must never
    /// change (they are what `format!("{run}:{index}:{steps}:{n}")` gave
    /// with the index offsets the engine used before steps were typed).
    #[test]
    fn keys_are_the_persisted_strings() {
        let run = "run-7";
        let cases = [
            (StepId::Task(0), 1, 0, "run-7:0:1:0"),
            (StepId::Task(2), 9, 1, "run-7:2:9:1"),
            (StepId::ChatTurn(1), 3, 0, "run-7:1001:3:0"),
            (StepId::ChatTurn(12), 40, 2, "run-7:1012:40:2"),
            (
                StepId::Selector {
                    turn: 0,
                    attempt: 0,
                },
                1,
                0,
                "run-7:1005:1:0",
            ),
            (
                StepId::Selector {
                    turn: 3,
                    attempt: 1,
                },
                8,
                0,
                "run-7:1036:8:0",
            ),
            (StepId::Manager { round: 0 }, 1, 0, "run-7:50000:1:0"),
            (StepId::Delegation { round: 0 }, 2, 0, "run-7:50001:2:0"),
            (StepId::Manager { round: 4 }, 11, 0, "run-7:50008:11:0"),
            (StepId::Delegation { round: 4 }, 12, 3, "run-7:50009:12:3"),
            (StepId::Verdict { revision: 0 }, 5, 0, "run-7:100000:5:0"),
            (StepId::Verdict { revision: 2 }, 9, 0, "run-7:100002:9:0"),
            (StepId::Revision { revision: 0 }, 6, 0, "run-7:100500:6:0"),
            (StepId::Revision { revision: 1 }, 8, 1, "run-7:100501:8:1"),
        ];
        for (step, model_call, call, key) in cases {
            assert_eq!(step.call_key(run, model_call, call), key, "{step:?}");
        }
    }

    #[test]
    fn a_step_displays_as_its_number() {
        assert_eq!(StepId::Task(3).to_string(), "3");
        assert_eq!(StepId::Revision { revision: 2 }.to_string(), "100502");
    }

    #[test]
    fn memory_keys_are_the_persisted_strings() {
        assert_eq!(memory_key("run-7", "write"), "run-7:write");
        assert_eq!(memory_key("run-7", "chat-writer-3"), "run-7:chat-writer-3");
    }
}
