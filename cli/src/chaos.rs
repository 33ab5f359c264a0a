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
}

impl Fault {
    /// Every fault, in the order the benchmark runs them.
    pub const ALL: [Fault; 8] = [
        Fault::WorkerKill,
        Fault::ReplicaKill,
        Fault::WorkerThenReplica,
        Fault::ToolsRestart,
        Fault::ToolsReplica,
        Fault::RedisCrash,
        Fault::ReplicaSigterm,
        Fault::WatchQuiet,
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

/// What one fault did to one batch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChaosReport {
    /// The fault's name.
    pub fault: String,
    /// Submissions the orchestrator acknowledged with a task id.
    pub acknowledged: usize,
    /// Acknowledged tasks that ended SUCCEEDED with the expected output.
    pub succeeded: usize,
    /// Acknowledged tasks that ended otherwise (or with another output).
    pub failed: usize,
    /// Acknowledged tasks still not finished at the end.
    pub stranded: usize,
    /// Acknowledged tasks no replica knows any more.
    pub lost: usize,
    /// Of the lost, those acknowledged more than a second before the fault.
    pub lost_before_fsync_window: usize,
    /// Effects files with more than one line.
    pub repeated_effects: usize,
    /// Tasks whose effects file is missing or empty (lost tasks not counted).
    pub missing_effects: usize,
    /// Tasks that took more than one attempt.
    pub retried: usize,
    /// Stalled attempts another replica took over after their lease.
    pub takeovers_stalled: usize,
    /// Attempts taken over after their replica handed the lease back.
    pub takeovers_handed_back: usize,
    /// From the first submission to the last task finishing, seconds.
    pub batch_seconds: f64,
    /// From the fault to the first retried task finishing, ms.
    pub first_retried_done_ms: Option<f64>,
    /// From the fault to the last task finishing, ms.
    pub batch_done_after_fault_ms: Option<f64>,
    /// Submissions during the outage that got UNAVAILABLE.
    pub outage_unavailable: Option<usize>,
    /// Submissions during the outage that got another error (code: message).
    pub outage_other_errors: Vec<String>,
    /// Submissions during the outage that were acknowledged.
    pub outage_acknowledged: Option<usize>,
    /// Tasks in the store that no acknowledged submission returned.
    pub half_written: Option<usize>,
    /// How long the outage lasted, ms.
    pub outage_ms: Option<f64>,
    /// The exit code of a replica stopped with SIGTERM.
    pub sigterm_exit_code: Option<i32>,
    /// From SIGTERM to the replica's exit, ms.
    pub drain_ms: Option<f64>,
    /// From the replica's exit to its handed-back attempts being taken
    /// over: median and largest, ms.
    pub takeover_median_ms: Option<f64>,
    /// See `takeover_median_ms`.
    pub takeover_max_ms: Option<f64>,
    /// Task events the held watch stream delivered.
    pub watch_events: Option<usize>,
    /// The longest stretch without an event on the held stream, seconds.
    pub watch_longest_quiet_s: Option<f64>,
    /// How long the held stream stayed open, seconds.
    pub watch_open_s: Option<f64>,
    /// The state of the stream's last state change.
    pub watch_final_state: Option<String>,
    /// How the held stream ended, when it ended with an error.
    pub watch_error: Option<String>,
    /// The first failure seen, if any.
    pub first_failure: Option<String>,
    /// The data directory, kept when `AMAOS_CHAOS_KEEP` is set.
    pub kept_dir: Option<String>,
}

impl ChaosReport {
    /// What is wrong with the outcome; empty when every acknowledged task
    /// succeeded with its effect once and the fault's own checks hold.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.acknowledged == 0 {
            out.push("no task was acknowledged".into());
        }
        if self.succeeded != self.acknowledged {
            out.push(format!(
                "{} of {} acknowledged tasks succeeded ({} failed, {} stranded, {} lost); first failure: {}",
                self.succeeded,
                self.acknowledged,
                self.failed,
                self.stranded,
                self.lost,
                self.first_failure.as_deref().unwrap_or("-")
            ));
        }
        if self.repeated_effects > 0 || self.missing_effects > 0 {
            out.push(format!(
                "{} effects repeated, {} missing",
                self.repeated_effects, self.missing_effects
            ));
        }
        if !self.outage_other_errors.is_empty() {
            out.push(format!(
                "submissions during the outage failed otherwise than UNAVAILABLE: {:?}",
                self.outage_other_errors
            ));
        }
        if self.outage_acknowledged.is_some_and(|n| n > 0) {
            out.push("a submission was acknowledged while Redis was down".into());
        }
        if self.half_written.is_some_and(|n| n > 0) {
            out.push(format!(
                "{} tasks in the store were never acknowledged",
                self.half_written.unwrap_or(0)
            ));
        }
        if let Some(code) = self.sigterm_exit_code
            && code != 0
        {
            out.push(format!("the replica stopped with SIGTERM exited {code}"));
        }
        if let Some(error) = &self.watch_error {
            out.push(format!("the held watch stream broke: {error}"));
        }
        if let Some(state) = &self.watch_final_state
            && state != "SUCCEEDED"
        {
            out.push(format!("the held watch stream's last state was {state}"));
        }
        out
    }

    /// One row of the text table.
    fn row(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v / 1000.0));
        format!(
            "{:<20} {:>5} {:>5} {:>6} {:>8} {:>4} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8}  {}\n",
            self.fault,
            self.acknowledged,
            self.succeeded,
            self.failed,
            self.stranded,
            self.lost,
            self.repeated_effects,
            self.missing_effects,
            self.retried,
            ms(self.first_retried_done_ms),
            ms(self.batch_done_after_fault_ms),
            format!("{:.1}", self.batch_seconds),
            self.notes()
        )
    }

    fn notes(&self) -> String {
        let mut notes = Vec::new();
        if let Some(n) = self.outage_unavailable {
            notes.push(format!(
                "{n} submissions during the {:.1} s outage got UNAVAILABLE, {} other, {} half-written, {} lost ({} acknowledged >1 s before the crash)",
                self.outage_ms.unwrap_or(0.0) / 1000.0,
                self.outage_other_errors.len(),
                self.half_written.unwrap_or(0),
                self.lost,
                self.lost_before_fsync_window
            ));
        }
        if let Some(code) = self.sigterm_exit_code {
            notes.push(format!(
                "exit {code} after {:.1} s; {} handed back, taken over in {} ms median, {} ms max after exit",
                self.drain_ms.unwrap_or(0.0) / 1000.0,
                self.takeovers_handed_back,
                self.takeover_median_ms.map_or("-".into(), |v| format!("{v:.0}")),
                self.takeover_max_ms.map_or("-".into(), |v| format!("{v:.0}")),
            ));
        }
        if let Some(events) = self.watch_events {
            notes.push(format!(
                "stream open {:.1} s, {events} events, longest silence {:.1} s, last state {}",
                self.watch_open_s.unwrap_or(0.0),
                self.watch_longest_quiet_s.unwrap_or(0.0),
                self.watch_final_state.as_deref().unwrap_or("-")
            ));
        }
        if self.takeovers_stalled > 0 && self.sigterm_exit_code.is_none() {
            notes.push(format!(
                "{} stalled attempts taken over",
                self.takeovers_stalled
            ));
        }
        if let Some(error) = &self.watch_error {
            notes.push(format!("watch error: {error}"));
        }
        if let Some(failure) = &self.first_failure {
            notes.push(format!("first failure: {failure}"));
        }
        notes.join("; ")
    }
}

