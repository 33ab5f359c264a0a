//! The `shell` tool (the terminal): a command line run by `/bin/sh -c`
//! inside the sandbox, returning the exit code and capped output. A
//! non-zero exit is a result, not an error: the model reads it.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::ToolError;

/// The tool's name.
pub const NAME: &str = "shell";
/// What it does, for the model.
pub const DESCRIPTION: &str = "Run a shell command line in an isolated sandbox (no network; the task workspace is the working directory /workspace). Returns exit_code, stdout, stderr, truncated and timed_out.";
/// Longest command line.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Longest wall time a call may ask for.
pub const MAX_TIMEOUT_SECONDS: u64 = 300;
/// Wall time when the call names none.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// Its arguments' JSON Schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["command"],
        "additionalProperties": false,
        "properties": {
            "command": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND_BYTES},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_SECONDS}
        }
    })
}

/// A checked shell call.
#[derive(Clone, Debug, PartialEq)]
pub struct ShellCall {
    /// The command line.
    pub command: String,
    /// Its wall-clock limit.
    pub timeout: Duration,
}

fn invalid(field: &str, message: impl Into<String>) -> ToolError {
    ToolError::InvalidArgument {
        field: format!("arguments.{field}"),
        message: message.into(),
    }
}

impl ShellCall {
    /// Checks `args` against the schema; errors name the failing path.
    pub fn parse(args: &Map<String, Value>) -> Result<Self, ToolError> {
        if let Some(unknown) = args
            .keys()
            .find(|k| *k != "command" && *k != "timeout_seconds")
        {
            return Err(invalid(unknown, "is not an argument of `shell`"));
        }
        let command = match args.get("command") {
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(invalid("command", "must not be empty"));
            }
            Some(Value::String(s)) if s.len() > MAX_COMMAND_BYTES => {
                return Err(invalid(
                    "command",
                    format!("is {} bytes; the limit is {MAX_COMMAND_BYTES}", s.len()),
                ));
            }
            Some(Value::String(s)) if s.contains('\0') => {
                return Err(invalid("command", "must not contain NUL bytes"));
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(invalid("command", format!("must be a string, not {other}")));
            }
            None => return Err(invalid("command", "is required")),
        };
        let seconds = match args.get("timeout_seconds") {
            None => DEFAULT_TIMEOUT_SECONDS,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_TIMEOUT_SECONDS).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "timeout_seconds",
                        format!("must be an integer from 1 to {MAX_TIMEOUT_SECONDS}"),
                    ));
                }
            },
        };
        Ok(Self {
            command,
            timeout: Duration::from_secs(seconds),
        })
    }

    /// The argv the sandbox runs.
    pub fn argv(&self) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), self.command.clone()]
    }
}
