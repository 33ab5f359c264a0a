//! Running commands in the sandbox: the `amaos-sandbox` helper (namespaces,
//! read-only root, rlimits, seccomp, no_new_privs; see its docs) started
//! in its own process group, with a wall-clock timeout that kills the whole
//! group, and stdout/stderr capped with a truncation marker.
//!
//! Each concurrent sandbox gets its own unprivileged host uid from a pool,
//! so the process limit (RLIMIT_NPROC, counted per host uid) bounds one
//! sandbox, not all of them together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::tree::{self, Stamp};

/// Why a sandbox could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The helper could not set the sandbox up (kernel support, privileges).
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
    /// Every sandbox slot is in use.
    #[error("all {0} sandboxes are in use; try again")]
    Busy(usize),
    /// Starting or waiting for the helper failed.
    #[error("sandbox I/O: {0}")]
    Io(String),
}

/// Limits of one sandboxed command.
#[derive(Clone, Debug)]
pub struct Limits {
    /// CPU seconds.
    pub cpu_seconds: u64,
    /// Address space, bytes.
    pub memory_bytes: u64,
    /// Processes.
    pub processes: u64,
    /// Largest file written, bytes.
    pub file_bytes: u64,
    /// Open files.
    pub open_files: u64,
    /// Bytes kept of stdout and of stderr each.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_seconds: 10,
            memory_bytes: 512 * 1024 * 1024,
            processes: 64,
            file_bytes: 16 * 1024 * 1024,
            open_files: 256,
            output_bytes: 64 * 1024,
        }
    }
}

/// How a sandboxed command ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// The exit code (128 + signal when killed by one); -1 when timed out.
    pub exit_code: i32,
    /// Its standard output, capped.
    pub stdout: String,
    /// Its standard error, capped.
    pub stderr: String,
    /// Whether output was cut at the cap.
    pub truncated: bool,
    /// Whether the wall-clock timeout killed it.
    pub timed_out: bool,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Why the watch stopped it, when it did (not part of the tool's result).
    #[serde(skip)]
    pub stopped: Option<String>,
    /// A stamp no later than any change the command made to its workspace
    /// and later than the sandbox's own preparation of it.
    #[serde(skip)]
    pub since: Stamp,
}

/// Checked every [`WATCH_INTERVAL`] while a command runs: a reason to stop
/// it (killing the sandbox), or `None` to let it go on.
pub type Watch = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How often a [`Watch`] is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Runs commands in sandboxes.
pub struct Sandbox {
    helper: PathBuf,
    uid_base: u32,
    slots: Arc<Mutex<Vec<bool>>>,
    limits: Limits,
}

/// The exit code of the helper when setup failed.
const SETUP_FAILED: i32 = 125;
/// The exit code of the helper when the command could not be executed.
const EXEC_FAILED: i32 = 127;

/// The sandbox's own mount points: a read-only path may be none of them
/// nor lie under one, except under /tmp (bound inside the sandbox's private
/// /tmp). The helper enforces the same rule when it builds the sandbox.
const OWN_MOUNTS: [&str; 6] = ["/", "/workspace", "/proc", "/dev", "/tmp", "/old"];

/// Why a sandbox cannot show the host path `path` read-only at its own
/// place, if it cannot: it is relative, climbs with `..`, is (or is under)
/// one of the sandbox's own mount points, or does not exist.
pub fn unshowable(path: &Path) -> Option<String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Some(format!("{shown} is not an absolute path"));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Some(format!("{shown} has a `..` component"));
    }
    if let Some(own) = OWN_MOUNTS.iter().find(|own| {
        path == Path::new(own) || (!["/", "/tmp"].contains(own) && path.starts_with(own))
    }) {
        return Some(format!(
            "{shown} is, or is under, {own}, one of the sandbox's own mount points"
        ));
    }
    if let Err(e) = std::fs::metadata(path) {
        return Some(match e.kind() {
            std::io::ErrorKind::NotFound => format!("{shown} does not exist"),
            _ => format!("{shown}: {e}"),
        });
    }
    None
}

