//! A client generated in another language than Rust: `clients/python/smoke.py`
//! generates Python stubs from `proto/` with grpcio-tools and, against the
//! in-process mesh's orchestrator with a developer key, submits a crew and
//! watches it to SUCCEEDED, then cancels a slow task once it is under way.
//!
//! This test uses outside resources: a Python with `grpcio` and
//! `grpcio-tools` — `$AMAOS_PYTHON`, else `.amaos/venv-grpc/bin/python`,
//! which `scripts/test` makes. Without it the test fails and says so, rather
//! than passing without a client.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{TestMesh, python, repo_root, research_crew, run_client};

/// How long the script may take: stub generation, a crew run and a cancel.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether `python` can import the generator and the runtime.
fn has_grpc(python: &PathBuf) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_python_client_submits_watches_and_cancels() {
    let python = python();
    assert!(
        has_grpc(&python),
        "the Python client test cannot run: {} cannot import grpc and grpc_tools. \
         Run scripts/test, which makes .amaos/venv-grpc, or point AMAOS_PYTHON at a \
         Python with grpcio and grpcio-tools.",
        python.display()
    );
    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    // Every model call of this crew takes a minute: it is still running
    // when the client cancels it.
    let slow = research_crew().replace(
        "    memory: true\n",
        "    memory: true\n    replay_latency: 60s\n",
    );
    assert!(slow.contains("replay_latency"));
    let slow_spec = mesh.dir.path().join("slow.yaml");
    std::fs::write(&slow_spec, slow).unwrap();
    let target = mesh
        .config
        .orchestrator
        .url
        .trim_start_matches("http://")
        .to_owned();

    let mut client = tokio::process::Command::new(&python);
    client
        .arg(repo_root().join("clients/python/smoke.py"))
        .args(["--target", &target, "--key", &key, "--proto-root"])
        .arg(repo_root().join("proto"))
        .arg("--slow-spec")
        .arg(&slow_spec);
    let stdout = run_client(client, SCRIPT_TIMEOUT, "the Python client").await;
    assert!(stdout.contains("TASK_STATE_CANCELLED"), "{stdout}");
    mesh.stop().await;
}
