//! A whole mesh on loopback port 0 in a temporary data directory, for tests.

#![allow(dead_code)]

pub mod procs;

use std::path::{Path, PathBuf};

use amaos_cli::up::Mesh;
use amaos_mesh::caller::{self, Caller};
use amaos_mesh::client::{self, MeshChannel};
use amaos_mesh::config::Config;
use amaos_proto::auth::v1 as auth;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use tokio_util::sync::CancellationToken;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A swarm whose triage agent asks the customer for the order number, then
/// answers once it has it.
pub const HELPDESK: &str = r#"name: helpdesk
agents:
  - name: triage
    role: Triage
    goal: Help the customer
    replay:
      - tool: { name: handoff, args: { to: user, reason: "need the order number" } }
      - say: "Refund issued for {input}."
group_chat:
  manager: swarm
  task: "Customer asks about {input}."
  handoff_to_user: wait
  termination:
    any:
      - max_messages: 1
"#;

/// The example research crew spec.
pub fn research_crew() -> String {
    std::fs::read_to_string(repo_root().join("examples/teams/research-crew.yaml")).unwrap()
}

/// The embedding model fetched by `scripts/fetch-embedding-model`:
/// `AMAOS_EMBED_MODEL_DIR`, else `.amaos/models/all-MiniLM-L6-v2` at the
/// repository root.
pub fn model_dir() -> PathBuf {
    std::env::var_os("AMAOS_EMBED_MODEL_DIR").map_or_else(
        || repo_root().join(".amaos/models/all-MiniLM-L6-v2"),
        PathBuf::from,
    )
}

/// The Python that runs the outside clients (`clients/python/*.py`):
/// `$AMAOS_PYTHON`, else `.amaos/venv-grpc/bin/python`, which scripts/test
/// makes with grpcio, grpcio-tools and a2a-sdk.
#[allow(dead_code)]
pub fn python() -> PathBuf {
    std::env::var_os("AMAOS_PYTHON").map_or_else(
        || repo_root().join(".amaos/venv-grpc/bin/python"),
        PathBuf::from,
    )
}

/// Runs an outside client (`command`, killed if the test ends first) to its
/// end within `timeout`, prints what it said, and returns its stdout;
/// panics naming `what` if it fails.
#[allow(dead_code)]
pub async fn run_client(
    mut command: tokio::process::Command,
    timeout: std::time::Duration,
    what: &str,
) -> String {
    let run = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in time"))
        .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{what} failed ({}): {stderr}",
        output.status
    );
    stdout
}

/// A config on port 0 everywhere, without admin listeners, in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config.agents.teams_dir = repo_root().join("examples/teams");
    config.memory.embed_model_dir = Some(model_dir());
    config.tools.sandbox_helper = Some(procs::bin("amaos-sandbox"));
    let any = "127.0.0.1:0".parse().unwrap();
    config.orchestrator.listen = any;
    config.router.listen = any;
    config.agents.listen = any;
    config.tools.listen = any;
    config.memory.listen = any;
    config.auth.listen = any;
    config.gateway.listen = any;
    config.orchestrator.admin_listen = None;
    config.router.admin_listen = None;
    config.agents.admin_listen = None;
    config.tools.admin_listen = None;
    config.memory.admin_listen = None;
    config.auth.admin_listen = None;
    config.gateway.admin_listen = None;
    config.limits.drain_timeout = std::time::Duration::from_secs(2);
    config
}

/// A running mesh and what tests need to call it.
pub struct TestMesh {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub admin_key: String,
    pub shutdown: CancellationToken,
    mesh: Option<Mesh>,
}

impl TestMesh {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let mesh = Mesh::start(config, shutdown.clone()).await.unwrap();
        let admin_key = std::fs::read_to_string(dir.path().join("admin.key"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            dir,
            config: mesh.config.clone(),
            admin_key,
            shutdown,
            mesh: Some(mesh),
        }
    }

    /// A channel to the service at `url`, as the CLI (with its certificate
    /// when the mesh runs mTLS).
    pub fn channel(&self, url: &str) -> MeshChannel {
        let c = &self.config;
        let peer = [
            ("orchestrator", &c.orchestrator.url),
            ("router", &c.router.url),
            ("agents", &c.agents.url),
            ("tools", &c.tools.url),
            ("memory", &c.memory.url),
            ("auth", &c.auth.url),
        ]
        .into_iter()
        .find(|(_, u)| *u == url)
        .map_or("", |(name, _)| name);
        client::Dialer::new(c, "cli")
            .unwrap()
            .channel(peer, url)
            .unwrap()
    }

