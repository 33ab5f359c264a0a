//! Walking a workspace's tree safely while sandboxes may be changing it:
//! every step is relative to an open directory (`openat` with `O_NOFOLLOW`,
//! `fstatat`/`fchownat`/`unlinkat` that never follow links), so a directory
//! swapped for a symbolic link mid-walk leads nowhere outside. Used to
//! measure a workspace against its bounds, hand it to a sandbox's uid, roll
//! back what a command wrote past the bounds, and remove whole workspaces.
//!
//! Walks hold one descriptor per level and go at most [`MAX_DEPTH`] levels
//! down; removal lifts deeper directories up first, so any tree can be
//! removed with a bounded number of descriptors.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Deepest a walk descends (a workspace nested deeper is over its bounds).
pub const MAX_DEPTH: usize = 64;

/// A point in the filesystem's time (as inode change times are stamped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

impl Stamp {
    /// The change time of `stat`.
    pub fn ctime(stat: &FileStat) -> Self {
        Self {
            sec: stat.st_ctime,
            nsec: stat.st_ctime_nsec,
        }
    }

    /// The clock inode times are stamped from (coarse real time).
    pub fn now() -> Self {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
            Ok(t) => Self {
                sec: t.tv_sec(),
                nsec: t.tv_nsec(),
            },
            Err(_) => {
                let d = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Self {
                    sec: d.as_secs() as i64,
                    nsec: d.subsec_nanos() as i64,
                }
            }
        }
    }

    /// The first tick of the coarse clock after now: every change made
    /// before this call is stamped earlier than it, every change made after
    /// it at it or later (waits at most a few milliseconds).
    pub async fn next_tick() -> Self {
        let now = Self::now();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let later = Self::now();
            if later > now {
                return later;
            }
        }
        Self::now()
    }

    /// This stamp moved back by `by`.
    pub fn minus(self, by: std::time::Duration) -> Self {
        let total = self.sec as i128 * 1_000_000_000 + self.nsec as i128 - by.as_nanos() as i128;
        Self {
            sec: total.div_euclid(1_000_000_000) as i64,
            nsec: total.rem_euclid(1_000_000_000) as i64,
        }
    }
}

/// What a tree holds: bytes (disk use) and entries (files, directories, links…).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes: per entry the larger of its size and its allocated blocks.
    pub bytes: u64,
    /// Entries beneath the root.
    pub files: u64,
    /// Whether something is nested deeper than [`MAX_DEPTH`].
    pub too_deep: bool,
}