/// The environment every sandboxed command gets, and nothing else.
fn environment() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), "/workspace".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
        ("TMPDIR".into(), "/tmp".into()),
    ])
}

/// A slot (a pair of host uids) held for one sandbox; frees itself.
struct Slot {
    slots: Arc<Mutex<Vec<bool>>>,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[self.index] = false;
    }
}

/// A long-running sandboxed process (an MCP server over stdio): its stdin
/// and stdout are piped; dropping it kills the sandbox.
pub struct SandboxProcess {
    /// The helper's process (stdin and stdout taken by the caller).
    pub child: tokio::process::Child,
    /// Drains stderr to its end; gives the helper's own line, if the first
    /// line was one.
    stderr: Option<tokio::task::JoinHandle<Option<String>>>,
    _slot: Slot,
}

/// Longest helper line kept from a sandboxed process's stderr.
const HELPER_LINE_BYTES: usize = 512;

/// Reads `from` to its end, keeping nothing but its first line when that
/// is the helper's (`amaos-sandbox: …`): what the process itself writes
/// there is never kept.
async fn helper_line(mut from: impl AsyncRead + Unpin) -> Option<String> {
    let mut first = Vec::new();
    let mut buf = [0u8; 8192];
    let mut line_done = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !line_done {
            let chunk = &buf[..n];
            let end = chunk.iter().position(|&b| b == b'\n');
            let take = end.unwrap_or(chunk.len());
            let room = HELPER_LINE_BYTES.saturating_sub(first.len());
            first.extend_from_slice(&chunk[..take.min(room)]);
            line_done = end.is_some() || first.len() >= HELPER_LINE_BYTES;
        }
    }
    let line = String::from_utf8_lossy(&first).into_owned();
    line.starts_with("amaos-sandbox:").then_some(line)
}

impl SandboxProcess {
    /// Why the sandbox ended before its command could serve, when the
    /// helper said so: its `amaos-sandbox: …` line when it exited as a
    /// setup failure (125) or could not exec the command (127) within
    /// `limit`. `None` when it still runs or ended otherwise.
    pub async fn failure(&mut self, limit: Duration) -> Option<String> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()?
            .ok()?;
        if !matches!(status.code(), Some(SETUP_FAILED | EXEC_FAILED)) {
            return None;
        }
        let reader = self.stderr.take()?;
        tokio::time::timeout(limit, reader).await.ok()?.ok()?
    }
}

async fn read_capped(
    mut from: impl AsyncRead + Unpin,
    cap: usize,
) -> std::io::Result<(Vec<u8>, u64)> {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, dropped));
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        dropped += (n - n.min(room)) as u64;
    }
}

fn text(bytes: Vec<u8>, dropped: u64) -> String {
    let mut s = String::from_utf8_lossy(&bytes).into_owned();
    if dropped > 0 {
        s.push_str(&format!("\n[output truncated: {dropped} more bytes]"));
    }
    s
}

impl Sandbox {
    /// Sandboxes run by `helper` (which builds each root on a tmpfs of its
    /// own mount namespace), with host
    /// uids `uid_base .. uid_base + 2 * slots` (two per sandbox).
    pub fn new(helper: PathBuf, uid_base: u32, slots: usize, limits: Limits) -> Self {
        Self {
            helper,
            uid_base,
            slots: Arc::new(Mutex::new(vec![false; slots.max(1)])),
            limits,
        }
    }

    /// Where the helper is: next to this program, or one directory up (test
    /// binaries live in `target/<profile>/deps`).
    pub fn find_helper() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        [
            dir.join("amaos-sandbox"),
            dir.parent()?.join("amaos-sandbox"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    }

    fn take_slot(&self) -> Result<Slot, SandboxError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let index = slots
            .iter()
            .position(|busy| !busy)
            .ok_or(SandboxError::Busy(slots.len()))?;
        slots[index] = true;
        Ok(Slot {
            slots: self.slots.clone(),
            index,
        })
    }