/// The reports as a table.
pub fn table(reports: &[ChaosReport]) -> String {
    let mut out = format!(
        "{:<20} {:>5} {:>5} {:>6} {:>8} {:>4} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8}  {}\n",
        "fault",
        "acked",
        "ok",
        "failed",
        "stranded",
        "lost",
        "repeated",
        "missing",
        "retried",
        "retry-ok",
        "all-done",
        "batch",
        "notes"
    );
    for report in reports {
        out.push_str(&report.row());
    }
    out.push_str(
        "retry-ok: s from the fault to the first retried task finishing; all-done: s from the fault to the last task finishing; batch: s from the first submission to the last task finishing\n",
    );
    out
}

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

/// A service process (or Redis) this run started.
struct Proc {
    name: String,
    service: &'static str,
    env: HashMap<String, String>,
    child: Option<Child>,
}

/// The processes of one run; killed when dropped, so a failed run leaves
/// none behind.
struct Cluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    bins: PathBuf,
    procs: Vec<Proc>,
    redis: Option<(Child, u16, PathBuf)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            if let Some(child) = &mut proc.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some((child, _, _)) = &mut self.redis {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    fn new(bins: PathBuf) -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("amaos-chaos-").tempdir()?;
        let path = dir.path().to_owned();
        std::fs::create_dir_all(path.join("logs"))?;
        std::fs::create_dir_all(path.join("teams"))?;
        Ok(Self {
            dir: Some(dir),
            path,
            bins,
            procs: Vec::new(),
            redis: None,
        })
    }

    fn keep(&mut self) -> Option<String> {
        std::env::var_os("AMAOS_CHAOS_KEEP")?;
        let dir = self.dir.take()?;
        Some(dir.keep().display().to_string())
    }

    fn workspaces(&self) -> PathBuf {
        self.path.join("data").join("workspaces")
    }

    fn admin_key(&self) -> PathBuf {
        self.path.join("data").join("admin.key")
    }

    /// Starts `amaos-<service>` as `name`, its output appended to
    /// `logs/<name>.log`.
    fn spawn(
        &mut self,
        name: &str,
        service: &'static str,
        env: &HashMap<String, String>,
    ) -> Result<(), BoxError> {
        let child = self.start(name, service, env)?;
        self.procs.push(Proc {
            name: name.to_owned(),
            service,
            env: env.clone(),
            child: Some(child),
        });
        Ok(())
    }

    fn start(
        &self,
        name: &str,
        service: &str,
        env: &HashMap<String, String>,
    ) -> Result<Child, BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("logs").join(format!("{name}.log")))?;
        let program = self.bins.join(format!("amaos-{service}"));
        Ok(Command::new(&program)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?)
    }

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("a process this run started")
    }

    /// SIGKILL of `name`.
    fn kill9(&mut self, name: &str) {
        if let Some(mut child) = self.proc_mut(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `name` again with its environment.
    fn restart(&mut self, name: &str) -> Result<(), BoxError> {
        let (service, env) = {
            let p = self.proc_mut(name);
            (p.service, p.env.clone())
        };
        let child = self.start(name, service, &env)?;
        self.proc_mut(name).child = Some(child);
        Ok(())
    }

    /// A Redis server of its own, AOF with fsync every second.
    fn start_redis(&mut self) -> Result<String, BoxError> {
        let port = free_port()?;
        let dir = self.path.join("redis");
        std::fs::create_dir_all(&dir)?;
        let child = redis_server(port, &dir)?;
        self.redis = Some((child, port, dir));
        wait_for_port(port, Duration::from_secs(20))?;
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    fn kill_redis(&mut self) {
        if let Some((child, _, _)) = &mut self.redis {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart_redis(&mut self) -> Result<(), BoxError> {
        let Some((child, port, dir)) = &mut self.redis else {
            return Err("no Redis of this run".into());
        };
        *child = redis_server(*port, dir)?;
        wait_for_port(*port, Duration::from_secs(20))
    }
}

fn redis_server(port: u16, dir: &Path) -> Result<Child, BoxError> {
    Ok(Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (is it installed?): {e}"))?)
}

fn wait_for_port(port: u16, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The environment of the six `amaos-<svc>` processes on loopback: the data
/// directory, the teams directory, the embedding model, JSON logs, and a
/// gRPC and an admin port of its own for each service (with its URL).
pub fn service_env(
    data_dir: &Path,
    teams_dir: &Path,
    model_dir: &Path,
) -> Result<HashMap<String, String>, BoxError> {
    let mut env = HashMap::new();
    env.insert("AMAOS_DATA_DIR".into(), data_dir.display().to_string());
    env.insert(
        "AMAOS_AGENTS__TEAMS_DIR".into(),
        teams_dir.display().to_string(),
    );
    env.insert("AMAOS_LOG__FORMAT".into(), "json".into());
    env.insert(
        "AMAOS_EMBED_MODEL_DIR".into(),
        model_dir.display().to_string(),
    );
    for service in [
        "auth",
        "router",
        "memory",
        "tools",
        "agents",
        "orchestrator",
    ] {
        let upper = service.to_uppercase();
        let port = free_port()?;
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
            format!("127.0.0.1:{}", free_port()?),
        );
    }
    Ok(env)
}

/// Ports for the six services and the settings of a chaos run: short leases
/// and heartbeats, generous retries, capacity for the whole batch at once.
fn base_env(
    path: &Path,
    options: &ChaosOptions,
    redis_url: &str,
) -> Result<HashMap<String, String>, BoxError> {
    let mut env = service_env(
        &path.join("data"),
        &path.join("teams"),
        &options.embed_model_dir,
    )?;
    let tasks = options.tasks.max(1);
    let run = amaos_mesh::new_id();
    for (k, v) in [
        ("AMAOS_ROUTER__BACKEND", "redis".to_owned()),
        ("AMAOS_ROUTER__REDIS_URL", redis_url.to_owned()),
        ("AMAOS_ROUTER__REDIS_PREFIX", format!("amaos-chaos-{run}-r")),
        ("AMAOS_ORCHESTRATOR__BACKEND", "redis".to_owned()),
        ("AMAOS_ORCHESTRATOR__REDIS_URL", redis_url.to_owned()),
        (
            "AMAOS_ORCHESTRATOR__REDIS_PREFIX",
            format!("amaos-chaos-{run}-o"),
        ),
        ("AMAOS_ORCHESTRATOR__LEASE", "1s".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_MAX_ATTEMPTS", "10".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_INITIAL_BACKOFF", "100ms".into()),
        ("AMAOS_ORCHESTRATOR__RETRY_MAX_BACKOFF", "500ms".into()),
        (
            "AMAOS_ORCHESTRATOR__MAX_IN_FLIGHT",
            (tasks + 64).to_string(),
        ),
        (
            "AMAOS_ORCHESTRATOR__MAX_RUNNING_PER_TENANT",
            (tasks * 2 + 64).to_string(),
        ),
        ("AMAOS_ORCHESTRATOR__TENANT_RATE", "0".into()),
        ("AMAOS_ROUTER__HEARTBEAT_INTERVAL", "200ms".into()),
        ("AMAOS_ROUTER__WORKER_TTL", "1s".into()),
        ("AMAOS_LIMITS__DRAIN_TIMEOUT", "1s".into()),
        (
            "AMAOS_LIMITS__MAX_CONCURRENT_REQUESTS",
            (tasks * 4 + 512).to_string(),
        ),
        // One worker holds the whole batch once the other is killed.
        ("AMAOS_AGENTS__CAPACITY", tasks.max(64).to_string()),
        (
            "AMAOS_TOOLS__MAX_SANDBOXES",
            (tasks + 16).min(1024).to_string(),
        ),
        (
            "AMAOS_TOOLS__MAX_SANDBOXES_PER_TENANT",
            (tasks + 16).min(1024).to_string(),
        ),
        (
            "AMAOS_TOOLS__MAX_WORKSPACES_PER_TENANT",
            (tasks * 2 + 64).to_string(),
        ),
        ("AMAOS_TOOLS__CALLS_PER_MINUTE", "0".into()),
    ] {
        env.insert(k.into(), v);
    }
    Ok(env)
}

/// Another instance of `service` on ports of its own.
fn own_ports(
    env: &HashMap<String, String>,
    service: &str,
) -> Result<(HashMap<String, String>, String), BoxError> {
    let upper = service.to_uppercase();
    let mut env = env.clone();
    let port = free_port()?;
    env.insert(
        format!("AMAOS_{upper}__LISTEN"),
        format!("127.0.0.1:{port}"),
    );
    env.insert(
        format!("AMAOS_{upper}__ADMIN_LISTEN"),
        format!("127.0.0.1:{}", free_port()?),
    );
    let url = format!("http://127.0.0.1:{port}");
    if service == "agents" {
        // What the worker registers with the router.
        env.insert("AMAOS_AGENTS__URL".into(), url.clone());
    }
    Ok((env, url))
}

async fn wait_serving(url: &str, service: &str, within: Duration) -> Result<(), BoxError> {
    let name = match service {
        "orchestrator" => "amaos.orchestrator.v1.OrchestratorService",
        "router" => "amaos.router.v1.RouterService",
        "agents" => "amaos.agents.v1.AgentsService",
        "tools" => "amaos.tools.v1.ToolsService",
        "memory" => "amaos.memory.v1.MemoryService",
        _ => "amaos.auth.v1.AuthService",
    };
    let deadline = Instant::now() + within;
    loop {
        let channel = Endpoint::from_shared(url.to_owned())?.connect_lazy();
        let status = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await;
        if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{service} at {url} did not start serving").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_admin_key(path: &Path) -> Result<String, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(key) = std::fs::read_to_string(path)
            && !key.trim().is_empty()
        {
            return Ok(key.trim().to_owned());
        }
        if Instant::now() > deadline {
            return Err("auth wrote no admin key".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_workers(router_url: &str, key: &str, n: usize) -> Result<(), BoxError> {
    let mut router =
        RouterServiceClient::new(Endpoint::from_shared(router_url.to_owned())?.connect_lazy());
    // Generous: on a loaded two-core machine eight debug binaries start at
    // once, one of them loading the embedding model.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let workers = router
            .list_workers(with_key(key, router::ListWorkersRequest::default()))
            .await
            .map(|r| r.into_inner().workers.len())
            .unwrap_or(0);
        if workers >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{n} workers did not register ({workers} did)").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running mesh of one fault's shape.
struct Mesh {
    env: HashMap<String, String>,
    key: String,
    /// The replica a fault stops (the only one with one replica).
    first_url: String,
    /// The replica that survives (tools and memory call it); equal to
    /// `first_url` with one replica.
    survivor_url: String,
}

/// Starts the services for `fault`: two agents workers (one for the watch),
/// one orchestrator replica or two, one tools replica or two.
///
/// With two replicas, `orchestrator.url` — which the tools and memory
/// services dial to check that a run token's attempt is still live — names
/// the replica that survives: a service's URL is one address, and the
/// replica the fault kills is on its own port, so a run's tool calls keep
/// being checked while it is gone. (A deployment gives that URL to a load
/// balancer or a Kubernetes Service over every replica.)
async fn start(
    fault: Fault,
    options: &ChaosOptions,
    cluster: &mut Cluster,
) -> Result<Mesh, BoxError> {
    let redis_url = if fault == Fault::RedisCrash {
        cluster.start_redis()?
    } else {
        options.redis_url.clone()
    };
    let mut env = base_env(&cluster.path, options, &redis_url)?;
    let mut first_url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut first_env = env.clone();
    if fault.replicas() == 2 {
        // The first replica on ports of its own; everyone else is told of
        // the second.
        let (replica, url) = own_ports(&env, "orchestrator")?;
        first_env = replica;
        first_url = url;
        first_env.insert(
            "AMAOS_ORCHESTRATOR__URL".into(),
            env["AMAOS_ORCHESTRATOR__URL"].clone(),
        );
    }
    if fault == Fault::ReplicaSigterm {
        // A long lease: only the hand-back explains a quick takeover.
        for e in [&mut env, &mut first_env] {
            e.insert("AMAOS_ORCHESTRATOR__LEASE".into(), "30s".into());
        }
    }
    let survivor_url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    let mut ready: Vec<(String, &'static str)> = Vec::new();
    for service in ["auth", "router", "memory", "tools"] {
        cluster.spawn(service, service, &env)?;
        ready.push((
            env[&format!("AMAOS_{}__URL", service.to_uppercase())].clone(),
            service,
        ));
    }
    let mut second_worker = env.clone();
    if fault == Fault::ToolsReplica {
        let (tools2, url) = own_ports(&env, "tools")?;
        cluster.spawn("tools-2", "tools", &tools2)?;
        ready.push((url.clone(), "tools"));
        second_worker.insert("AMAOS_TOOLS__URL".into(), url);
    }
    cluster.spawn("orchestrator", "orchestrator", &first_env)?;
    ready.push((first_url.clone(), "orchestrator"));
    if fault.replicas() == 2 && fault != Fault::WatchQuiet {
        cluster.spawn("orchestrator-2", "orchestrator", &env)?;
        ready.push((survivor_url.clone(), "orchestrator"));
    }
    cluster.spawn("agents", "agents", &env)?;
    ready.push((env["AMAOS_AGENTS__URL"].clone(), "agents"));
    let workers = if fault == Fault::WatchQuiet { 1 } else { 2 };
    if workers == 2 {
        let (worker, url) = own_ports(&second_worker, "agents")?;
        cluster.spawn("agents-2", "agents", &worker)?;
        ready.push((url, "agents"));
    }
    for (url, service) in &ready {
        wait_serving(url, service, Duration::from_secs(90)).await?;
    }
    let key = read_admin_key(&cluster.admin_key()).await?;
    wait_workers(&env["AMAOS_ROUTER__URL"], &key, workers).await?;
    Ok(Mesh {
        env,
        key,
        first_url,
        survivor_url,
    })
}

/// One acknowledged submission.
struct Acked {
    id: String,
    at: SystemTime,
}

async fn submit(
    orchestrator: &mut OrchestratorServiceClient<Channel>,
    key: &str,
    spec: &str,
    input: String,
) -> Result<String, tonic::Status> {
    orchestrator
        .submit_task(with_key(
            key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::SpecYaml(spec.into())),
                }),
                input,
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().task_id)
}

/// Submits `n` tasks of `spec`, four at a time, spread over `urls`.
async fn submit_batch(
    urls: &[String],
    key: &str,
    spec: &'static str,
    n: usize,
) -> (Vec<Acked>, Vec<String>) {
    let clients: Vec<_> = urls.iter().map(|u| client(u)).collect();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let mut orchestrator = clients[i % clients.len()].clone();
            let key = key.to_owned();
            async move {
                submit(&mut orchestrator, &key, spec, format!("effect-{i}"))
                    .await
                    .map(|id| Acked {
                        id,
                        at: SystemTime::now(),
                    })
                    .map_err(|s| format!("submitting: {:?}: {}", s.code(), s.message()))
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(a) => acked.push(a),
            Err(e) => errors.push(e),
        }
    }
    (acked, errors)
}

async fn list_all(url: &str, key: &str) -> Result<Vec<pb::Task>, tonic::Status> {
    let mut orchestrator = client(url);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = orchestrator
            .list_tasks(with_key(
                key,
                pb::ListTasksRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        out.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Waits until every acknowledged task is finished, or `timeout`; returns
/// the store's tasks by id.
async fn settle(
    url: &str,
    key: &str,
    acked: &[Acked],
    timeout: Duration,
) -> HashMap<String, pb::Task> {
    let deadline = Instant::now() + timeout;
    let mut last = HashMap::new();
    loop {
        if let Ok(tasks) = list_all(url, key).await {
            last = tasks.into_iter().map(|t| (t.task_id.clone(), t)).collect();
            let done = acked.iter().all(|a| {
                last.get(&a.id)
                    .is_some_and(|t: &pb::Task| terminal(t.state))
            });
            if done {
                return last;
            }
        }
        if Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// All of a finished task's events.
async fn events(url: &str, key: &str, id: &str) -> Result<Vec<pb::TaskEvent>, tonic::Status> {
    let mut stream = client(url)
        .watch_task(with_key(
            key,
            pb::WatchTaskRequest {
                task_id: id.into(),
                after_sequence: 0,
            },
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        if let Some(e) = r.event {
            out.push(e);
        }
    }
    Ok(out)
}

/// Counts outcomes and effects of the batch into `report`.
fn count(
    report: &mut ChaosReport,
    acked: &[Acked],
    tasks: &HashMap<String, pb::Task>,
    workspaces: &Path,
    fault_at: SystemTime,
) {
    report.acknowledged = acked.len();
    let mut first_failure = report.first_failure.take();
    let mut finished = Vec::new();
    let mut retried_finished = Vec::new();
    for a in acked {
        let Some(task) = tasks.get(&a.id) else {
            report.lost += 1;
            if a.at + Duration::from_secs(1) < fault_at {
                report.lost_before_fsync_window += 1;
            }
            first_failure.get_or_insert_with(|| format!("task {} is lost", a.id));
            continue;
        };
        if task.attempt > 1 {
            report.retried += 1;
        }
        if let Some(at) = to_system_time(task.finished_at.as_ref()) {
            finished.push(at);
            if task.attempt > 1 {
                retried_finished.push(at);
            }
        }
        let expected = format!("done with {}", task.input);
        match pb::TaskState::try_from(task.state) {
            Ok(pb::TaskState::Succeeded) if task.output == expected => report.succeeded += 1,
            _ if !terminal(task.state) => {
                report.stranded += 1;
                first_failure.get_or_insert_with(|| {
                    format!(
                        "task {} is still {} (attempt {})",
                        a.id,
                        crate::render::state_name(task.state),
                        task.attempt
                    )
                });
            }
            _ => {
                report.failed += 1;
                first_failure.get_or_insert_with(|| {
                    format!(
                        "task {} ended {} after {} attempts: {}{}",
                        a.id,
                        crate::render::state_name(task.state),
                        task.attempt,
                        task.error
                            .as_ref()
                            .map(|e| e.message.as_str())
                            .unwrap_or(""),
                        if task.output.is_empty() {
                            String::new()
                        } else {
                            format!(" (output {:?})", task.output)
                        }
                    )
                });
            }
        }
        let file = workspaces.join("default").join(&a.id).join("effects.txt");
        let lines = std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        match lines {
            1 => {}
            0 => {
                report.missing_effects += 1;
                first_failure.get_or_insert_with(|| format!("task {}'s effect is missing", a.id));
            }
            n => {
                report.repeated_effects += 1;
                first_failure
                    .get_or_insert_with(|| format!("task {}'s effect happened {n} times", a.id));
            }
        }
    }
    report.first_failure = first_failure;
    let first_ack = acked.iter().map(|a| a.at).min();
    if let (Some(first), Some(last)) = (first_ack, finished.iter().max()) {
        report.batch_seconds = millis_between(first, *last) / 1000.0;
        report.batch_done_after_fault_ms = Some(millis_between(fault_at, *last));
    }
    report.first_retried_done_ms = retried_finished
        .iter()
        .filter(|t| **t >= fault_at)
        .min()
        .map(|t| millis_between(fault_at, *t));
}

/// Reads the events of every retried task: counts takeovers, and for the
/// hand-backs the time from `exit_at` to the takeover.
async fn takeovers(
    report: &mut ChaosReport,
    url: &str,
    key: &str,
    tasks: &HashMap<String, pb::Task>,
    exit_at: Option<SystemTime>,
) {
    let retried: Vec<String> = tasks
        .values()
        .filter(|t| t.attempt > 1)
        .map(|t| t.task_id.clone())
        .collect();
    let logs: Vec<_> = futures::stream::iter(retried)
        .map(|id| async move { events(url, key, &id).await })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut delays = Vec::new();
    for log in logs.into_iter().flatten() {
        for e in log {
            let Some(Kind::StateChanged(change)) = &e.kind else {
                continue;
            };
            if change.reason.contains("handed its lease back") {
                report.takeovers_handed_back += 1;
                if let (Some(exit), Some(at)) = (exit_at, to_system_time(e.at.as_ref())) {
                    delays.push(millis_between(exit, at));
                }
            } else if change.reason.contains("stalled") {
                report.takeovers_stalled += 1;
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    if !delays.is_empty() {
        report.takeover_median_ms = Some(crate::bench::percentile(&delays, 0.5));
        report.takeover_max_ms = delays.last().copied();
    }
}

/// Waits until every acknowledged task's effects file exists, then a
/// second more so the last calls' results are recorded in the journal.
async fn wait_for_effects(workspaces: &Path, acked: &[Acked]) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = acked
            .iter()
            .filter(|a| {
                !workspaces
                    .join("default")
                    .join(&a.id)
                    .join("effects.txt")
                    .exists()
            })
            .count();
        if missing == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{missing} tasks made no tool call within 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `fault` against a fresh mesh and reports what survived; errors are
/// failures to set the run up, not findings.
pub async fn run(fault: Fault, options: &ChaosOptions) -> Result<ChaosReport, BoxError> {
    let bins = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => bin_dir()?,
    };
    let mut cluster = Cluster::new(bins)?;
    let result = match start(fault, options, &mut cluster).await {
        Ok(mesh) if fault == Fault::WatchQuiet => watch_quiet(&mesh, &mut cluster).await,
        Ok(mesh) => batch(fault, &mesh, &mut cluster, options).await,
        Err(error) => Err(error),
    };
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

async fn batch(
    fault: Fault,
    mesh: &Mesh,
    cluster: &mut Cluster,
    options: &ChaosOptions,
) -> Result<ChaosReport, BoxError> {
    let mut report = ChaosReport {
        fault: fault.name().into(),
        ..ChaosReport::default()
    };
    let spec = match fault {
        Fault::ToolsRestart | Fault::ToolsReplica => WINDOW_CREW,
        _ => EFFECT_CREW,
    };
    let urls = if fault.replicas() == 2 {
        vec![mesh.first_url.clone(), mesh.survivor_url.clone()]
    } else {
        vec![mesh.first_url.clone()]
    };
    let key = mesh.key.clone();
    let workspaces = cluster.workspaces();
    let (acked, errors) = submit_batch(&urls, &key, spec, options.tasks).await;
    if let Some(error) = errors.first() {
        return Err(format!(
            "{} submissions failed before the fault: {error}",
            errors.len()
        )
        .into());
    }
    let mut exit_at = None;
    let fault_at = match fault {
        Fault::WorkerKill => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let at = SystemTime::now();
            cluster.kill9("agents-2");
            at
        }
        Fault::ReplicaKill => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let at = SystemTime::now();
            cluster.kill9("orchestrator");
            at
        }
        Fault::WorkerThenReplica => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let at = SystemTime::now();
            cluster.kill9("agents-2");
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.kill9("orchestrator");
            at
        }
        Fault::ToolsRestart => {
            wait_for_effects(&workspaces, &acked).await?;
            let at = SystemTime::now();
            cluster.kill9("tools");
            cluster.restart("tools")?;
            wait_serving(
                &mesh.env["AMAOS_TOOLS__URL"],
                "tools",
                Duration::from_secs(60),
            )
            .await?;
            cluster.kill9("agents-2");
            at
        }
        Fault::ToolsReplica => {
            wait_for_effects(&workspaces, &acked).await?;
            let at = SystemTime::now();
            cluster.kill9("tools-2");
            cluster.kill9("agents-2");
            at
        }
        Fault::RedisCrash => {
            // Every acknowledgement is more than a second old: AOF with
            // fsync every second must have kept them all.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let at = SystemTime::now();
            let started = Instant::now();
            cluster.kill_redis();
            let orchestrator = client(&mesh.first_url);
            let outage: Vec<_> = futures::stream::iter(0..20)
                .map(|i| {
                    let mut orchestrator = orchestrator.clone();
                    let key = key.clone();
                    async move { submit(&mut orchestrator, &key, spec, format!("outage-{i}")).await }
                })
                .buffer_unordered(20)
                .collect()
                .await;
            let mut unavailable = 0;
            let mut accepted = 0;
            for r in outage {
                match r {
                    Ok(_) => accepted += 1,
                    Err(s) if s.code() == tonic::Code::Unavailable => unavailable += 1,
                    Err(s) => {
                        report
                            .outage_other_errors
                            .push(format!("{:?}: {}", s.code(), s.message()))
                    }
                }
            }
            report.outage_unavailable = Some(unavailable);
            report.outage_acknowledged = Some(accepted);
            cluster.restart_redis()?;
            report.outage_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            at
        }
        Fault::ReplicaSigterm => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let at = SystemTime::now();
            let started = Instant::now();
            let child = cluster
                .proc_mut("orchestrator")
                .child
                .as_mut()
                .ok_or("the first replica is not running")?;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() > deadline {
                    return Err("the replica did not exit within 60 s of SIGTERM".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            exit_at = Some(SystemTime::now());
            report.drain_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            report.sigterm_exit_code = Some(status.code().unwrap_or(-1));
            cluster.proc_mut("orchestrator").child = None;
            at
        }
        Fault::WatchQuiet => unreachable!("the watch runs no batch"),
    };
    let tasks = settle(&mesh.survivor_url, &key, &acked, options.settle_timeout).await;
    count(&mut report, &acked, &tasks, &workspaces, fault_at);
    if fault == Fault::RedisCrash {
        let ids: HashSet<&str> = acked.iter().map(|a| a.id.as_str()).collect();
        report.half_written = Some(tasks.keys().filter(|id| !ids.contains(id.as_str())).count());
    }
    takeovers(&mut report, &mesh.survivor_url, &key, &tasks, exit_at).await;
    Ok(report)
}

/// A task whose one model call takes 12 s, started on the first replica; a
/// stream on the second replica watches it while the first is killed.
async fn watch_quiet(mesh: &Mesh, cluster: &mut Cluster) -> Result<ChaosReport, BoxError> {
    let mut report = ChaosReport {
        fault: Fault::WatchQuiet.name().into(),
        ..ChaosReport::default()
    };
    let key = mesh.key.clone();
    let submitted = SystemTime::now();
    let id = submit(
        &mut client(&mesh.first_url),
        &key,
        QUIET_CREW,
        "quiet".into(),
    )
    .await
    .map_err(|s| format!("submitting: {s}"))?;
    let acked = [Acked {
        id: id.clone(),
        at: submitted,
    }];
    // Running on the first replica (the only one so far).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = client(&mesh.first_url)
            .get_task(with_key(
                &key,
                pb::GetTaskRequest {
                    task_id: id.clone(),
                },
            ))
            .await?
            .into_inner()
            .task
            .ok_or("no task")?;
        if task.state == pb::TaskState::Running as i32 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the quiet task did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let env = mesh.env.clone();
    cluster.spawn("orchestrator-2", "orchestrator", &env)?;
    wait_serving(&mesh.survivor_url, "orchestrator", Duration::from_secs(60)).await?;
    let mut stream = client(&mesh.survivor_url)
        .watch_task(with_key(
            &key,
            pb::WatchTaskRequest {
                task_id: id.clone(),
                after_sequence: 0,
            },
        ))
        .await?
        .into_inner();
    let opened = Instant::now();
    let reader = tokio::spawn(async move {
        let mut times = vec![Instant::now()];
        let mut events = Vec::new();
        let ended = loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    if let Some(e) = r.event {
                        times.push(Instant::now());
                        events.push(e);
                    }
                }
                Ok(None) => break None,
                Err(s) => break Some(format!("{:?}: {}", s.code(), s.message())),
            }
        };
        times.push(Instant::now());
        (times, events, ended)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fault_at = SystemTime::now();
    cluster.kill9("orchestrator");
    let (times, events, ended) = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .map_err(|_| "the watch stream was still open 180 s after the kill")??;
    report.watch_open_s = Some(opened.elapsed().as_secs_f64());
    report.watch_events = Some(events.len());
    report.watch_longest_quiet_s = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .max_by(f64::total_cmp);
    report.watch_error = ended;
    report.watch_final_state = events.iter().rev().find_map(|e| match &e.kind {
        Some(Kind::StateChanged(c)) => Some(crate::render::state_name(c.to).to_owned()),
        _ => None,
    });
    let tasks = settle(&mesh.survivor_url, &key, &acked, Duration::from_secs(60)).await;
    count(
        &mut report,
        &acked,
        &tasks,
        Path::new("/nonexistent"),
        fault_at,
    );
    // The quiet team has no tool: there is no effect to count.
    report.missing_effects = 0;
    report.first_failure = report
        .first_failure
        .filter(|f| !f.contains("effect is missing"));
    takeovers(&mut report, &mesh.survivor_url, &key, &tasks, None).await;
    Ok(report)
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
