//! The built-in file tools: their names, descriptions, JSON Schemas, argument
//! checks (errors name the failing path, e.g. `arguments.path`) and bodies.

use serde_json::{Map, Value, json};

use crate::ToolError;
use crate::workspace::Workspace;

/// Limits on file tools.
#[derive(Clone, Copy, Debug)]
pub struct FileLimits {
    /// Largest file read or written.
    pub max_file_bytes: usize,
    /// Most entries listed.
    pub max_list_entries: usize,
}

/// A built-in tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// Reads a text file.
    FileRead,
    /// Writes a text file.
    FileWrite,
    /// Lists a directory.
    FileList,
    /// Finds lines containing a text in the files under a directory.
    FileSearch,
}

/// A checked call of a built-in tool.
#[derive(Debug)]
pub enum Call {
    /// Read `path`.
    Read {
        /// The path.
        path: String,
    },
    /// Write `content` to `path`.
    Write {
        /// The path.
        path: String,
        /// The text.
        content: String,
        /// Append instead of replacing.
        append: bool,
    },
    /// List `path`.
    List {
        /// The path.
        path: String,
    },
    /// Search the files under `path` for lines containing `query`.
    Search {
        /// The directory.
        path: String,
        /// The text, matched case-insensitively.
        query: String,
    },
}

fn invalid(field: &str, message: impl Into<String>) -> ToolError {
    ToolError::InvalidArgument {
        field: format!("arguments.{field}"),
        message: message.into(),
    }
}

fn string(
    args: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<String>, ToolError> {
    match args.get(field) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(field, format!("must be a string, not {other}"))),
        None if required => Err(invalid(field, "is required")),
        None => Ok(None),
    }
}

impl Builtin {
    /// Every built-in tool.
    pub const ALL: [Builtin; 4] = [
        Builtin::FileRead,
        Builtin::FileWrite,
        Builtin::FileList,
        Builtin::FileSearch,
    ];

    /// The tool called `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::FileRead => "file_read",
            Builtin::FileWrite => "file_write",
            Builtin::FileList => "file_list",
            Builtin::FileSearch => "file_search",
        }
    }

    /// What it does, for the model.
    pub fn description(self) -> &'static str {
        match self {
            Builtin::FileRead => "Read a UTF-8 text file from the task's workspace.",
            Builtin::FileWrite => "Write (or append to) a UTF-8 text file in the task's workspace.",
            Builtin::FileList => "List a directory of the task's workspace.",
            Builtin::FileSearch => {
                "Find the lines containing a text (case-insensitive) in the files under a directory of the task's workspace."
            }
        }
    }

    /// Whether a call changes something.
    pub fn side_effects(self) -> bool {
        matches!(self, Builtin::FileWrite)
    }

    /// The JSON Schema of its arguments.
    pub fn schema(self) -> Value {
        let path = json!({"type": "string", "description": "A path relative to the workspace."});
        match self {
            Builtin::FileRead => json!({
                "type": "object", "additionalProperties": false,
                "required": ["path"], "properties": {"path": path}
            }),
            Builtin::FileWrite => json!({
                "type": "object", "additionalProperties": false,
                "required": ["path", "content"],
                "properties": {
                    "path": path,
                    "content": {"type": "string"},
                    "append": {"type": "boolean", "default": false}
                }
            }),
            Builtin::FileList => json!({
                "type": "object", "additionalProperties": false,
                "properties": {"path": {"type": "string", "default": "."}}
            }),
            Builtin::FileSearch => json!({
                "type": "object", "additionalProperties": false,
                "required": ["query"],
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "path": {"type": "string", "default": "."}
                }
            }),
        }
    }

    /// Checks arguments against the schema.
    pub fn parse(self, args: &Map<String, Value>) -> Result<Call, ToolError> {
        let allowed: &[&str] = match self {
            Builtin::FileRead => &["path"],
            Builtin::FileWrite => &["path", "content", "append"],
            Builtin::FileList => &["path"],
            Builtin::FileSearch => &["query", "path"],
        };
        if let Some(unknown) = args.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(invalid(
                unknown,
                format!("is not an argument of `{}`", self.name()),
            ));
        }
        Ok(match self {
            Builtin::FileRead => Call::Read {
                path: string(args, "path", true)?.unwrap_or_default(),
            },
            Builtin::FileWrite => Call::Write {
                path: string(args, "path", true)?.unwrap_or_default(),
                content: string(args, "content", true)?.unwrap_or_default(),
                append: match args.get("append") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(invalid("append", format!("must be a boolean, not {other}")));
                    }
                },
            },
            Builtin::FileList => Call::List {
                path: string(args, "path", false)?.unwrap_or_else(|| ".".into()),
            },
            Builtin::FileSearch => {
                let query = string(args, "query", true)?.unwrap_or_default();
                if query.is_empty() || query.len() > 1024 {
                    return Err(invalid("query", "must be 1 to 1024 characters"));
                }
                Call::Search {
                    path: string(args, "path", false)?.unwrap_or_else(|| ".".into()),
                    query,
                }
            }
        })
    }
}

impl Call {
    /// Runs the call in `ws`.
    pub fn run(self, ws: &Workspace, limits: FileLimits) -> Result<Value, ToolError> {
        match self {
            Call::Read { path } => {
                let content = ws.read(&path, limits.max_file_bytes)?;
                Ok(json!({"path": path, "content": content}))
            }
            Call::Write {
                path,
                content,
                append,
            } => {
                let bytes = ws.write(&path, &content, append, limits.max_file_bytes)?;
                Ok(json!({"path": path, "bytes_written": bytes}))
            }
            Call::List { path } => {
                let (entries, truncated) = ws.list(&path, limits.max_list_entries)?;
                let entries: Vec<Value> = entries
                    .into_iter()
                    .map(|(name, dir, size)| json!({"name": name, "kind": if dir { "dir" } else { "file" }, "size": size}))
                    .collect();
                Ok(json!({"path": path, "entries": entries, "truncated": truncated}))
            }
            Call::Search { path, query } => {
                let (hits, truncated) = ws.search(
                    &path,
                    &query,
                    limits.max_file_bytes,
                    limits.max_list_entries,
                )?;
                let matches: Vec<Value> = hits
                    .into_iter()
                    .map(|(file, line, text)| json!({"path": file, "line": line, "text": text}))
                    .collect();
                Ok(json!({"query": query, "matches": matches, "truncated": truncated}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_by_path() {
        let args = json!({"path": 3}).as_object().unwrap().clone();
        let err = Builtin::FileRead.parse(&args).unwrap_err();
        assert!(
            matches!(err, ToolError::InvalidArgument { ref field, .. } if field == "arguments.path")
        );
        let args = json!({"path": "a", "bogus": 1})
            .as_object()
            .unwrap()
            .clone();
        assert!(
            matches!(Builtin::FileRead.parse(&args), Err(ToolError::InvalidArgument { field, .. }) if field == "arguments.bogus")
        );
        let args = json!({"path": "a"}).as_object().unwrap().clone();
        assert!(
            matches!(Builtin::FileWrite.parse(&args), Err(ToolError::InvalidArgument { field, .. }) if field == "arguments.content")
        );
    }
}
