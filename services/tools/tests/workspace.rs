//! Workspaces are bounded through the service: a shell command that writes
//! past its workspace's bounds fails with a clear error and leaves the
//! workspace within them (what it wrote is removed), a fast writer is
//! stopped while it runs, preallocation claims nothing, and what the
//! sandbox creates is private to it.
//!
//! Needs what the sandbox tests need (namespaces, root to map ids).

use std::sync::Arc;
use std::time::{Duration, Instant};

use amaos_proto::tools::v1 as pb;
use amaos_tools::sandbox::{Limits, Sandbox};
use amaos_tools::{ToolError, Tools};
use serde_json::{Value, json};

const MAX_BYTES: u64 = 1024 * 1024;
const MAX_FILES: u64 = 100;

struct Service {
    tools: Tools,
    config: amaos_mesh::Config,
    _dir: tempfile::TempDir,
}

/// The service with a sandbox (its own uid range) and small workspaces.
fn service(uid_base: u32) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let mut config = amaos_mesh::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.tools.workspace_max_bytes = MAX_BYTES;
    config.tools.workspace_max_files = MAX_FILES;
    config.validate().unwrap();
    let sandbox = Arc::new(Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        uid_base,
        2,
        Limits::default(),
    ));
    Service {
        tools: Tools::new(
            &config,
            amaos_mesh::policy::Policy::builtin(),
            Some(sandbox),
            None,
        )
        .unwrap(),
        config,
        _dir: dir,
    }
}

fn caller() -> amaos_mesh::caller::Caller {
    amaos_mesh::caller::Caller {
        tenant: "acme".into(),
        principal: "acme-agent".into(),
        roles: vec!["agent".into()],
        token: None,
        task: None,
    }
}

impl Service {
    async fn call(&self, tool: &str, args: Value) -> Result<Value, ToolError> {
        self.tools
            .invoke(
                &caller(),
                pb::InvokeToolRequest {
                    tool: tool.into(),
                    arguments: Some(amaos_proto::json::map_to_struct(args.as_object().unwrap())),
                    task_id: "t-1".into(),
                    ..Default::default()
                },
            )
            .await
            .map(|r| amaos_proto::json::value_to_json(r.result.as_ref().unwrap()))
    }

    async fn sh(&self, command: &str) -> Result<Value, ToolError> {
        self.call("shell", json!({"command": command, "timeout_seconds": 60}))
            .await
    }

    fn workspace(&self) -> std::path::PathBuf {
        self.config.workspace_dir().join("acme/t-1")
    }

    /// (bytes, entries) of the workspace, as `du` would count them.
    fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut files = 0;
        let mut stack = vec![self.workspace()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let meta = entry.path().symlink_metadata().unwrap();
                use std::os::unix::fs::MetadataExt;
                bytes += meta.size().max(meta.blocks() * 512);
                files += 1;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        (bytes, files)
    }

    fn within_bounds(&self) {
        let (bytes, files) = self.usage();
        assert!(
            bytes <= MAX_BYTES && files <= MAX_FILES,
            "{bytes} bytes, {files} files"
        );
    }
}

fn quota(result: Result<Value, ToolError>) -> String {
    match result {
        Err(ToolError::Quota(message)) => message,
        other => panic!("expected a quota error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_shell_command_writing_past_the_workspace_bounds_fails_and_is_rolled_back() {
    let s = service(321_000);
    s.call("file_write", json!({"path": "keep.txt", "content": "kept"}))
        .await
        .unwrap();
    s.sh("mkdir old && echo before > old/a.txt").await.unwrap();

    // Bytes: one file larger than the workspace may hold.
    let message = quota(s.sh("head -c 3000000 /dev/zero > big; echo done").await);
    assert!(message.contains("1048576 bytes"), "{message}");
    assert!(message.contains("removed"), "{message}");
    assert!(!s.workspace().join("big").exists());
    s.within_bounds();

    // Files: more entries than the workspace may hold, some in a directory
    // that existed before (which stays, with what it held).
    let message = quota(
        s.sh("for i in $(seq 1 150); do : > f$i; : > old/g$i; done")
            .await,
    );
    assert!(message.contains("100 files"), "{message}");
    assert!(!s.workspace().join("f1").exists());
    assert!(!s.workspace().join("old/g1").exists());
    assert_eq!(
        std::fs::read_to_string(s.workspace().join("old/a.txt")).unwrap(),
        "before\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.workspace().join("keep.txt")).unwrap(),
        "kept"
    );
    s.within_bounds();

    // The workspace works as before.
    let out = s
        .sh("echo fine > small.txt && cat small.txt")
        .await
        .unwrap();
    assert_eq!(out["stdout"], "fine\n", "{out}");
}

#[tokio::test]
async fn a_fast_writer_is_stopped_while_it_runs() {
    let s = service(322_000);
    let started = Instant::now();
    // Without the watch this would run for its whole minute, writing all along.
    let message = quota(
        s.sh("i=0; while :; do head -c 200000 /dev/zero > f$i; i=$((i+1)); done")
            .await,
    );
    assert!(message.contains("was stopped"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped after {:?}",
        started.elapsed()
    );
    s.within_bounds();
}

#[tokio::test]
async fn preallocation_claims_no_space() {
    let s = service(323_000);
    let out = s
        .sh("fallocate -l 100M big 2>&1; echo rc=$?")
        .await
        .unwrap();
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.contains("not supported"), "{out}");
    assert!(!stdout.contains("rc=0"), "{out}");
    s.within_bounds();
}

#[tokio::test]
async fn what_the_sandbox_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = service(324_000);
    let out = s
        .sh("echo x > a && mkdir d && stat -c '%a %n' a d")
        .await
        .unwrap();
    assert_eq!(out["stdout"], "600 a\n700 d\n", "{out}");
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(s.workspace()), 0o700);
    assert_eq!(mode(s.workspace().join("a")), 0o600);
    s.call("file_write", json!({"path": "n/b.md", "content": "y"}))
        .await
        .unwrap();
    assert_eq!(mode(s.workspace().join("n/b.md")), 0o600);
    assert_eq!(mode(s.workspace().join("n")), 0o700);
}
