//! Per-task workspaces and the confinement of file tools to them.
//!
//! A tool path is relative, has no `..`, no NUL and no root or prefix; after
//! resolution its deepest existing ancestor must canonicalize inside the
//! workspace, and the final component must not be a symlink. This refuses
//! `../`, absolute paths and symlinks planted to point outside. (A symlink
//! swapped in between the check and the open is closed by the sandbox work,
//! which opens relative to a directory descriptor.)

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::ToolError;

/// A directory entry: name, whether it is a directory, size in bytes.
pub type Entry = (String, bool, u64);

/// A task's workspace directory.
pub struct Workspace {
    root: PathBuf,
}

/// Whether a task id or tenant can name a directory: `[A-Za-z0-9_-]{1,128}`.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Workspace {
    /// The workspace of `task_id` in `tenant` under `base`, created if absent.
    pub fn open(base: &Path, tenant: &str, task_id: &str) -> Result<Self, ToolError> {
        if !safe_segment(task_id) {
            return Err(ToolError::InvalidArgument {
                field: "task_id".into(),
                message: "must be 1 to 128 of A-Z, a-z, 0-9, `-` and `_`".into(),
            });
        }
        if !safe_segment(tenant) {
            return Err(ToolError::PermissionDenied(
                "the caller's tenant cannot name a workspace".into(),
            ));
        }
        let root = base.join(tenant).join(task_id);
        std::fs::create_dir_all(&root)
            .map_err(|e| ToolError::Io(format!("cannot create the workspace: {e}")))?;
        let root = root
            .canonicalize()
            .map_err(|e| ToolError::Io(format!("cannot resolve the workspace: {e}")))?;
        Ok(Self { root })
    }

    /// The workspace's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a tool path to a location inside the workspace.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ToolError> {
        let deny = |why: &str| {
            ToolError::PermissionDenied(format!("path `{}`: {why}", path.escape_debug()))
        };
        if path.contains('\0') {
            return Err(deny("contains a NUL byte"));
        }
        let relative = Path::new(path);
        let mut clean = PathBuf::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(deny("`..` is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(deny("absolute paths are not allowed"));
                }
            }
        }
        let full = self.root.join(&clean);
        // The deepest ancestor that exists must resolve inside the workspace.
        let mut existing = full.as_path();
        while !existing.exists() {
            existing = existing
                .parent()
                .ok_or_else(|| deny("outside the workspace"))?;
        }
        let real = existing
            .canonicalize()
            .map_err(|_| deny("cannot be resolved"))?;
        if !real.starts_with(&self.root) {
            return Err(deny("resolves outside the workspace"));
        }
        if let Ok(meta) = std::fs::symlink_metadata(&full)
            && meta.file_type().is_symlink()
        {
            return Err(deny("is a symbolic link"));
        }
        Ok(full)
    }

    /// Reads a UTF-8 file of at most `max` bytes.
    pub fn read(&self, path: &str, max: usize) -> Result<String, ToolError> {
        let full = self.resolve(path)?;
        let file = std::fs::File::open(&full).map_err(|e| not_found_or_io(path, e))?;
        let mut bytes = Vec::new();
        file.take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ToolError::Io(e.to_string()))?;
        if bytes.len() > max {
            return Err(ToolError::TooLarge(format!(
                "`{path}` is larger than the limit of {max} bytes"
            )));
        }
        String::from_utf8(bytes).map_err(|_| ToolError::InvalidArgument {
            field: "arguments.path".into(),
            message: format!("`{path}` is not UTF-8 text"),
        })
    }

    /// Writes (or appends) text, creating parent directories.
    pub fn write(
        &self,
        path: &str,
        content: &str,
        append: bool,
        max: usize,
    ) -> Result<u64, ToolError> {
        use std::io::Write;
        if content.len() > max {
            return Err(ToolError::TooLarge(format!(
                "content is larger than the limit of {max} bytes"
            )));
        }
        let full = self.resolve(path)?;
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ToolError::Io(e.to_string()))?;
        }
        // Re-check now that the parents exist.
        let full = self.resolve(path)?;
        if append
            && std::fs::metadata(&full).map(|m| m.len()).unwrap_or(0) + content.len() as u64
                > max as u64
        {
            return Err(ToolError::TooLarge(format!(
                "`{path}` would grow past the limit of {max} bytes"
            )));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&full)
            .map_err(|e| ToolError::Io(e.to_string()))?;
        file.write_all(content.as_bytes())
            .map_err(|e| ToolError::Io(e.to_string()))?;
        Ok(content.len() as u64)
    }

    /// Lists a directory: `(name, is_dir, size)`, sorted, at most `max` entries.
    pub fn list(&self, path: &str, max: usize) -> Result<(Vec<Entry>, bool), ToolError> {
        let full = self.resolve(path)?;
        let reader = std::fs::read_dir(&full).map_err(|e| not_found_or_io(path, e))?;
        let mut entries = Vec::new();
        let mut truncated = false;
        for entry in reader {
            let entry = entry.map_err(|e| ToolError::Io(e.to_string()))?;
            if entries.len() == max {
                truncated = true;
                break;
            }
            let meta = entry.metadata().map_err(|e| ToolError::Io(e.to_string()))?;
            entries.push((
                entry.file_name().to_string_lossy().into_owned(),
                meta.is_dir(),
                meta.len(),
            ));
        }
        entries.sort();
        Ok((entries, truncated))
    }
}

fn not_found_or_io(path: &str, e: std::io::Error) -> ToolError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ToolError::NotFound(format!("`{path}` does not exist in the workspace"))
    } else {
        ToolError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "acme", "task-1").unwrap();
        (dir, ws)
    }

    #[test]
    fn files_round_trip_inside_the_workspace() {
        let (_dir, ws) = ws();
        ws.write("notes/a.md", "hello", false, 100).unwrap();
        ws.write("notes/a.md", " world", true, 100).unwrap();
        assert_eq!(ws.read("notes/a.md", 100).unwrap(), "hello world");
        let (entries, truncated) = ws.list(".", 10).unwrap();
        assert_eq!(entries, vec![("notes".to_owned(), true, entries[0].2)]);
        assert!(!truncated);
    }

    #[test]
    fn escapes_are_denied() {
        let (dir, ws) = ws();
        for bad in ["../x", "/etc/passwd", "a/../../x", "a\0b"] {
            assert!(
                matches!(ws.resolve(bad), Err(ToolError::PermissionDenied(_))),
                "{bad}"
            );
        }
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.root().join("link")).unwrap();
        assert!(matches!(
            ws.read("link", 100),
            Err(ToolError::PermissionDenied(_))
        ));
        std::os::unix::fs::symlink(dir.path(), ws.root().join("dirlink")).unwrap();
        assert!(matches!(
            ws.read("dirlink/secret", 100),
            Err(ToolError::PermissionDenied(_))
        ));
    }

    #[test]
    fn sizes_are_capped() {
        let (_dir, ws) = ws();
        assert!(matches!(
            ws.write("a", "123456", false, 5),
            Err(ToolError::TooLarge(_))
        ));
        ws.write("a", "12345", false, 5).unwrap();
        assert_eq!(ws.read("a", 5).unwrap(), "12345");
        assert!(matches!(ws.read("a", 4), Err(ToolError::TooLarge(_))));
    }

    #[test]
    fn unsafe_task_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Workspace::open(dir.path(), "acme", "../x").is_err());
    }
}
