//! `amaos bench --scenario chaos`: the six services as separate processes on
//! the Redis backend, a batch of side-effecting tasks, one fault injected
//! mid-batch, and a report of what survived it.
//!
//! Every task of a batch makes one tool call (a line appended to
//! `effects.txt` in its workspace, through the sandboxed shell) between
//! second-long model calls. After the fault the run waits until every
//! acknowledged task has finished (or a timeout passed), then counts what
//! succeeded, what failed, what was left unfinished (stranded) or lost, and
//! which effects files hold other than exactly one line. Times are taken
//! from the tasks' own `finished_at` and events, so polling does not blur
//! them.
//!
//! The tests in `cli/tests/chaos.rs` run each fault with a shorter batch and
//! assert on the report; the benchmark prints it.
//!
//! Layout: this module holds the faults, the options, the crews a batch runs
//! and [`run`]; `env` the services' environment, `cluster` their processes
//! (killed, restarted), `mesh` starting a mesh of a fault's shape, `faults`
//! each fault injected into a batch, `outcome` submitting, settling and
//! counting, `report` the [`ChaosReport`] and its table, `balancer` the
//! connection balancer in front of replicas and `deployment` the
//! deployment-shaped run.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use amaos_mesh::{BoxError, caller};
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use amaos_proto::orchestrator::v1::task_event::Kind;
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The environment variable naming the directory of the `amaos-<service>`
/// binaries (default: next to this program, or one directory up).
pub const BIN_DIR_VAR: &str = "AMAOS_BIN_DIR";

/// One fault, injected mid-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL of one of two agents workers.
    WorkerKill,
    /// SIGKILL of one of two orchestrator replicas.
    ReplicaKill,
    /// SIGKILL of one agents worker, then a second later of one
    /// orchestrator replica.
    WorkerThenReplica,
    /// SIGKILL of the tools service once every task's tool call has run, a
    /// restart, then SIGKILL of one agents worker: its runs are retried
    /// against the restarted tools service.
    ToolsRestart,
    /// Two tools replicas, one behind each worker; once every tool call has
    /// run, SIGKILL of one replica and of its worker (a machine dies): the
    /// retries reach the other replica.
    ToolsReplica,
    /// SIGKILL of Redis (AOF, fsync every second) and a restart; submissions
    /// made during the outage.
    RedisCrash,
    /// SIGTERM of one of two orchestrator replicas, with a short drain and
    /// a long lease: what outlives the drain is handed back.
    ReplicaSigterm,
    /// A `WatchTask` stream held on one replica across the SIGKILL of the
    /// replica running the task and a model call of 12 s.
    WatchQuiet,
    /// The deployment shape — two replicas of every stateless service
    /// behind connection balancers, auth, the example teams beside the
    /// batch — and a SIGKILL of one replica of each service (auth
    /// restarted) once every tool call has run.
    Deployment,
}

impl Fault {
    /// Every fault, in the order the benchmark runs them.
    pub const ALL: [Fault; 9] = [
        Fault::WorkerKill,
        Fault::ReplicaKill,
        Fault::WorkerThenReplica,
        Fault::ToolsRestart,
        Fault::ToolsReplica,
        Fault::RedisCrash,
        Fault::ReplicaSigterm,
        Fault::WatchQuiet,
        Fault::Deployment,
    ];

    /// The name `--fault` takes.
    pub fn name(self) -> &'static str {
        match self {
            Fault::WorkerKill => "worker-kill",
            Fault::ReplicaKill => "replica-kill",
            Fault::WorkerThenReplica => "worker-then-replica",
            Fault::ToolsRestart => "tools-restart",
            Fault::ToolsReplica => "tools-replica",
            Fault::RedisCrash => "redis-crash",
            Fault::ReplicaSigterm => "replica-sigterm",
            Fault::WatchQuiet => "watch-quiet",
            Fault::Deployment => "deployment",
        }
    }

    /// What is done, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::WorkerKill => "SIGKILL of one of two agents workers mid-batch",
            Fault::ReplicaKill => "SIGKILL of one of two orchestrator replicas mid-batch",
            Fault::WorkerThenReplica => "SIGKILL of a worker, then 1 s later of a replica",
            Fault::ToolsRestart => {
                "SIGKILL and restart of tools after the tool calls, then SIGKILL of a worker (retries reach the restarted tools)"
            }
            Fault::ToolsReplica => {
                "two tools replicas; SIGKILL of one and of its worker after the tool calls (retries reach the other replica)"
            }
            Fault::RedisCrash => {
                "SIGKILL of Redis (AOF everysec) mid-batch, submissions during the outage, restart"
            }
            Fault::ReplicaSigterm => {
                "SIGTERM of one of two replicas mid-batch (drain 1 s, lease 30 s)"
            }
            Fault::WatchQuiet => {
                "a WatchTask stream across SIGKILL of the running replica and a 12 s model call"
            }
            Fault::Deployment => {
                "two replicas of each stateless service behind balancers, the example teams too; SIGKILL of one replica of each service, auth restarted"
            }
        }
    }

    /// The fault named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    fn replicas(self) -> usize {
        match self {
            Fault::ReplicaKill
            | Fault::WorkerThenReplica
            | Fault::ReplicaSigterm
            | Fault::WatchQuiet => 2,
            _ => 1,
        }
    }
}

/// How to run a fault.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Tasks in the batch.
    pub tasks: usize,
    /// The shared Redis server (the Redis crash starts its own).
    pub redis_url: String,
    /// Where the `amaos-<service>` binaries are; unset for [`bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// The embedding model the memory service loads.
    pub embed_model_dir: PathBuf,
    /// How long to wait for the batch after the fault before counting what
    /// is unfinished as stranded.
    pub settle_timeout: Duration,
}

