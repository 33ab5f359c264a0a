//! `amaos-sandbox`: runs one command inside a fresh sandbox, for the tools
//! service. It is a separate, single-threaded program because setting up
//! namespaces needs `fork` without other threads around.
//!
//! `amaos-sandbox '<spec JSON>'` (see [`Spec`]):
//!
//! 1. forks; the child unshares user, mount, pid, ipc, uts and network
//!    namespaces; this process maps the child's uid/gid 0 to the
//!    unprivileged host id `spec.host_id` and 1000 to `host_id + 1` (so
//!    RLIMIT_NPROC binds the command: it counts per host uid, and root is
//!    exempt);
//! 2. the child forks the sandbox's pid 1, which builds a read-only root
//!    (tmpfs with /usr, /bin, /lib… bound read-only, /dev/null and friends,
//!    a private /tmp and /proc, the task workspace at /workspace, read-write,
//!    and `spec.read_only` host paths read-only at their own place — one
//!    under /tmp inside the private /tmp),
//!    pivots into it, sets rlimits, becomes uid 1000 (dropping every
//!    capability), sets no_new_privs, the parent-death signal and a 077
//!    umask, installs the seccomp filters (`fallocate` answers EOPNOTSUPP,
//!    see [`preallocation_filter`]), and execs the command with the given
//!    environment;
//! 3. the exit status is passed through (128 + signal when killed). A setup
//!    failure exits 125 with one line `amaos-sandbox: …` on stderr.
//!
//! The network namespace has only a loopback device (down), so nothing is
//! reachable. Killing this process kills the sandbox: its children have the
//! parent-death signal set to SIGKILL, and pid 1 dying ends the namespace.

// fork is unsafe; this program is single-threaded, which is what makes it sound.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe, read, write};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;

/// The uid and gid the command runs as inside the sandbox.
const INSIDE_ID: u32 = 1000;
/// Exit code of a setup failure.
const SETUP_FAILED: i32 = 125;

/// What to run and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    /// The task workspace, mounted read-write at /workspace.
    workspace: PathBuf,
    /// The unprivileged host uid and gid the sandbox's root maps to; its
    /// uid 1000, which runs the command, maps to `host_id + 1`.
    host_id: u32,
    /// The command and its arguments (the first is an absolute path).
    argv: Vec<String>,
    /// The whole environment of the command.
    env: BTreeMap<String, String>,
    /// CPU seconds.
    cpu_seconds: u64,
    /// Address space, bytes.
    memory_bytes: u64,
    /// Processes of the sandbox's host uid.
    processes: u64,
    /// Largest file written, bytes.
    file_bytes: u64,
    /// Open files.
    open_files: u64,
    /// Host paths (absolute) bound read-only at the same place inside,
    /// e.g. an MCP server's own program; one under /tmp inside the
    /// sandbox's private /tmp. None may be, or be under, another of the
    /// sandbox's own mount points (see [`RESERVED`]).
    #[serde(default)]
    read_only: Vec<PathBuf>,
}

fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("amaos-sandbox: {what}: {error}");
    std::process::exit(SETUP_FAILED)
}

