//! Running the `amaos-<svc>` binaries as processes on loopback, for tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Starts `amaos-<service>` with `env`, its output discarded.
pub fn spawn(service: &str, env: &HashMap<String, String>) -> Child {
    Command::new(bin(&format!("amaos-{service}")))
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
use std::time::{Duration, Instant};

use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::repo_root as repo_root_dir;

pub const SERVICES: [&str; 6] = [
    "auth",
    "router",
    "memory",
    "tools",
    "agents",
    "orchestrator",
];

/// Builds the service binaries once: `cargo test` builds only the binaries of
/// the package under test, and stale ones would test old code. Built like
/// scripts/test builds them (`--workspace --bins`): a narrower `-p` list
/// unifies features differently and recompiles half the dependencies.
pub fn build_service_binaries() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(repo_root_dir())
            .args(["build", "--quiet"]);
        let profile_dir = PathBuf::from(env!("CARGO_BIN_EXE_amaos"));
        if profile_dir
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == "release")
        {
            command.arg("--release");
        }
        // The same selection as scripts/test's build, so features unify the
        // same way and this finds nothing to rebuild.
        command.args(["--workspace", "--bins"]);
        let status = command.status().unwrap();
        assert!(status.success(), "building the service binaries failed");
    });
}

pub fn bin(name: &str) -> PathBuf {
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

/// A free loopback port, never one handed out before in this process.
pub fn free_port() -> u16 {
    amaos_cli::chaos::free_port().unwrap()
}

/// Kills the processes it holds when dropped (a failed test leaves none behind).
pub struct Processes(pub Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn env_for(data_dir: &Path) -> HashMap<String, String> {
    amaos_cli::chaos::service_env(
        data_dir,
        &repo_root_dir().join("examples/teams"),
        &super::model_dir(),
    )
    .unwrap()
}

pub fn amaos(env: &HashMap<String, String>, args: &[&str]) -> Output {
    Command::new(bin("amaos"))
        .args(args)
        .envs(env)
        .env_remove("AMAOS_API_KEY")
        .current_dir(repo_root_dir())
        .output()
        .unwrap()
}

pub async fn wait_until_serving(env: &HashMap<String, String>) {
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
    let admin_key = Path::new(&env["AMAOS_DATA_DIR"]).join("admin.key");
    loop {
        // Listing workers is for operators: ask with the admin key.
        let mut request =
            tonic::Request::new(amaos_proto::router::v1::ListWorkersRequest::default());
        if let Ok(key) = std::fs::read_to_string(&admin_key) {
            amaos_mesh::caller::set_bearer(request.metadata_mut(), key.trim()).unwrap();
        }
        let workers = router
            .list_workers(request)
            .await
            .map(|r| r.into_inner().workers)
            .unwrap_or_default();
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
