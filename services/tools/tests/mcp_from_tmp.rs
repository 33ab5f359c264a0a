//! A stdio MCP server whose program lives under the host's `/tmp` (a
//! checkout or build directory there, a temporary directory): the sandbox's
//! own `/tmp` is private, so such a path is bound inside it read-only; a
//! path the sandbox cannot show is refused at registration naming it; and a
//! server the sandbox cannot start says why instead of a broken pipe.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amaos_tools::ToolError;
use amaos_tools::mcp::{Mcp, Scope, Transport};
use amaos_tools::sandbox::{Limits, Sandbox};
use serde_json::json;

fn mcp(dir: &Path, uid_base: u32) -> Mcp {
    let sandbox = Arc::new(Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        uid_base,
        2,
        Limits::default(),
    ));
    Mcp::new(Some(sandbox), dir.join("mcp"), None)
}

/// A temporary directory under the host's `/tmp` (whatever `TMPDIR` says).
fn under_tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("amaos-mcp-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A copy of `amaos-mcp-demo` in `dir`.
fn demo_in(dir: &Path) -> PathBuf {
    let copy = dir.join("bin").join("amaos-mcp-demo");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_amaos-mcp-demo"), &copy).unwrap();
    copy
}

fn stdio(program: &Path, read_only: Vec<PathBuf>) -> Transport {
    Transport::Stdio {
        argv: vec![program.display().to_string()],
        read_only,
        secret_env: vec![],
    }
}

#[tokio::test]
async fn a_server_whose_program_is_under_tmp_runs_and_answers() {
    let data = tempfile::tempdir().unwrap();
    let tmp = under_tmp();
    let program = demo_in(tmp.path());
    let mcp = mcp(data.path(), 327_000);
    // The program itself, and (as a second server) its whole directory.
    for (name, read_only) in [
        ("file", program.clone()),
        ("dir", program.parent().unwrap().to_owned()),
    ] {
        let tools = mcp
            .register(&Scope::Platform, name, stdio(&program, vec![read_only]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            tools.iter().any(|(n, _, _)| *n == format!("{name}.add")),
            "{tools:?}"
        );
        let sum = mcp
            .call(
                "acme",
                &format!("{name}.add"),
                json!({"a": 2, "b": 40}).as_object().unwrap().clone(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(sum["content"][0]["text"], "42", "{sum}");
    }
}

#[tokio::test]
async fn a_path_the_sandbox_cannot_show_is_refused_at_registration_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let mcp = mcp(data.path(), 328_000);
    let program = PathBuf::from(env!("CARGO_BIN_EXE_amaos-mcp-demo"));
    for (path, why) in [
        ("/tmp", "the sandbox's own"),
        ("/proc/self", "the sandbox's own"),
        ("/tmp/../etc", "`..`"),
        ("relative/path", "absolute"),
        ("/tmp/amaos-no-such-path-7c1d", "does not exist"),
    ] {
        match mcp
            .register(
                &Scope::Platform,
                "demo",
                stdio(&program, vec![program.clone(), PathBuf::from(path)]),
            )
            .await
        {
            Err(ToolError::InvalidArgument { field, message }) => {
                assert_eq!(field, "stdio.read_only", "{path}: {message}");
                assert!(message.contains(path), "{path}: {message}");
                assert!(message.contains(why), "{path}: {message}");
            }
            Err(other) => panic!("{path}: {other}"),
            Ok(_) => panic!("{path} was accepted"),
        }
    }
}

#[tokio::test]
async fn a_server_the_sandbox_cannot_start_says_why() {
    let data = tempfile::tempdir().unwrap();
    let tmp = under_tmp();
    let program = demo_in(tmp.path());
    let mcp = mcp(data.path(), 329_000);
    // The program is not among the paths the sandbox shows: it cannot be
    // executed in there, and the error says so rather than "Broken pipe".
    let message = match mcp
        .register(&Scope::Platform, "hidden", stdio(&program, vec![]))
        .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a program the sandbox cannot see was started"),
    };
    assert!(message.contains("amaos-sandbox: exec"), "{message}");
    assert!(
        message.contains(&program.display().to_string()),
        "{message}"
    );
    assert!(!message.contains("Broken pipe"), "{message}");
}
