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
//!
//! # Layout
//!
//! - this file: [`Workspace`] opened and bounded, the confined open, and
//!   [`sweep`];
//! - `files`: reading, writing, listing and searching files in it;
//! - `tests`: its unit tests.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::ToolError;
use crate::tree::{self, Stamp, Usage};

mod files;

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
mod tests;