    /// Runs `/bin/true` in a sandbox: fails when the kernel or this
    /// process's privileges cannot make one.
    pub async fn probe(&self, scratch: &Path) -> Result<(), SandboxError> {
        std::fs::create_dir_all(scratch).map_err(|e| SandboxError::Io(e.to_string()))?;
        let outcome = self
            .run(scratch, &["/bin/true".to_owned()], Duration::from_secs(20))
            .await?;
        if outcome.exit_code != 0 {
            return Err(SandboxError::Setup(format!(
                "`true` exited with {}: {}",
                outcome.exit_code,
                outcome.stderr.trim()
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn spec(
        &self,
        workspace: &Path,
        host_id: u32,
        argv: &[String],
        read_only: &[PathBuf],
        extra_env: &BTreeMap<String, String>,
        cpu_seconds: u64,
    ) -> serde_json::Value {
        let l = &self.limits;
        let mut env = environment();
        env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        serde_json::json!({
            "workspace": workspace,
            "host_id": host_id,
            "argv": argv,
            "env": env,
            "cpu_seconds": cpu_seconds,
            "memory_bytes": l.memory_bytes,
            "processes": l.processes,
            "file_bytes": l.file_bytes,
            "open_files": l.open_files,
            "read_only": read_only,
        })
    }

    /// Starts `argv` in a sandbox that lives until the returned process is
    /// dropped (killed): `workdir` at /workspace, `read_only` host paths visible
    /// at their own place (see [`unshowable`]), `extra_env` added to its
    /// environment (secrets for it), `cpu_seconds` of CPU in all. Its stderr
    /// is discarded, but for the helper's own line ([`SandboxProcess::failure`]). Unless
    /// `writable`, `workdir` stays owned by this process: the sandbox can
    /// read it but not write to it.
    pub fn spawn(
        &self,
        workdir: &Path,
        argv: &[String],
        read_only: &[PathBuf],
        extra_env: &BTreeMap<String, String>,
        cpu_seconds: u64,
        writable: bool,
    ) -> Result<SandboxProcess, SandboxError> {
        let slot = self.take_slot()?;
        let host_id = self.uid_base + 2 * slot.index as u32;
        std::fs::create_dir_all(workdir)
            .map_err(|e| SandboxError::Io(format!("{}: {e}", workdir.display())))?;
        if writable {
            give_to(workdir, host_id + 1)
                .map_err(|e| SandboxError::Io(format!("{}: {e}", workdir.display())))?;
        }
        let spec = self.spec(workdir, host_id, argv, read_only, extra_env, cpu_seconds);
        let mut child = tokio::process::Command::new(&self.helper)
            .arg(spec.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Io(format!("starting {}: {e}", self.helper.display())))?;
        let stderr = child.stderr.take().map(|e| tokio::spawn(helper_line(e)));
        Ok(SandboxProcess {
            child,
            stderr,
            _slot: slot,
        })
    }

    /// Runs `argv` in a fresh sandbox with `workspace` at /workspace, killing it
    /// (its whole process group and pid namespace) after `wall`.
    pub async fn run(
        &self,
        workspace: &Path,
        argv: &[String],
        wall: Duration,
    ) -> Result<Outcome, SandboxError> {
        self.run_watched(workspace, argv, wall, None).await
    }

    /// [`Sandbox::run`], also checking `watch` every [`WATCH_INTERVAL`] and
    /// killing the sandbox when it names a reason (then in
    /// [`Outcome::stopped`]). A killed sandbox's processes are waited for
    /// (up to two seconds) before this returns, so nothing of it still
    /// writes.
    pub async fn run_watched(
        &self,
        workspace: &Path,
        argv: &[String],
        wall: Duration,
        watch: Option<Watch>,
    ) -> Result<Outcome, SandboxError> {
        let slot = self.take_slot()?;
        // Two host ids per slot: the sandbox's root, and the user running the command.
        let host_id = self.uid_base + 2 * slot.index as u32;
        give_to(workspace, host_id + 1)
            .map_err(|e| SandboxError::Io(format!("{}: {e}", workspace.display())))?;
        let spec = self.spec(
            workspace,
            host_id,
            argv,
            &[],
            &BTreeMap::new(),
            self.limits.cpu_seconds,
        );
        // After the hand-over (which changes the entries' change times).
        let since = Stamp::next_tick().await;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&self.helper)
            .arg(spec.to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Io(format!("starting {}: {e}", self.helper.display())))?;
        let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SandboxError::Io("no stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| SandboxError::Io("no stderr".into()))?;
        let cap = self.limits.output_bytes;
        let out = tokio::spawn(read_capped(stdout, cap));
        let err = tokio::spawn(read_capped(stderr, cap));
        let deadline = tokio::time::Instant::now() + wall;
        let mut stopped = None;
        let (status, timed_out) = loop {
            let until = match &watch {
                Some(_) => deadline.min(tokio::time::Instant::now() + WATCH_INTERVAL),
                None => deadline,
            };
            if let Ok(status) = tokio::time::timeout_at(until, child.wait()).await {
                break (status.map_err(|e| SandboxError::Io(e.to_string()))?, false);
            }
            let timed_out = tokio::time::Instant::now() >= deadline;
            if !timed_out {
                let Some(watch) = watch.clone() else { continue };
                match tokio::task::spawn_blocking(move || watch()).await {
                    Ok(Some(reason)) => stopped = Some(reason),
                    Ok(None) => continue,
                    Err(e) => stopped = Some(format!("the watch failed: {e}")),
                }
            }
            if let Some(pgid) = pgid {
                // The helper's group; its children die with it (parent-death signal).
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            let status = child
                .wait()
                .await
                .map_err(|e| SandboxError::Io(e.to_string()))?;
            // The sandbox's pid 1 and its children die after the helper:
            // wait for them, so nothing writes to the workspace any more.
            wait_gone(&[host_id, host_id + 1], Duration::from_secs(2)).await;
            break (status, timed_out);
        };
        let join = |r: Result<std::io::Result<(Vec<u8>, u64)>, tokio::task::JoinError>| {
            r.map_err(|e| SandboxError::Io(e.to_string()))?
                .map_err(|e| SandboxError::Io(e.to_string()))
        };
        let (out, out_dropped) = join(out.await)?;
        let (err, err_dropped) = join(err.await)?;
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let stderr = text(err, err_dropped);
        if code == SETUP_FAILED && !timed_out && stderr.starts_with("amaos-sandbox:") {
            return Err(SandboxError::Setup(stderr.trim().to_owned()));
        }
        drop(slot);
        Ok(Outcome {
            exit_code: if timed_out { -1 } else { code },
            stdout: text(out, out_dropped),
            stderr,
            truncated: out_dropped + err_dropped > 0,
            timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
            stopped,
            since,
        })
    }
}

/// Waits (at most `limit`) until no process runs as one of `uids`.
async fn wait_gone(uids: &[u32], limit: Duration) {
    let running = |uids: &[u32]| -> bool {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return false;
        };
        procs.flatten().any(|p| {
            std::fs::read_to_string(p.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|u| u.parse::<u32>().ok())
                    .is_some_and(|u| uids.contains(&u))
            })
        })
    };
    let until = Instant::now() + limit;
    while running(uids) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes `dir` and everything in it owned by `id`, so the sandbox's user can
/// write there (0700 stays 0700: only that user, and this process); the
/// walk is relative to open directories and never follows a link, even one
/// swapped in by another sandbox meanwhile.
fn give_to(dir: &Path, id: u32) -> std::io::Result<()> {
    let root = tree::open_root(dir)?;
    nix::unistd::fchown(
        &root,
        Some(nix::unistd::Uid::from_raw(id)),
        Some(nix::unistd::Gid::from_raw(id)),
    )?;
    tree::chown_tree(&root, id)?;
    Ok(())
}

/// A shared sandbox.
pub type SharedSandbox = Arc<Sandbox>;
