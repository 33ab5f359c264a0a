//! Per-task workspaces and the confinement of file tools to them.
//!
//! A tool path is relative, has no `..`, no NUL and no root or prefix
//! (checked as text first, for a clear error). Every file operation then
//! goes through `openat2` from the workspace's directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the
//! kernel refuses, atomically, any path that would leave the workspace or
//! pass through a symlink — including one swapped in between a check and
//! the open, which a check-then-open design cannot rule out.
//!
//! A workspace is bounded ([`Bounds`]: bytes, entries, workspaces per
//! tenant): `file_write` refuses to go past them, and the shell tool measures
//! the workspace before, during and after each command (see
//! `Tools::shell`). Directories are made 0700 and files 0600 (the tenant's
//! and task directories 0711 and 0700: a sandbox's uid must pass through
//! them to mount its workspace). Opening a workspace stamps its directory's
//! change time; [`sweep`] removes workspaces not opened for longer than the
//! retention.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag};

use crate::ToolError;
use crate::tree::{self, Stamp, Usage};

/// A search hit: file path (relative to the workspace), 1-based line, the line.
pub type Hit = (String, usize, String);

/// Files a search opens at most.
const MAX_SEARCHED_FILES: usize = 10_000;

/// A directory entry: name, whether it is a directory, size in bytes.
pub type Entry = (String, bool, u64);

/// A task's workspace directory.
pub struct Workspace {
    root: PathBuf,
    bounds: Bounds,
}

/// How much a workspace may hold, and how many a tenant may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes (disk use, see [`tree::disk_bytes`]).
    pub max_bytes: u64,
    /// Files, directories and links.
    pub max_files: u64,
    /// Workspaces of one tenant at once.
    pub max_workspaces: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_files: 10_000,
            max_workspaces: 128,
        }
    }
}

impl Bounds {
    /// Why `usage` is over these bounds, if it is.
    pub fn exceeded(&self, usage: &Usage) -> Option<String> {
        if usage.bytes > self.max_bytes {
            Some(format!(
                "holds more than its limit of {} bytes",
                self.max_bytes
            ))
        } else if usage.files > self.max_files {
            Some(format!(
                "holds more than its limit of {} files",
                self.max_files
            ))
        } else if usage.too_deep {
            Some(format!("nests directories deeper than {}", tree::MAX_DEPTH))
        } else {
            None
        }
    }
}

/// A quota error naming the workspace's bounds.
fn over(why: String) -> ToolError {
    ToolError::Quota(format!("the task's workspace {why}"))
}