fn main() {
    let Some(text) = std::env::args().nth(1) else {
        fail("usage", "amaos-sandbox '<spec JSON>'")
    };
    let spec: Spec = serde_json::from_str(&text).unwrap_or_else(|e| fail("spec", e));
    if spec.argv.is_empty() {
        fail("spec", "argv is empty");
    }
    // Build the filters before any namespace exists, so a bad one fails early.
    let filter = seccomp_filter().unwrap_or_else(|e| fail("seccomp filter", e));
    let no_preallocation = preallocation_filter().unwrap_or_else(|e| fail("seccomp filter", e));
    let (unshared_r, unshared_w) = pipe().unwrap_or_else(|e| fail("pipe", e));
    let (mapped_r, mapped_w) = pipe().unwrap_or_else(|e| fail("pipe", e));
    // SAFETY: this program has one thread.
    match unsafe { fork() }.unwrap_or_else(|e| fail("fork", e)) {
        ForkResult::Parent { child } => {
            drop(unshared_w);
            drop(mapped_r);
            wait_byte(&unshared_r, "the child's namespaces");
            map_ids(child, spec.host_id);
            signal(&mapped_w);
            std::process::exit(exit_code(child));
        }
        ForkResult::Child => {
            drop(unshared_r);
            drop(mapped_w);
            die_with_parent();
            let flags = CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWNET;
            unshare(flags).unwrap_or_else(|e| fail("unshare (needs user namespaces)", e));
            // What the sandbox binds is opened now: in the new mount
            // namespace (a bind source must be one of its mounts) but still
            // with the caller's own ids. A data directory of mode 0700 (what
            // `mktemp -d` gives) cannot be traversed by the sandbox's ids;
            // a descriptor opened here reaches it through /proc/self/fd.
            let opened = Opened {
                workspace: open_path(&spec.workspace),
                read_only: spec
                    .read_only
                    .iter()
                    .map(|p| (p.clone(), open_path(p)))
                    .collect(),
            };
            signal(&unshared_w);
            wait_byte(&mapped_r, "the id mapping");
            // Become the namespace's root (a mapped id), so files can be made.
            let root_gid = Gid::from_raw(0);
            nix::unistd::setresgid(root_gid, root_gid, root_gid)
                .unwrap_or_else(|e| fail("setresgid 0", e));
            let root_uid = Uid::from_raw(0);
            nix::unistd::setresuid(root_uid, root_uid, root_uid)
                .unwrap_or_else(|e| fail("setresuid 0", e));
            die_with_parent();
            // The next child is pid 1 of the new pid namespace.
            // SAFETY: still one thread.
            match unsafe { fork() }.unwrap_or_else(|e| fail("fork", e)) {
                ForkResult::Parent { child } => std::process::exit(exit_code(child)),
                ForkResult::Child => {
                    die_with_parent();
                    enter(&spec, &opened, &[&no_preallocation, &filter])
                }
            }
        }
    }
}

fn die_with_parent() {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).unwrap_or_else(|e| fail("pdeathsig", e));
}

fn signal(fd: &OwnedFd) {
    write(fd, b"1").unwrap_or_else(|e| fail("pipe write", e));
}

fn wait_byte(fd: &OwnedFd, what: &str) {
    let mut byte = [0u8; 1];
    match read(fd, &mut byte) {
        Ok(1) => {}
        Ok(_) => fail(what, "the other side went away"),
        Err(e) => fail(what, e),
    }
}

fn map_ids(child: Pid, host_id: u32) {
    let proc = PathBuf::from(format!("/proc/{child}"));
    let map = format!("0 {host_id} 1\n{INSIDE_ID} {} 1\n", host_id + 1);
    std::fs::write(proc.join("uid_map"), &map).unwrap_or_else(|e| fail("uid_map", e));
    std::fs::write(proc.join("setgroups"), "deny").unwrap_or_else(|e| fail("setgroups", e));
    std::fs::write(proc.join("gid_map"), &map).unwrap_or_else(|e| fail("gid_map", e));
}

fn exit_code(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => fail("waitpid", e),
        }
    }
}

/// Host directories bound read-only into the sandbox (symlinks are copied).
const READ_ONLY: [&str; 8] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/alternatives",
    "/etc/ld.so.cache",
];
/// Device files bound into /dev.
const DEVICES: [&str; 4] = ["null", "zero", "random", "urandom"];

/// Paths opened before any namespace exists (`O_PATH`, closed on exec).
struct Opened {
    workspace: std::fs::File,
    read_only: Vec<(PathBuf, std::fs::File)>,
}