/// The bytes an entry counts for.
pub fn disk_bytes(stat: &FileStat) -> u64 {
    (stat.st_size.max(0) as u64).max(stat.st_blocks.max(0) as u64 * 512)
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Opens the directory `name` beneath `dir`, never through a link.
fn open_dir(dir: impl AsFd, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a tree's root (a real directory, not a link).
pub fn open_root(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names in `dir` (without `.` and `..`).
fn names(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone().map_err(|_| Errno::EMFILE)?)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Whether to go on.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Calls `visit(dir, name, stat, depth)` for every entry beneath `dir`,
/// parents before their contents; stops when it returns [`Flow::Stop`].
/// Directories at [`MAX_DEPTH`] are visited but not entered (`on_deep`).
fn walk(
    dir: &OwnedFd,
    depth: usize,
    visit: &mut dyn FnMut(BorrowedFd<'_>, &CStr, &FileStat, usize) -> nix::Result<Flow>,
    on_deep: &mut dyn FnMut(),
) -> nix::Result<Flow> {
    for name in names(dir)? {
        let stat = match nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        if visit(dir.as_fd(), &name, &stat, depth)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        if is_dir(&stat) {
            if depth + 1 >= MAX_DEPTH {
                on_deep();
                continue;
            }
            let child = match open_dir(dir, &name) {
                Ok(child) => child,
                // Swapped for a link or removed meanwhile: not followed.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            if walk(&child, depth + 1, visit, on_deep)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
    }
    Ok(Flow::Go)
}

/// What the tree under `root` holds; the walk stops early once it is over
/// `max_bytes` or `max_files` (the usage then says so).
pub fn usage(root: &OwnedFd, max_bytes: u64, max_files: u64) -> nix::Result<Usage> {
    let mut usage = Usage::default();
    let mut deep = false;
    walk(
        root,
        0,
        &mut |_, _, stat, _| {
            usage.bytes = usage.bytes.saturating_add(disk_bytes(stat));
            usage.files += 1;
            Ok(if usage.bytes > max_bytes || usage.files > max_files {
                Flow::Stop
            } else {
                Flow::Go
            })
        },
        &mut || deep = true,
    )?;
    usage.too_deep = deep;
    Ok(usage)
}

/// Makes everything beneath `root` owned by `id` (uid and gid); entries
/// already owned by it are left alone; links are changed themselves.
pub fn chown_tree(root: &OwnedFd, id: u32) -> nix::Result<()> {
    let owner = Some(nix::unistd::Uid::from_raw(id));
    let group = Some(nix::unistd::Gid::from_raw(id));
    walk(
        root,
        0,
        &mut |dir, name, stat, _| {
            if stat.st_uid != id || stat.st_gid != id {
                match nix::unistd::fchownat(dir, name, owner, group, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Flow::Go)
        },
        &mut || {},
    )?;
    Ok(())
}

/// Removes what changed beneath `root` at or after `since`: every file,
/// link or other non-directory whose inode changed, then every directory
/// that changed and is left empty (a directory too deep to walk that
/// changed goes whole). What had not changed stays. Returns the entries
/// removed.
pub fn roll_back(root: &OwnedFd, since: Stamp) -> nix::Result<u64> {
    fn pass(dir: &OwnedFd, depth: usize, since: Stamp, removed: &mut u64) -> nix::Result<()> {
        for name in names(dir)? {
            let stat =
                match nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
            let changed = Stamp::ctime(&stat) >= since;
            if !is_dir(&stat) {
                if changed {
                    match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                        Ok(()) => *removed += 1,
                        Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            if depth + 1 >= MAX_DEPTH {
                if changed {
                    *removed += remove_entry(dir, &name)?;
                }
                continue;
            }
            match open_dir(dir, &name) {
                Ok(child) => pass(&child, depth + 1, since, removed)?,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            }
            // The directory's own change time moved when entries went; it
            // goes when it changed during the run and nothing is left in it.
            if changed {
                match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) => *removed += 1,
                    Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
    let mut removed = 0;
    pass(root, 0, since, &mut removed)?;
    Ok(removed)
}

/// Removes `name` beneath `dir` and everything in it; returns the entries
/// removed. Directories deeper than [`MAX_DEPTH`] below it are first moved
/// up into `dir` (under hidden names) and removed from there.
pub fn remove_entry(dir: &OwnedFd, name: &CStr) -> nix::Result<u64> {
    let mut removed = 0u64;
    let mut pending: Vec<CString> = vec![name.to_owned()];
    let mut lifted = 0u64;
    while let Some(name) = pending.pop() {
        match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => {
                removed += 1;
                continue;
            }
            Err(Errno::ENOENT) => continue,
            Err(Errno::EISDIR) => {}
            Err(e) => return Err(e),
        }
        let child = match open_dir(dir, &name) {
            Ok(child) => child,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        clear(&child, 0, dir, &mut pending, &mut lifted, &mut removed)?;
        match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => removed += 1,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Empties `dir`; directories at [`MAX_DEPTH`] are renamed into `top` and
/// queued on `pending` instead of entered.
fn clear(
    dir: &OwnedFd,
    depth: usize,
    top: &OwnedFd,
    pending: &mut Vec<CString>,
    lifted: &mut u64,
    removed: &mut u64,
) -> nix::Result<()> {
    // Entries may be added while this runs only by a live sandbox; a few
    // passes then give up rather than loop.
    for _ in 0..3 {
        let names = names(dir)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    *removed += 1;
                    continue;
                }
                Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR) => {}
                Err(e) => return Err(e),
            }
            if depth + 1 >= MAX_DEPTH {
                *lifted += 1;
                let hidden = CString::new(format!(".lifted-{}-{lifted}", uuid::Uuid::new_v4()))
                    .map_err(|_| Errno::EINVAL)?;
                nix::fcntl::renameat(dir, name.as_c_str(), top, hidden.as_c_str())?;
                pending.push(hidden);
                continue;
            }
            match open_dir(dir, &name) {
                Ok(child) => clear(&child, depth + 1, top, pending, lifted, removed)?,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            }
            match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) => *removed += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_the_walk_is_still_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().join("deep");
        for _ in 0..(MAX_DEPTH * 3) {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("f"), "x").unwrap();
        let root = open_root(dir.path()).unwrap();
        let u = usage(&root, u64::MAX, u64::MAX).unwrap();
        assert!(u.too_deep);
        let removed = remove_entry(&root, c"deep").unwrap();
        assert_eq!(removed, (MAX_DEPTH * 3 + 2) as u64);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert_eq!(usage(&root, u64::MAX, u64::MAX).unwrap().files, 1);
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(outside.path().join("keep"))
            .unwrap()
            .uid();
        chown_tree(&root, 4_000_001).unwrap();
        assert_eq!(
            std::fs::metadata(outside.path().join("keep"))
                .unwrap()
                .uid(),
            owner,
            "changed the owner through a link"
        );
        roll_back(&root, Stamp::default()).unwrap();
        assert!(outside.path().join("keep").exists());
        assert!(!dir.path().join("link").exists());
    }
}