/// Whether a task id or tenant can name a directory: `[A-Za-z0-9_-]{1,128}`.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Workspace {
    /// The workspace of `task_id` in `tenant` under `base`, created if
    /// absent, with the default bounds.
    pub fn open(base: &Path, tenant: &str, task_id: &str) -> Result<Self, ToolError> {
        Self::open_bounded(base, tenant, task_id, Bounds::default())
    }

    /// The workspace of `task_id` in `tenant` under `base`, created if
    /// absent (unless the tenant has `bounds.max_workspaces` already), and
    /// stamped as used now.
    pub fn open_bounded(
        base: &Path,
        tenant: &str,
        task_id: &str,
        bounds: Bounds,
    ) -> Result<Self, ToolError> {
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
        use std::os::unix::fs::DirBuilderExt;
        let io = |e: std::io::Error| ToolError::Io(format!("cannot create the workspace: {e}"));
        // Base and tenant directories: passable (a sandbox's uid mounts the
        // workspace through them), not listable by others.
        let tenant_dir = base.join(tenant);
        if !tenant_dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&tenant_dir)
                .map_err(io)?;
        }
        let root = tenant_dir.join(task_id);
        if std::fs::symlink_metadata(&root).is_err() {
            let existing = std::fs::read_dir(&tenant_dir)
                .map_err(io)?
                .flatten()
                .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
                .take(bounds.max_workspaces)
                .count();
            if existing >= bounds.max_workspaces {
                return Err(ToolError::Quota(format!(
                    "tenant `{tenant}` has {} task workspaces, its limit (a workspace is \
                     removed once no tool has used it for the retention period)",
                    bounds.max_workspaces
                )));
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        let fd = tree::open_root(&root)
            .map_err(|e| ToolError::Io(format!("cannot open the workspace: {e}")))?;
        // 0700 (workspaces made before this rule included); the stamp of use
        // the sweeper reads is the directory's change time, set here.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700))
            .map_err(|e| ToolError::Io(format!("cannot stamp the workspace: {e}")))?;
        let root = root
            .canonicalize()
            .map_err(|e| ToolError::Io(format!("cannot resolve the workspace: {e}")))?;
        Ok(Self { root, bounds })
    }

    /// Its bounds.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// What it holds (the count stops early once past its bounds).
    pub fn usage(&self) -> Result<Usage, ToolError> {
        let fd = tree::open_root(&self.root)
            .map_err(|e| ToolError::Io(format!("cannot open the workspace: {e}")))?;
        tree::usage(&fd, self.bounds.max_bytes, self.bounds.max_files)
            .map_err(|e| ToolError::Io(format!("cannot measure the workspace: {e}")))
    }

    /// A quota error when it holds more than its bounds.
    pub fn check_bounds(&self) -> Result<Usage, ToolError> {
        let usage = self.usage()?;
        match self.bounds.exceeded(&usage) {
            Some(why) => Err(over(why)),
            None => Ok(usage),
        }
    }

    /// Removes what changed in it at or after `since` (see
    /// [`tree::roll_back`]); returns the entries removed.
    pub fn roll_back(&self, since: Stamp) -> Result<u64, ToolError> {
        let fd = tree::open_root(&self.root)
            .map_err(|e| ToolError::Io(format!("cannot open the workspace: {e}")))?;
        tree::roll_back(&fd, since)
            .map_err(|e| ToolError::Io(format!("cannot roll the workspace back: {e}")))
    }

    /// The workspace's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path as a clean relative path, or why it is refused.
    fn clean(path: &str) -> Result<PathBuf, ToolError> {
        let deny = |why: &str| {
            ToolError::PermissionDenied(format!("path `{}`: {why}", path.escape_debug()))
        };
        if path.contains('\0') {
            return Err(deny("contains a NUL byte"));
        }
        let mut clean = PathBuf::new();
        for component in Path::new(path).components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(deny("`..` is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(deny("absolute paths are not allowed"));
                }
            }
        }
        Ok(clean)
    }

    fn root_fd(&self) -> Result<OwnedFd, ToolError> {
        std::fs::File::open(&self.root)
            .map(OwnedFd::from)
            .map_err(|e| ToolError::Io(format!("cannot open the workspace: {e}")))
    }

    /// Opens `rel` beneath `dir`, refusing symlinks and escapes in the kernel.
    fn open_at(
        dir: impl AsFd,
        rel: &Path,
        flags: OFlag,
        shown: &str,
    ) -> Result<OwnedFd, ToolError> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        // openat2 wants no mode unless it creates.
        let mode = if flags.contains(OFlag::O_CREAT) {
            0o600
        } else {
            0
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        openat2(dir, rel, how).map_err(|e| match e {
            Errno::ELOOP | Errno::EXDEV => ToolError::PermissionDenied(format!(
                "path `{}`: is or passes through a symbolic link, or leaves the workspace",
                shown.escape_debug()
            )),
            Errno::ENOENT => {
                ToolError::NotFound(format!("`{shown}` does not exist in the workspace"))
            }
            Errno::ENOTDIR => ToolError::InvalidArgument {
                field: "arguments.path".into(),
                message: format!("`{shown}` is not a directory"),
            },
            Errno::EISDIR => ToolError::InvalidArgument {
                field: "arguments.path".into(),
                message: format!("`{shown}` is a directory"),
            },
            other => ToolError::Io(format!("`{shown}`: {other}")),
        })
    }

    /// Reads a UTF-8 file of at most `max` bytes.
    pub fn read(&self, path: &str, max: usize) -> Result<String, ToolError> {
        let rel = Self::clean(path)?;
        let fd = Self::open_at(self.root_fd()?, &rel, OFlag::O_RDONLY, path)?;
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| ToolError::Io(e.to_string()))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(ToolError::InvalidArgument {
                field: "arguments.path".into(),
                message: format!("`{path}` is not a regular file"),
            });
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(max as u64 + 1)
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

    /// Writes (or appends) text, creating parent directories, each one
    /// opened beneath the last.
    pub fn write(
        &self,
        path: &str,
        content: &str,
        append: bool,
        max: usize,
    ) -> Result<u64, ToolError> {
        if content.len() > max {
            return Err(ToolError::TooLarge(format!(
                "content is larger than the limit of {max} bytes"
            )));
        }
        let rel = Self::clean(path)?;
        let Some(name) = rel.file_name() else {
            return Err(ToolError::InvalidArgument {
                field: "arguments.path".into(),
                message: "names no file".into(),
            });
        };
        // The workspace's bounds: what it holds now, plus what this adds.
        let usage = self.check_bounds()?;
        let mut created = 0u64;
        let room_for_one = |created: &mut u64| {
            *created += 1;
            if usage.files + *created > self.bounds.max_files {
                Err(over(format!(
                    "would hold more than its limit of {} files",
                    self.bounds.max_files
                )))
            } else {
                Ok(())
            }
        };
        let mut dir = self.root_fd()?;
        for part in rel.parent().into_iter().flat_map(Path::components) {
            let part = Path::new(part.as_os_str());
            dir = match Self::open_at(&dir, part, OFlag::O_RDONLY | OFlag::O_DIRECTORY, path) {
                Ok(fd) => fd,
                Err(ToolError::NotFound(_)) => {
                    room_for_one(&mut created)?;
                    match nix::sys::stat::mkdirat(&dir, part, Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(ToolError::Io(format!("`{path}`: {e}"))),
                    }
                    Self::open_at(&dir, part, OFlag::O_RDONLY | OFlag::O_DIRECTORY, path)?
                }
                Err(e) => return Err(e),
            };
        }
        let mode = if append {
            OFlag::O_APPEND
        } else {
            OFlag::empty()
        };
        let fd = match Self::open_at(&dir, Path::new(name), OFlag::O_WRONLY | mode, path) {
            Ok(fd) => fd,
            Err(ToolError::NotFound(_)) => {
                room_for_one(&mut created)?;
                self.room_for_bytes(&usage, 0, content.len(), path)?;
                Self::open_at(
                    &dir,
                    Path::new(name),
                    OFlag::O_WRONLY | OFlag::O_CREAT | mode,
                    path,
                )?
            }
            Err(e) => return Err(e),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| ToolError::Io(e.to_string()))?;
        if append && stat.st_size as u64 + content.len() as u64 > max as u64 {
            return Err(ToolError::TooLarge(format!(
                "`{path}` would grow past the limit of {max} bytes"
            )));
        }
        // Replacing a file frees what it held; appending keeps it.
        let freed = if append { 0 } else { tree::disk_bytes(&stat) };
        self.room_for_bytes(&usage, freed, content.len(), path)?;
        if !append {
            nix::unistd::ftruncate(&fd, 0).map_err(|e| ToolError::Io(e.to_string()))?;
        }
        std::fs::File::from(fd)
            .write_all(content.as_bytes())
            .map_err(|e| ToolError::Io(e.to_string()))?;
        Ok(content.len() as u64)
    }

    /// A quota error unless `adding` bytes (after `freed`) fit its bounds.
    fn room_for_bytes(
        &self,
        usage: &Usage,
        freed: u64,
        adding: usize,
        path: &str,
    ) -> Result<(), ToolError> {
        if usage.bytes.saturating_sub(freed) + adding as u64 > self.bounds.max_bytes {
            return Err(over(format!(
                "would hold more than its limit of {} bytes ({} now; `{path}` adds {adding})",
                self.bounds.max_bytes, usage.bytes
            )));
        }
        Ok(())
    }

    /// Lists a directory: `(name, is_dir, size)`, sorted, at most `max` entries.
    pub fn list(&self, path: &str, max: usize) -> Result<(Vec<Entry>, bool), ToolError> {
        let rel = Self::clean(path)?;
        let fd = Self::open_at(
            self.root_fd()?,
            &rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            path,
        )?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| ToolError::Io(e.to_string()))?;
        let mut names = Vec::new();
        let mut truncated = false;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| ToolError::Io(e.to_string()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
            if name == "." || name == ".." {
                continue;
            }
            if names.len() == max {
                truncated = true;
                break;
            }
            names.push(name);
        }
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Sizes without following links: a link is listed as itself.
            let stat = nix::sys::stat::fstatat(
                &dir,
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ToolError::Io(e.to_string()))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            entries.push((
                name.to_string_lossy().into_owned(),
                kind == SFlag::S_IFDIR,
                stat.st_size as u64,
            ));
        }
        entries.sort();
        Ok((entries, truncated))
    }

    /// Lines containing `query` (case-insensitive) in the UTF-8 files under
    /// `path`, walked without following symlinks; at most `max_hits`, files
    /// larger than `max_file` skipped.
    pub fn search(
        &self,
        path: &str,
        query: &str,
        max_file: usize,
        max_hits: usize,
    ) -> Result<(Vec<Hit>, bool), ToolError> {
        let rel = Self::clean(path)?;
        let start = Self::open_at(
            self.root_fd()?,
            &rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            path,
        )?;
        let needle = query.to_lowercase();
        let mut hits = Vec::new();
        let mut files = 0usize;
        let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(start, rel)];
        while let Some((fd, at)) = stack.pop() {
            let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| ToolError::Io(e.to_string()))?;
            let mut names = Vec::new();
            for entry in dir.iter() {
                let entry = entry.map_err(|e| ToolError::Io(e.to_string()))?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
            names.sort();
            for name in names {
                let shown = at.join(&name);
                let shown_text = shown.to_string_lossy().into_owned();
                let Ok(child) = Self::open_at(&dir, Path::new(&name), OFlag::O_RDONLY, &shown_text)
                else {
                    continue; // symlinks and the unreadable are skipped
                };
                let stat =
                    nix::sys::stat::fstat(&child).map_err(|e| ToolError::Io(e.to_string()))?;
                let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFDIR {
                    stack.push((child, shown));
                    continue;
                }
                if kind != SFlag::S_IFREG || stat.st_size as usize > max_file {
                    continue;
                }
                files += 1;
                if files > MAX_SEARCHED_FILES {
                    return Ok((hits, true));
                }
                let mut text = String::new();
                if std::fs::File::from(child)
                    .read_to_string(&mut text)
                    .is_err()
                {
                    continue; // not UTF-8
                }
                for (i, line) in text.lines().enumerate() {
                    if line.to_lowercase().contains(&needle) {
                        if hits.len() == max_hits {
                            return Ok((hits, true));
                        }
                        hits.push((shown_text.clone(), i + 1, line.chars().take(500).collect()));
                    }
                }
            }
        }
        Ok((hits, false))
    }
}

