//! AMAOS team specs: the YAML model, parsing, and validation with errors that
//! name the line and field.
//!
//! # Layout
//!
//! - [`spec`]: the validated types the engine runs ([`TeamSpec`], its
//!   [`Shape`]), and inside it the YAML document serde reads, the checks that
//!   name each problem, and the conversion of a sound document.
//! - [`lines`]: a map from field paths (`crew.tasks[1].agent`) to source lines,
//!   so semantic errors can point at the line as syntax errors do.
//! - [`parse`]: YAML text → a [`TeamSpec`], or every error found.
//!
//! The orchestrator validates inline specs at submission and the agents
//! service runs them; both use this crate, so a spec is a contract like the
//! protos.

pub mod lines;
pub mod spec;

use std::fmt;

pub use spec::{
    AgentSpec, Approval, Assignee, Budget, Condition, CrewSpec, CrewTask, GroupChatSpec,
    HandoffToUser, Input, JudgeSpec, Manager, NestedTeam, OnRejection, Process, RemoteAgent,
    ReplayTurn, Shape, TeamSpec, Termination, ToolTurn, valid_name,
};

/// The model alias of the built-in deterministic scripted model.
pub const REPLAY_MODEL: &str = "replay";

/// One problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted field path, e.g. `crew.tasks[1].agent`; empty for the document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl SpecError {
    /// The path of this problem inside the request field `within` that held
    /// the spec, as a google.rpc `BadRequest` names it: `within.<field>`
    /// (`spec_yaml.agents[0].model`), or `within` alone for a problem of the
    /// whole document (a syntax error, a missing `crew`).
    pub fn path_within(&self, within: &str) -> String {
        if self.field.is_empty() {
            within.to_owned()
        } else {
            format!("{within}.{}", self.field)
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: `{}`: {}", self.field, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.field, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every problem found in a spec, in source order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Deepest flow nesting (`[`, `{`) a spec may use.
pub const MAX_FLOW_DEPTH: usize = 32;
/// Deepest block nesting a spec may use, in columns of indentation (each
/// leading `- ` counts two).
pub const MAX_INDENT: usize = 160;

/// Refuses nesting deeper than any team needs before the YAML parser sees
/// it: the parser's cost grows with the square of the depth, so a spec of a
/// few hundred KiB of brackets would take minutes of CPU. Brackets inside
/// quoted text count too (a spec with that many unclosed brackets in text is
/// refused as well), which keeps the check one pass with no parser state.
fn check_nesting(yaml: &str) -> Result<(), SpecErrors> {
    let refuse = |line: usize, message: String| {
        Err(SpecErrors(vec![SpecError {
            line: Some(line),
            field: String::new(),
            message,
        }]))
    };
    let mut flow = 0usize;
    for (n, text) in yaml.lines().enumerate() {
        let indent = text.len() - text.trim_start_matches(' ').len();
        let mut rest = &text[indent..];
        let mut dashes = 0;
        while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            dashes += 1;
            rest = after.trim_start_matches(' ');
        }
        if indent + 2 * dashes > MAX_INDENT {
            return refuse(
                n + 1,
                format!(
                    "nested deeper than a team spec may be ({MAX_INDENT} columns of indentation)"
                ),
            );
        }
        for c in text.bytes() {
            match c {
                b'[' | b'{' => {
                    flow += 1;
                    if flow > MAX_FLOW_DEPTH {
                        return refuse(
                            n + 1,
                            format!(
                                "nested deeper than a team spec may be ({MAX_FLOW_DEPTH} levels of `[` and `{{`)"
                            ),
                        );
                    }
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses and validates a team spec. The cost is bounded by the spec's size
/// and nesting ([`MAX_FLOW_DEPTH`], [`MAX_INDENT`]); callers on async threads
/// run it with `spawn_blocking`.
pub fn parse(yaml: &str) -> Result<TeamSpec, SpecErrors> {
    check_nesting(yaml)?;
    let doc: spec::doc::TeamDoc = serde_yaml::from_str(yaml).map_err(|error| {
        let line = error.location().map(|l| l.line());
        let message = error.to_string();
        // serde_yaml appends " at line L column C"; the line is reported separately.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        let (field, message) = match message.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
            _ => (String::new(), message),
        };
        SpecErrors(vec![SpecError {
            line,
            field,
            message,
        }])
    })?;
    let problems = doc.problems();
    let problems = if problems.is_empty() {
        match TeamSpec::try_from(doc) {
            Ok(spec) => return Ok(spec),
            Err(problem) => vec![problem],
        }
    } else {
        problems
    };
    let index = lines::LineIndex::new(yaml);
    let mut errors: Vec<SpecError> = problems
        .into_iter()
        .map(|(field, message)| SpecError {
            line: index.line_of(&field),
            field,
            message,
        })
        .collect();
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(SpecErrors(errors))
}

#[cfg(test)]
mod tests;
