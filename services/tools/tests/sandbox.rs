//! The sandbox against adversarial commands, each contained with its
//! documented outcome while later sandboxes keep working: the view of the
//! filesystem, identity and environment; escapes through symlinks; network
//! access; a fork bomb, a memory bomb, a CPU loop, an output flood and a
//! command that never ends.
//!
//! Needs what the tools service needs: user, mount and pid namespaces and
//! root (to map the sandbox to an unprivileged host uid).

use std::path::Path;
use std::time::Duration;

use amaos_tools::sandbox::{Limits, Outcome, Sandbox};

/// A sandbox with its own uid range (tests run in parallel) and its workspace.
fn sandbox(uid_base: u32, limits: Limits) -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        uid_base,
        2,
        limits,
    );
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    (sandbox, dir)
}

async fn sh(sandbox: &Sandbox, dir: &Path, command: &str, wall: u64) -> Outcome {
    sandbox
        .run(
            &dir.join("work"),
            &["/bin/sh".into(), "-c".into(), command.into()],
            Duration::from_secs(wall),
        )
        .await
        .unwrap()
}

fn small() -> Limits {
    Limits {
        cpu_seconds: 2,
        memory_bytes: 256 * 1024 * 1024,
        processes: 32,
        output_bytes: 4096,
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_command_sees_only_the_sandbox() {
    let (sandbox, dir) = sandbox(310_000, small());
    let out = sh(
        &sandbox,
        dir.path(),
        "id -u; pwd; hostname; echo written > out.txt; env | sort; ls /",
        20,
    )
    .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..3], ["1000", "/workspace", "sandbox"], "{out:?}");
    assert!(out.stdout.contains("HOME=/workspace"));
    assert!(
        !out.stdout.contains("CARGO"),
        "the environment is scrubbed: {out:?}"
    );
    assert!(!out.stdout.contains("\nroot\n"), "{out:?}");
    // The workspace is shared with the host, read-write.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("work/out.txt")).unwrap(),
        "written\n"
    );
    // Everything else is read-only or absent.
    let out = sh(
        &sandbox,
        dir.path(),
        "touch /usr/x 2>&1; touch /x 2>&1; cat /etc/shadow 2>&1; cat /etc/passwd 2>&1; ls /proc | grep -c '^[0-9]'",
        20,
    )
    .await;
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert!(out.stdout.contains("/etc/shadow: No such file"), "{out:?}");
    assert!(out.stdout.contains("/etc/passwd: No such file"), "{out:?}");
    let pids: u32 = out.stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(pids <= 4, "a private pid namespace: {out:?}");
}

#[tokio::test]
async fn a_symlink_out_of_the_workspace_leads_nowhere() {
    let (sandbox, dir) = sandbox(311_000, small());
    std::os::unix::fs::symlink("/etc", dir.path().join("work/escape")).unwrap();
    std::os::unix::fs::symlink("/root", dir.path().join("work/home")).unwrap();
    let out = sh(
        &sandbox,
        dir.path(),
        "cat escape/hostname escape/passwd 2>&1; ls home/ 2>&1; echo x > escape/new 2>&1",
        20,
    )
    .await;
    assert!(!out.stdout.contains("root:x:0:0"), "{out:?}");
    assert!(out.stdout.contains("No such file"), "{out:?}");
    assert!(!Path::new("/etc/new").exists());
}