/// Removes the workspaces under `base` not opened for longer than
/// `retention` (their directory's change time, stamped at every open, is
/// older), and what an earlier sweep left half-removed; returns how many
/// workspaces went. A workspace is renamed to a hidden name first (task ids
/// cannot start with `.`), so a call arriving meanwhile gets a fresh one.
pub fn sweep(base: &Path, retention: std::time::Duration) -> std::io::Result<usize> {
    let cutoff = Stamp::now().minus(retention);
    let mut swept = 0;
    let tenants = match std::fs::read_dir(base) {
        Ok(tenants) => tenants,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for tenant in tenants.flatten() {
        if !tenant.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = tree::open_root(&tenant.path()).map_err(std::io::Error::from)?;
        for task in std::fs::read_dir(tenant.path())?.flatten() {
            let name = task.file_name();
            let Ok(cname) = std::ffi::CString::new(name.as_bytes()) else {
                continue;
            };
            if name.as_bytes().starts_with(b".") {
                // Left by an interrupted sweep.
                tree::remove_entry(&dir, &cname).map_err(std::io::Error::from)?;
                continue;
            }
            let Ok(stat) = nix::sys::stat::fstatat(
                &dir,
                cname.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            if Stamp::ctime(&stat) >= cutoff {
                continue;
            }
            let hidden = std::ffi::CString::new(format!(
                ".swept-{}-{}",
                name.to_string_lossy(),
                uuid::Uuid::new_v4()
            ))
            .map_err(std::io::Error::other)?;
            match nix::fcntl::renameat(&dir, cname.as_c_str(), &dir, hidden.as_c_str()) {
                Ok(()) => {}
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            }
            tree::remove_entry(&dir, &hidden).map_err(std::io::Error::from)?;
            swept += 1;
        }
    }
    Ok(swept)
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
                matches!(ws.read(bad, 10), Err(ToolError::PermissionDenied(_)))
                    && matches!(
                        ws.write(bad, "x", false, 10),
                        Err(ToolError::PermissionDenied(_))
                    ),
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

    #[test]
    fn a_symlink_swapped_in_mid_operation_never_leads_out() {
        let (dir, ws) = ws();
        let root = dir.path().join("acme/task-1");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), "inside").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::remove_file(root.join("swap"));
                    let _ = std::os::unix::fs::symlink("real", root.join("swap"));
                    let _ = std::fs::remove_file(root.join("swap"));
                    let _ = std::os::unix::fs::symlink("/etc", root.join("swap"));
                }
            })
        };
        let mut denied = 0;
        for _ in 0..2000 {
            match ws.read("swap/passwd", 1 << 20) {
                Ok(text) => assert_eq!(text, "inside", "read through a link"),
                Err(ToolError::PermissionDenied(_)) | Err(ToolError::NotFound(_)) => denied += 1,
                Err(e) => panic!("{e}"),
            }
            // Either refused, or written inside (when `swap` was briefly absent
            // and became a real directory): never through the link.
            let _ = ws.write("swap/x", "y", false, 10);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(denied > 0);
        assert!(!std::path::Path::new("/etc/x").exists());
    }

    #[test]
    fn search_finds_lines_beneath_and_skips_links() {
        let (dir, ws) = ws();
        ws.write("notes/a.md", "Alpha\nthe Needle here\n", false, 100)
            .unwrap();
        ws.write("b.txt", "needle again", false, 100).unwrap();
        std::fs::write(dir.path().join("outside.txt"), "needle outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), ws.root().join("link.txt"))
            .unwrap();
        let (hits, truncated) = ws.search(".", "NEEDLE", 1000, 10).unwrap();
        let mut found: Vec<(String, usize)> =
            hits.iter().map(|(p, l, _)| (p.clone(), *l)).collect();
        found.sort();
        assert_eq!(
            found,
            [("b.txt".to_owned(), 1), ("notes/a.md".to_owned(), 2)]
        );
        assert!(!truncated);
        assert!(matches!(
            ws.search("../", "x", 10, 10),
            Err(ToolError::PermissionDenied(_))
        ));
        let (one, truncated) = ws.search(".", "needle", 1000, 1).unwrap();
        assert_eq!((one.len(), truncated), (1, true));
    }

    #[test]
    fn option_like_paths_are_plain_names_in_the_workspace() {
        let (_dir, ws) = ws();
        for name in ["-rf", "--help", "-"] {
            ws.write(name, "data", false, 100).unwrap();
            assert_eq!(ws.read(name, 100).unwrap(), "data");
        }
        let (entries, _) = ws.list(".", 10).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["-", "--help", "-rf"]);
    }

    fn bounded(max_bytes: u64, max_files: u64) -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_bytes,
            max_files,
            max_workspaces: 2,
        };
        let ws = Workspace::open_bounded(dir.path(), "acme", "task-1", bounds).unwrap();
        (dir, ws)
    }

    #[test]
    fn file_write_past_the_workspace_bounds_fails() {
        let (_dir, ws) = bounded(64 * 1024, 1000);
        let chunk = "x".repeat(20 * 1024);
        for name in ["a", "b", "c"] {
            ws.write(name, &chunk, false, 1 << 20).unwrap();
        }
        match ws.write("d", &chunk, false, 1 << 20) {
            Err(ToolError::Quota(m)) => assert!(m.contains("65536 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ws.write("a", &chunk, true, 1 << 20),
            Err(ToolError::Quota(_))
        ));
        // Refused before anything changed; replacing a file frees its bytes.
        assert!(!ws.root().join("d").exists());
        assert_eq!(ws.read("a", 1 << 20).unwrap().len(), chunk.len());
        ws.write("a", &chunk, false, 1 << 20).unwrap();
        assert!(ws.usage().unwrap().bytes <= 64 * 1024);
    }

    #[test]
    fn file_write_past_the_workspace_file_count_fails() {
        let (_dir, ws) = bounded(1 << 20, 16);
        for i in 0..16 {
            ws.write(&format!("f{i}"), "x", false, 100).unwrap();
        }
        assert!(matches!(
            ws.write("one-more", "x", false, 100),
            Err(ToolError::Quota(_))
        ));
        assert!(matches!(
            ws.write("new/dir/file", "x", false, 100),
            Err(ToolError::Quota(_))
        ));
        // An existing file can still be rewritten.
        ws.write("f0", "y", false, 100).unwrap();
        assert_eq!(ws.usage().unwrap().files, 16);
    }

    #[test]
    fn created_files_are_0600_and_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, ws) = bounded(1 << 20, 100);
        ws.write("notes/deep/a.md", "secret", false, 100).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ws.root().join("notes/deep/a.md")), 0o600);
        assert_eq!(mode(&ws.root().join("notes")), 0o700);
        assert_eq!(mode(&ws.root().join("notes/deep")), 0o700);
        assert_eq!(mode(ws.root()), 0o700);
        // The tenant's directory can be passed through, not listed.
        assert_eq!(mode(&dir.path().join("acme")), 0o711);
    }

    #[test]
    fn a_tenant_has_at_most_its_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_workspaces: 2,
            ..Bounds::default()
        };
        Workspace::open_bounded(dir.path(), "acme", "t1", bounds).unwrap();
        Workspace::open_bounded(dir.path(), "acme", "t2", bounds).unwrap();
        assert!(matches!(
            Workspace::open_bounded(dir.path(), "acme", "t3", bounds),
            Err(ToolError::Quota(_))
        ));
        // Its own are opened again; other tenants are not affected.
        Workspace::open_bounded(dir.path(), "acme", "t1", bounds).unwrap();
        Workspace::open_bounded(dir.path(), "globex", "t1", bounds).unwrap();
    }

    #[test]
    fn the_sweeper_removes_workspaces_untouched_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let old = Workspace::open(dir.path(), "acme", "old").unwrap();
        old.write("a/b/c.txt", "done", false, 100).unwrap();
        let kept = Workspace::open(dir.path(), "acme", "kept").unwrap();
        kept.write("x.txt", "busy", false, 100).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // `kept` is used again (any tool call opens it); `old` is not.
        Workspace::open(dir.path(), "acme", "kept").unwrap();
        let retention = std::time::Duration::from_millis(200);
        assert_eq!(sweep(dir.path(), retention).unwrap(), 1);
        assert!(!dir.path().join("acme/old").exists());
        assert!(dir.path().join("acme/kept/x.txt").exists());
        // Nothing hidden is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["kept"]);
        assert_eq!(sweep(dir.path(), retention).unwrap(), 0);
    }
}
