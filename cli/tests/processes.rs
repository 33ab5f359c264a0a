//! End-to-end across processes: the six `amaos-<svc>` binaries on loopback,
//! driven by the `amaos` CLI as a user would.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 6] = [
    "auth",
    "router",
    "memory",
    "tools",
    "agents",
    "orchestrator",
];

/// Builds the service binaries once: `cargo test` builds only the binaries of
/// the package under test, and stale ones would test old code.
fn build_service_binaries() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(common::repo_root())
            .args(["build", "--quiet"]);
        let profile_dir = PathBuf::from(env!("CARGO_BIN_EXE_amaos"));
        if profile_dir
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == "release")
        {
            command.arg("--release");
        }
        for service in SERVICES {
            command.args(["-p", &format!("amaos-{service}")]);
        }
        let status = command.status().unwrap();
        assert!(status.success(), "building the service binaries failed");
    });
}

fn bin(name: &str) -> PathBuf {
    if name != "amaos" {
        build_service_binaries();
    }
    let amaos = PathBuf::from(env!("CARGO_BIN_EXE_amaos"));
    let path = amaos.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo test --workspace` builds every binary)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the processes it holds when dropped (a failed test leaves none behind).
struct Processes(Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn env_for(data_dir: &Path) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("AMAOS_DATA_DIR".into(), data_dir.display().to_string());
    env.insert(
        "AMAOS_AGENTS__TEAMS_DIR".into(),
        common::repo_root()
            .join("examples/teams")
            .display()
            .to_string(),
    );
    env.insert("AMAOS_LOG__FORMAT".into(), "json".into());
    for service in SERVICES {
        let upper = service.to_uppercase();
        let port = free_port();
        env.insert(
            format!("AMAOS_{upper}__LISTEN"),
            format!("127.0.0.1:{port}"),
        );
        env.insert(
            format!("AMAOS_{upper}__URL"),
            format!("http://127.0.0.1:{port}"),
        );
        env.insert(
            format!("AMAOS_{upper}__ADMIN_LISTEN"),
            format!("127.0.0.1:{}", free_port()),
        );
    }
    env
}

fn amaos(env: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(bin("amaos"))
        .args(args)
        .envs(env)
        .env_remove("AMAOS_API_KEY")
        .current_dir(common::repo_root())
        .output()
        .unwrap()
}

async fn wait_until_serving(env: &HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for service in SERVICES {
        let url = env[&format!("AMAOS_{}__URL", service.to_uppercase())].clone();
        let name = match service {
            "orchestrator" => "amaos.orchestrator.v1.OrchestratorService",
            "router" => "amaos.router.v1.RouterService",
            "agents" => "amaos.agents.v1.AgentsService",
            "tools" => "amaos.tools.v1.ToolsService",
            "memory" => "amaos.memory.v1.MemoryService",
            _ => "amaos.auth.v1.AuthService",
        };
        loop {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect_lazy();
            let status = HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: name.into(),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
                break;
            }
            assert!(Instant::now() < deadline, "{service} did not start serving");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let router = tonic::transport::Endpoint::from_shared(env["AMAOS_ROUTER__URL"].clone())
        .unwrap()
        .connect_lazy();
    let mut router = RouterServiceClient::new(router);
    loop {
        let workers = router
            .list_workers(amaos_proto::router::v1::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .workers;
        if !workers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents worker did not register"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_six_binaries_run_the_example_crew_driven_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_for(dir.path());
    let mut processes = Processes(Vec::new());
    for service in SERVICES {
        let child = Command::new(bin(&format!("amaos-{service}")))
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        processes.0.push((service, child));
    }
    wait_until_serving(&env).await;
    assert!(
        dir.path().join("admin.key").exists(),
        "auth writes the first admin key"
    );

    // A key for a tenant, made with the CLI; the secret is the last line.
    let created = amaos(
        &env,
        &[
            "keys",
            "create",
            "ci",
            "--tenant",
            "acme",
            "--role",
            "developer",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("amaos_"), "{stdout}");

    let mut with_key = env.clone();
    with_key.insert(
        "AMAOS_DATA_DIR".into(),
        dir.path().join("elsewhere").display().to_string(),
    );
    let run = Command::new(bin("amaos"))
        .args(["run", "examples/teams/research-crew.yaml", "edge computing"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", &key)
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8(run.stdout).unwrap().trim(),
        "Brief: edge computing — what it is, who uses it, and the trade-offs to weigh."
    );
    // Progress went to stderr, in order.
    let research = stderr.find("task research assigned").unwrap();
    let write = stderr.find("task write assigned").unwrap();
    assert!(research < write, "{stderr}");
    assert!(stderr.contains("SUCCEEDED"), "{stderr}");

    // The task is listed for the key's tenant, as JSON for scripts.
    let listed = Command::new(bin("amaos"))
        .args(["tasks", "--json"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", &key)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["tasks"][0]["state"], "SUCCEEDED");
    assert_eq!(listed["tasks"][0]["tenant"], "acme");

    // A bad key is refused with a clear message and a non-zero exit.
    let refused = Command::new(bin("amaos"))
        .args(["tasks"])
        .envs(&with_key)
        .env("AMAOS_API_KEY", "amaos_000000000000_nope")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));

    // SIGTERM drains every service and each exits 0.
    for (service, child) in &mut processes.0 {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success(),
            "{service}"
        );
    }
    for (service, child) in &mut processes.0 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{service} did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{service} exited with {status}");
    }
}

#[test]
fn an_invalid_config_value_exits_64_naming_the_key() {
    let out = Command::new(bin("amaos-router"))
        .env("AMAOS_ROUTER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`router.listen`"), "{stderr}");
    assert!(stderr.contains("AMAOS_ROUTER__LISTEN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = Command::new(bin("amaos"))
        .arg("up")
        .env("AMAOS_LIMITS__MAX_MESSAGE_BYTES", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`limits.max_message_bytes`"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("amaos.toml");
    std::fs::write(&file, "[agents]\ncapacity = \"many\"\n").unwrap();
    let out = Command::new(bin("amaos-agents"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`agents.capacity`"));
}
