//! The file operations of a workspace (`file_read`, `file_write`,
//! `file_list`, `file_search`), each through [`Workspace`]'s confined open.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use super::{Entry, Hit, MAX_SEARCHED_FILES, Workspace, over};
use crate::ToolError;
use crate::tree::{self, Usage};

impl Workspace {
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