impl ChaosOptions {
    /// `tasks` tasks against `redis_url`, binaries found by [`bin_dir`].
    pub fn new(tasks: usize, redis_url: &str, embed_model_dir: PathBuf) -> Self {
        Self {
            tasks,
            redis_url: redis_url.to_owned(),
            bin_dir: None,
            embed_model_dir,
            settle_timeout: Duration::from_secs(240),
        }
    }
}

mod balancer;
mod cluster;
mod deployment;
mod env;
mod faults;
mod mesh;
mod outcome;
mod report;
mod topology;

use cluster::*;
pub use env::service_env;
use env::*;
use faults::*;
use mesh::*;
use outcome::*;
pub use report::{ChaosReport, table};
pub use topology::{ProcessMesh, ProcessUse, start_processes};

/// The directory holding the `amaos-<service>` binaries: `$AMAOS_BIN_DIR`,
/// else this program's directory, else its parent (tests run from
/// `target/<profile>/deps`).
pub fn bin_dir() -> Result<PathBuf, BoxError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        let dir = PathBuf::from(dir);
        if dir.join("amaos-orchestrator").exists() {
            return Ok(dir);
        }
        return Err(format!(
            "{BIN_DIR_VAR}={} holds no amaos-orchestrator",
            dir.display()
        )
        .into());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        if d.join("amaos-orchestrator").exists() {
            return Ok(d.to_owned());
        }
        dir = d.parent();
    }
    Err(format!(
        "no amaos-orchestrator next to {} or one directory up: build the workspace's binaries (`cargo build --workspace --bins`) or set {BIN_DIR_VAR}",
        exe.display()
    )
    .into())
}

/// One agent, one tool call (a line appended to a file), then the answer;
/// each model call takes a second.
const EFFECT_CREW: &str = r#"name: chaos-effect
agents:
  - name: a
    role: r
    goal: g
    tools: [shell]
    replay_latency: 1s
    replay:
      - tool:
          name: shell
          args: { command: "echo {input} >> effects.txt" }
      - say: "done with {input}"
crew:
  tasks:
    - { name: one, description: "one {input}", agent: a }
"#;

/// As [`EFFECT_CREW`], then a second agent thinks for 8 s: a window in which
/// every tool call has run and none is in flight.
const WINDOW_CREW: &str = r#"name: chaos-window
agents:
  - name: a
    role: r
    goal: g
    tools: [shell]
    replay_latency: 1s
    replay:
      - tool:
          name: shell
          args: { command: "echo {input} >> effects.txt" }
      - say: "effect of {input} written"
  - name: b
    role: r
    goal: g
    replay_latency: 8s
    replay:
      - say: "done with {input}"
crew:
  tasks:
    - { name: one, description: "one {input}", agent: a }
    - { name: two, description: "two {input}", agent: b, context: [one] }
"#;

/// One model call of 12 s: a quiet stretch longer than 10 s.
const QUIET_CREW: &str = r#"name: chaos-quiet
agents:
  - name: a
    role: r
    goal: g
    replay_latency: 12s
    replay:
      - say: "done with {input}"
crew:
  tasks:
    - { name: one, description: "one {input}", agent: a }
"#;

/// A port free now and not handed out before by this process (the kernel
/// may return a port it just gave, once its listener is closed).
pub fn free_port() -> Result<u16, BoxError> {
    static GIVEN: std::sync::Mutex<Option<HashSet<u16>>> = std::sync::Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

fn client(url: &str) -> OrchestratorServiceClient<Channel> {
    OrchestratorServiceClient::new(
        Endpoint::from_shared(url.to_owned())
            .expect("a valid URL")
            .connect_lazy(),
    )
}

fn with_key<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // The key was read from auth's own file: it is valid metadata.
    let _ = caller::set_bearer(request.metadata_mut(), key);
    request
}

fn terminal(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Succeeded
            | pb::TaskState::Failed
            | pb::TaskState::Cancelled
            | pb::TaskState::TimedOut)
    )
}

fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

fn to_system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
}

/// Runs `fault` against a fresh mesh and reports what survived; errors are
/// failures to set the run up, not findings.
pub async fn run(fault: Fault, options: &ChaosOptions) -> Result<ChaosReport, BoxError> {
    let bins = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => bin_dir()?,
    };
    let mut cluster = Cluster::new(bins)?;
    let result = async {
        match fault {
            Fault::Deployment => {
                let mesh = deployment::start(options, &mut cluster).await?;
                deployment::run(&mesh, &mut cluster, options).await
            }
            Fault::WatchQuiet => {
                let mesh = start(fault, options, &mut cluster).await?;
                watch_quiet(&mesh, &mut cluster).await
            }
            _ => {
                let mesh = start(fault, options, &mut cluster).await?;
                batch(fault, &mesh, &mut cluster, options).await
            }
        }
    }
    .await;
    match result {
        Ok(mut report) => {
            report.kept_dir = cluster.keep();
            Ok(report)
        }
        Err(error) => {
            let kept = cluster.keep();
            Err(match kept {
                Some(dir) => format!("{error} (logs in {dir}/logs)").into(),
                None => error,
            })
        }
    }
}

/// Runs `faults` one after the other.
pub async fn run_all(
    faults: &[Fault],
    options: &ChaosOptions,
) -> Result<Vec<ChaosReport>, BoxError> {
    let mut out = Vec::new();
    for fault in faults {
        out.push(run(*fault, options).await?);
    }
    Ok(out)
}