fn open_path(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    if !path.is_absolute() {
        fail("spec", format!("{} is not absolute", path.display()));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap_or_else(|e| fail(&path.display().to_string(), e))
}

/// The path that reaches `file` whatever the permissions of its ancestors.
fn fd_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Where the new root is built: a fresh tmpfs mounted over `/tmp` of the
/// sandbox's private mount namespace (the host's /tmp is untouched), which
/// every id can reach.
const NEW_ROOT: &str = "/tmp";

fn mkdirs(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| fail(&format!("mkdir {}", path.display()), e));
}

fn bind(source: &Path, target: &Path, read_only: bool) {
    let what = format!("bind {} on {}", source.display(), target.display());
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail(&what, e));
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .unwrap_or_else(|e| fail(&format!("remount {}", target.display()), e));
}

/// Binds the host path `path` (opened as `file`) read-only at the same place
/// under `root`. A path under /tmp lands in the sandbox's private /tmp (so
/// a program in a checkout or build directory there can be run); the
/// sandbox's other mount points cannot be covered or reached into, and
/// `..` is refused (it could climb out of /tmp onto them).
fn bind_read_only(root: &Path, path: &Path, file: &std::fs::File) {
    let climbs = path
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    let reserved = RESERVED.iter().any(|reserved| {
        path == Path::new(reserved)
            || (!["/", "/tmp"].contains(reserved) && path.starts_with(reserved))
    });
    if climbs || reserved {
        fail(
            "read_only",
            format!(
                "{} overlaps one of the sandbox's own mounts",
                path.display()
            ),
        );
    }
    let target = root.join(path.strip_prefix("/").unwrap_or(path));
    let meta = file
        .metadata()
        .unwrap_or_else(|e| fail(&path.display().to_string(), e));
    if meta.is_dir() {
        mkdirs(&target);
    } else {
        if let Some(parent) = target.parent() {
            mkdirs(parent);
        }
        std::fs::write(&target, b"").unwrap_or_else(|e| fail(&path.display().to_string(), e));
    }
    bind(&fd_path(file), &target, true);
}

/// The sandbox's own mount points: a read-only path may be none of them,
/// nor under one, except under /tmp.
const RESERVED: [&str; 6] = ["/", "/workspace", "/proc", "/dev", "/tmp", "/old"];