    pub fn orchestrator(&self) -> OrchestratorServiceClient<MeshChannel> {
        OrchestratorServiceClient::new(self.channel(&self.config.orchestrator.url))
    }

    pub fn auth(&self) -> AuthServiceClient<MeshChannel> {
        AuthServiceClient::new(self.channel(&self.config.auth.url))
    }

    /// A request carrying `key`.
    pub fn with_key<T>(key: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        caller::set_bearer(request.metadata_mut(), key).unwrap();
        request
    }

    /// A token for `tenant` with `roles`, signed with the mesh's current key
    /// (read from auth's key file, as only a test may).
    pub fn token(&self, tenant: &str, roles: &[&str]) -> String {
        let (kid, key) = self.signing_key();
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let claims = amaos_mesh::token::claims_for(
            "test",
            tenant,
            &roles,
            std::time::Duration::from_secs(300),
            "",
        );
        amaos_mesh::token::sign(&claims, &kid, &key)
    }

    /// The mesh's current signing key and its id (read from auth's key
    /// file, as only a test may).
    pub fn signing_key(&self) -> (String, ed25519_dalek::SigningKey) {
        let text = std::fs::read_to_string(self.config.signing_key_file()).unwrap();
        let keys: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let newest = keys.last().unwrap();
        let seed: [u8; 32] = hex_decode(newest["seed_hex"].as_str().unwrap())
            .try_into()
            .unwrap();
        (
            newest["kid"].as_str().unwrap().to_owned(),
            ed25519_dalek::SigningKey::from_bytes(&seed),
        )
    }

    /// A request carrying a token for `tenant` with `roles`, as a service
    /// calling another would send.
    pub fn internal<T>(&self, tenant: &str, roles: &[&str], message: T) -> tonic::Request<T> {
        Caller {
            tenant: tenant.into(),
            principal: "test".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            token: Some(self.token(tenant, roles)),
            task: None,
        }
        .request(message)
    }

    /// Every event of a task, watched until it finishes (at most a minute).
    pub async fn events(&self, key: &str, task_id: &str) -> Vec<pb::TaskEvent> {
        let mut stream = self
            .orchestrator()
            .watch_task(Self::with_key(
                key,
                pb::WatchTaskRequest {
                    task_id: task_id.into(),
                    after_sequence: 0,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        let collect = async {
            while let Some(r) = stream.message().await.unwrap() {
                events.push(r.event.unwrap());
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), collect)
            .await
            .expect("the task finished");
        events
    }

    /// A task as the orchestrator reports it now.
    pub async fn task(&self, key: &str, task_id: &str) -> pb::Task {
        self.orchestrator()
            .get_task(Self::with_key(
                key,
                pb::GetTaskRequest {
                    task_id: task_id.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }

    /// Creates a key in `tenant` with `role` and returns its secret.
    /// Submits an inline `spec` on `input` with `key`; returns the task id.
    pub async fn submit(&self, key: &str, spec: &str, input: &str) -> String {
        self.orchestrator()
            .submit_task(Self::with_key(key, inline(spec, input)))
            .await
            .unwrap()
            .into_inner()
            .task_id
    }

    pub async fn create_key(&self, tenant: &str, role: &str) -> String {
        self.auth()
            .create_api_key(Self::with_key(
                &self.admin_key,
                auth::CreateApiKeyRequest {
                    name: format!("{tenant}-{role}"),
                    tenant: tenant.into(),
                    roles: vec![role.into()],
                    ttl: None,
                    idempotency_key: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    /// Each service's admin (`/metrics`) address, when it has one.
    pub fn admin_addresses(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        self.mesh
            .as_ref()
            .map(|m| {
                m.addresses
                    .iter()
                    .filter_map(|(service, _, admin)| admin.map(|a| (*service, a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(mesh) = self.mesh.take() {
            mesh.wait(self.shutdown.clone()).await.unwrap();
        }
    }
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// `GET /metrics` from an admin address, by hand (one plain HTTP/1.1
/// request, no HTTP client): the whole response, head included.
pub async fn scrape_metrics(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// A submission of the inline `spec` on `input`, nothing else set.
pub fn inline(spec: &str, input: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::SpecYaml(spec.into())),
        }),
        input: input.into(),
        ..Default::default()
    }
}