#[tokio::test]
async fn the_network_is_unreachable() {
    let (sandbox, dir) = sandbox(312_000, small());
    let out = sh(
        &sandbox,
        dir.path(),
        "bash -c 'echo PING > /dev/tcp/127.0.0.1/6379' 2>&1; echo rc=$?",
        20,
    )
    .await;
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    assert!(
        out.stdout.contains("not permitted") || out.stdout.contains("unreachable"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_the_next_sandbox_works() {
    let (sandbox, dir) = sandbox(313_000, small());
    let out = sh(
        &sandbox,
        dir.path(),
        "b() { b | b & }; b; sleep 2; echo survived",
        5,
    )
    .await;
    // Forks beyond the process limit fail; the wall clock ends the rest.
    assert!(
        out.exit_code != 0 || out.stdout.contains("survived"),
        "{out:?}"
    );
    let next = sh(&sandbox, dir.path(), "echo fine", 10).await;
    assert_eq!(
        (next.exit_code, next.stdout.as_str()),
        (0, "fine\n"),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_memory_bomb_fails_at_the_address_space_limit() {
    let (sandbox, dir) = sandbox(314_000, small());
    let out = sh(
        &sandbox,
        dir.path(),
        "awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }' 2>&1; echo rc=$?",
        20,
    )
    .await;
    assert!(!out.timed_out, "{out:?}");
    assert!(!out.stdout.contains("rc=0"), "{out:?}");
}

#[tokio::test]
async fn a_cpu_loop_is_stopped_by_the_cpu_limit() {
    let (sandbox, dir) = sandbox(315_000, small());
    let started = std::time::Instant::now();
    let out = sh(&sandbox, dir.path(), "while :; do :; done", 30).await;
    assert!(
        !out.timed_out,
        "the CPU limit (2 s) acts before the wall clock: {out:?}"
    );
    // SIGXCPU (24) or SIGKILL (9) ends it.
    assert!([128 + 24, 128 + 9].contains(&out.exit_code), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn an_output_flood_is_cut_with_a_marker() {
    let (sandbox, dir) = sandbox(316_000, small());
    let out = sh(&sandbox, dir.path(), "yes flood", 10).await;
    assert!(out.truncated, "{out:?}");
    assert!(out.stdout.len() < 4096 + 100);
    assert!(
        out.stdout.contains("[output truncated:"),
        "{}",
        &out.stdout[..100]
    );
}

#[tokio::test]
async fn the_wall_clock_kills_the_whole_group() {
    let (sandbox, dir) = sandbox(317_000, small());
    let started = std::time::Instant::now();
    let out = sh(&sandbox, dir.path(), "sleep 60 & sleep 60; echo never", 1).await;
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, -1);
    assert!(!out.stdout.contains("never"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing of the sandbox's uids survives (allowing the kernel a moment
    // to reap the namespace).
    let survivors = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
            .filter(|s| {
                s.lines().any(|l| {
                    l.starts_with("Uid:") && (l.contains("\t317000\t") || l.contains("\t317001\t"))
                })
            })
            .collect()
    };
    let mut left = survivors();
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = survivors();
    }
    assert!(
        left.is_empty(),
        "processes of the sandbox's uids are left: {left:?}"
    );
}

#[tokio::test]
async fn a_helper_that_cannot_set_up_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        318_000,
        1,
        small(),
    );
    // A workspace that does not exist cannot be mounted.
    let error = sandbox
        .run(
            &dir.path().join("missing"),
            &["/bin/true".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("could not be set up") || error.to_string().contains("missing"),
        "{error}"
    );
}

/// A workspace under a directory of mode 0700 (what `mktemp -d` gives a
/// data directory) works: the sandbox's ids cannot traverse it, so the
/// helper reaches the workspace through a descriptor it opened first.
/// Before, setting up failed with "root tmpfs: EACCES" and `amaos up`
/// stopped.
#[tokio::test]
async fn a_workspace_under_a_private_directory_works() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let work = private.join("data/workspaces/acme/t-1");
    std::fs::create_dir_all(&work).unwrap();
    let sandbox = Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        319_000,
        1,
        small(),
    );
    let outcome = sandbox
        .run(
            &work,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo hello > note.txt && cat /workspace/note.txt".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout.trim(), "hello");
    assert_eq!(
        std::fs::read_to_string(work.join("note.txt")).unwrap(),
        "hello\n"
    );
}