/// Builds the root, pivots into it and execs the command. Runs as pid 1
/// of the new pid namespace, with every capability in the new user
/// namespace until it drops them.
fn enter(spec: &Spec, opened: &Opened, filters: &[&BpfProgram]) -> ! {
    let root = Path::new(NEW_ROOT);
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail("make / private", e));
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=8m,mode=755"),
    )
    .unwrap_or_else(|e| fail("root tmpfs", e));
    for host in READ_ONLY {
        let source = Path::new(host);
        let target = root.join(host.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(source) else {
            continue;
        };
        if let Some(parent) = target.parent() {
            mkdirs(parent);
        }
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(source).unwrap_or_else(|e| fail(host, e));
            std::os::unix::fs::symlink(link, &target).unwrap_or_else(|e| fail(host, e));
        } else if meta.is_dir() {
            mkdirs(&target);
            bind(source, &target, true);
        } else {
            std::fs::write(&target, b"").unwrap_or_else(|e| fail(host, e));
            bind(source, &target, true);
        }
    }
    // Paths under /tmp are bound once the sandbox's own /tmp exists, inside it.
    let (in_tmp, elsewhere): (Vec<_>, Vec<_>) = opened
        .read_only
        .iter()
        .partition(|(path, _)| path.starts_with("/tmp"));
    for (path, file) in elsewhere {
        bind_read_only(root, path, file);
    }
    let dev = root.join("dev");
    mkdirs(&dev);
    for name in DEVICES {
        let target = dev.join(name);
        std::fs::write(&target, b"").unwrap_or_else(|e| fail("dev", e));
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| fail(&format!("bind /dev/{name}"), e));
    }
    for dir in ["proc", "tmp", "workspace", "old", "etc"] {
        mkdirs(&root.join(dir));
    }
    mount(
        Some("tmpfs"),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64m,mode=1777"),
    )
    .unwrap_or_else(|e| fail("/tmp", e));
    for (path, file) in in_tmp {
        bind_read_only(root, path, file);
    }
    bind(&fd_path(&opened.workspace), &root.join("workspace"), false);
    // Mounting proc in a user namespace needs the host's /proc still
    // visible, so it happens before the old root goes away.
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail("/proc", e));
    nix::unistd::pivot_root(root, &root.join("old")).unwrap_or_else(|e| fail("pivot_root", e));
    nix::unistd::chdir("/").unwrap_or_else(|e| fail("chdir /", e));
    umount2("/old", MntFlags::MNT_DETACH).unwrap_or_else(|e| fail("detach the old root", e));
    std::fs::remove_dir("/old").unwrap_or_else(|e| fail("remove /old", e));
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail("read-only root", e));
    nix::unistd::sethostname("sandbox").unwrap_or_else(|e| fail("hostname", e));
    for (resource, value) in [
        (Resource::RLIMIT_CPU, spec.cpu_seconds),
        (Resource::RLIMIT_AS, spec.memory_bytes),
        (Resource::RLIMIT_NPROC, spec.processes),
        (Resource::RLIMIT_FSIZE, spec.file_bytes),
        (Resource::RLIMIT_NOFILE, spec.open_files),
        (Resource::RLIMIT_CORE, 0),
    ] {
        setrlimit(resource, value, value).unwrap_or_else(|e| fail(&format!("{resource:?}"), e));
    }
    let id = Gid::from_raw(INSIDE_ID);
    nix::unistd::setresgid(id, id, id).unwrap_or_else(|e| fail("setresgid", e));
    let id = Uid::from_raw(INSIDE_ID);
    // Leaving uid 0 clears every capability.
    nix::unistd::setresuid(id, id, id).unwrap_or_else(|e| fail("setresuid", e));
    // A change of credentials clears the parent-death signal: set it again.
    die_with_parent();
    nix::sys::prctl::set_no_new_privs().unwrap_or_else(|e| fail("no_new_privs", e));
    nix::unistd::chdir("/workspace").unwrap_or_else(|e| fail("chdir /workspace", e));
    // What the command creates is its own alone (0600 files, 0700 directories).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_else(|e| fail("argv", e)))
        .collect();
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_else(|e| fail("env", e)))
        .collect();
    for filter in filters {
        seccompiler::apply_filter(filter).unwrap_or_else(|e| fail("seccomp", e));
    }
    let error = nix::unistd::execve(&argv[0], &argv, &env).unwrap_err();
    eprintln!("amaos-sandbox: exec {}: {error}", spec.argv[0]);
    std::process::exit(127)
}

/// `fallocate` fails with EOPNOTSUPP (C libraries then write the bytes
/// instead): preallocation claims disk space at no cost in time, faster
/// than the tools service can measure a workspace, whereas written bytes
/// cost CPU time, bounded by RLIMIT_CPU and seen by the workspace watch.
fn preallocation_filter() -> Result<BpfProgram, seccompiler::BackendError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        BTreeMap::from([(libc::SYS_fallocate, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EOPNOTSUPP as u32),
        TargetArch::x86_64,
    )?;
    filter.try_into()
}

/// Denied with EPERM: tracing, mounts and namespaces, kernel modules and
/// keyrings, BPF, io_uring, perf, reboot/kexec, and sockets other than
/// AF_UNIX. Everything else is allowed (the namespaces, rlimits and the
/// missing capabilities do the rest).
fn seccomp_filter() -> Result<BpfProgram, seccompiler::BackendError> {
    let deny_all = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_bpf,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        deny_all.iter().map(|n| (*n, Vec::new())).collect();
    let not_unix = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        libc::AF_UNIX as u64,
    )?])?;
    rules.insert(libc::SYS_socket, vec![not_unix]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?;
    filter.try_into()
}
