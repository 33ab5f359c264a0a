//! `amaos bench`: starts the whole mesh in this process (on loopback, real
//! gRPC between services), runs a scenario from a client in the same process,
//! and prints throughput, end-to-end latency percentiles and peak memory.
//!
//! Scenarios, on the replay model without tools or memory: `crew`, a 3-agent
//! sequential crew with 3 tasks; `group_chat`, 3 agents in round robin,
//! stopping after 6 messages. Each task is submitted and watched until it
//! finishes, `concurrency` at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amaos_mesh::caller;
use amaos_mesh::config::{Config, StoreBackend};
use amaos_proto::auth::v1 as auth;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use tokio_util::sync::CancellationToken;

use crate::up::Mesh;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The scenario (only `crew` for now).
    pub scenario: String,
    /// `memory` or `redis`.
    pub backend: StoreBackend,
    /// Tasks in flight at once.
    pub concurrency: usize,
    /// Tasks in all (0 with a duration: as many as fit).
    pub tasks: u64,
    /// Stop submitting after this long.
    pub duration: Option<Duration>,
    /// How long the replay model waits per call.
    pub model_latency: Duration,
    /// The Redis server for `backend = redis`.
    pub redis_url: String,
    /// The embedding model the mesh's memory service loads (the benchmark's
    /// own data directory is a fresh temporary one).
    pub embed_model_dir: std::path::PathBuf,
    /// When the audit trail's appends reach the disk (the configured
    /// `auth.audit_durability`: `always` by default).
    pub audit_durability: amaos_mesh::config::Durability,
    /// The services in this process, or as separate processes.
    pub topology: Topology,
}

/// How the mesh under test runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// Every service in the benchmark's own process, on loopback gRPC.
    #[default]
    InProcess,
    /// The services as separate processes on Redis: two orchestrator
    /// replicas and two agents workers, as a cluster runs them.
    Processes,
}

/// The figures of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// The scenario.
    pub scenario: String,
    /// The backend.
    pub backend: String,
    /// Tasks in flight at once.
    pub concurrency: usize,
    /// Tasks that finished.
    pub tasks: u64,
    /// Tasks that did not succeed.
    pub failed: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Finished tasks per second.
    pub tasks_per_s: f64,
    /// Median end-to-end latency (submit → finished), ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Peak resident memory of this process (the whole mesh and the client), MiB.
    pub peak_rss_mib: f64,
    /// Replay model latency per call, ms.
    pub model_latency_ms: u64,
    /// CPU time (user and system) of this process while tasks ran, per
    /// finished task, ms: the whole mesh and the client, start-up excluded.
    pub cpu_ms_per_task: f64,
    /// The audit trail's durability during the run.
    pub audit_durability: String,
    /// `concurrency ÷ (calls per task × model latency)`, when the latency is set.
    pub ideal_tasks_per_s: Option<f64>,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
    /// What the mesh sent to Redis, per finished task (`backend = redis`).
    pub redis: Option<RedisCost>,
    /// `in-process` or `processes`.
    pub topology: String,
    /// Per service process (`--topology processes`): peak RSS and CPU.
    pub processes: Vec<ServiceUse>,
}

/// What one service process used during a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceUse {
    /// `orchestrator`, `orchestrator-2`, `agents`, …
    pub name: String,
    /// Peak resident memory since it started, MiB.
    pub peak_rss_mib: f64,
    /// CPU time while tasks ran, per finished task, ms.
    pub cpu_ms_per_task: f64,
}

/// Redis traffic per finished task: what the mesh's backends sent, and what
/// the server ran and spent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RedisCost {
    /// Round trips from the mesh (a pipeline or transaction counts once).
    pub round_trips_per_task: f64,
    /// Commands the mesh sent (a script call counts once).
    pub commands_per_task: f64,
    /// What the server ran (scripts' own calls included) and its CPU time;
    /// `None` when the server's INFO could not be read.
    pub server: Option<crate::bench_redis::ServerCost>,
}

fn chat_spec(latency: Duration) -> String {
    let latency = if latency.is_zero() {
        String::new()
    } else {
        format!("    replay_latency: {}ms\n", latency.as_millis())
    };
    let agent = |name: &str| {
        format!(
            "  - name: {name}\n    role: {name}\n    goal: discuss\n    model: replay\n{latency}    replay:\n      - say: \"{name} one on {{input}}\"\n      - say: \"{name} two on {{input}}\"\n"
        )
    };
    format!(
        "name: bench-chat\ndescription: three agents, round robin, six messages\nagents:\n{}{}{}group_chat:\n  manager: round_robin\n  task: \"discuss {{input}}\"\n  termination:\n    any:\n      - max_messages: 6\n",
        agent("alpha"),
        agent("beta"),
        agent("gamma")
    )
}

pub(crate) fn crew_spec(latency: Duration) -> String {
    let latency = if latency.is_zero() {
        String::new()
    } else {
        format!("    replay_latency: {}ms\n", latency.as_millis())
    };
    let agent = |name: &str| {
        format!(
            "  - name: {name}\n    role: {name}\n    goal: do the {name} part\n    model: replay\n{latency}    replay:\n      - say: \"{name} done with {{input}}\"\n"
        )
    };
    format!(
        "name: bench-crew\ndescription: three agents, three tasks, no tools\nagents:\n{}{}{}crew:\n  process: sequential\n  tasks:\n    - {{name: plan, description: \"plan {{input}}\", agent: planner}}\n    - {{name: build, description: \"build {{input}}\", agent: builder, context: [plan]}}\n    - {{name: check, description: \"check {{input}}\", agent: checker, context: [build]}}\n",
        agent("planner"),
        agent("builder"),
        agent("checker")
    )
}

/// Peak resident set of this process, in MiB (Linux), from /proc.
pub(crate) fn peak_rss_mib() -> f64 {
    peak_rss_in(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// The peak resident set in a /proc/<pid>/status, in MiB; 0 without one.
pub(crate) fn peak_rss_in(status: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user and system) this process has used, in seconds (Linux),
/// from /proc; 0 where it cannot be read.
pub(crate) fn cpu_seconds() -> f64 {
    cpu_seconds_in(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The CPU seconds (user and system) in a /proc/<pid>/stat; 0 without them.
pub(crate) fn cpu_seconds_in(stat: &str) -> f64 {
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // The kernel reports in USER_HZ, 100 on every Linux ABI in use.
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

/// The `p` quantile (0 to 1) of sorted values; 0 for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs a benchmark; errors are setup failures.
pub async fn run(options: BenchOptions) -> Result<BenchReport, amaos_mesh::BoxError> {
    let (team, spec, calls) = match options.scenario.as_str() {
        "crew" => ("bench-crew", crew_spec(options.model_latency), 3),
        "group_chat" => ("bench-chat", chat_spec(options.model_latency), 6),
        other => {
            return Err(format!("unknown scenario `{other}`; scenarios: crew, group_chat").into());
        }
    };
    match options.topology {
        Topology::InProcess => {
            let (mesh, shutdown, _dir) = start_mesh(&options, team, &spec).await?;
            let result = async {
                let dialer = amaos_mesh::client::Dialer::new(&mesh.config, "cli")?;
                let target = Target {
                    admin_key: std::fs::read_to_string(mesh.config.data_dir.join("admin.key"))?
                        .trim()
                        .to_owned(),
                    auth: dialer.channel("auth", &mesh.config.auth.url)?,
                    orchestrators: (0..connections(options.concurrency))
                        .map(|_| dialer.channel("orchestrator", &mesh.config.orchestrator.url))
                        .collect::<Result<_, _>>()?,
                    processes: None,
                };
                drive(&target, &options, team, calls).await
            }
            .await;
            stop_mesh(mesh, shutdown).await;
            result
        }
        Topology::Processes => {
            if options.backend != StoreBackend::Redis {
                return Err(
                    "--topology processes runs the replicas on shared state: add --backend redis"
                        .into(),
                );
            }
            let processes = crate::chaos::start_processes(
                &options.redis_url,
                &options.embed_model_dir,
                options.concurrency,
                team,
                &spec,
            )
            .await?;
            let limits = amaos_mesh::config::Limits::default();
            let mut orchestrators = Vec::new();
            for _ in 0..connections(options.concurrency) {
                for url in &processes.orchestrator_urls {
                    orchestrators.push(amaos_mesh::client::channel(url, &limits)?);
                }
            }
            let target = Target {
                admin_key: processes.admin_key.clone(),
                auth: amaos_mesh::client::channel(&processes.auth_url, &limits)?,
                orchestrators,
                processes: Some(&processes),
            };
            drive(&target, &options, team, calls).await
        }
    }
}

/// One connection per 500 tasks in flight, as a fleet of clients would have.
fn connections(concurrency: usize) -> usize {
    concurrency.div_ceil(500).max(1)
}

/// The mesh a run drives.
struct Target<'a> {
    admin_key: String,
    auth: amaos_mesh::client::MeshChannel,
    /// Connections to the orchestrator, spread over its replicas.
    orchestrators: Vec<amaos_mesh::client::MeshChannel>,
    /// The service processes, for `--topology processes`.
    processes: Option<&'a crate::chaos::ProcessMesh>,
}

impl Target<'_> {
    /// Round trips to Redis and commands the mesh has sent so far.
    async fn redis_sent(&self) -> Result<(u64, u64), amaos_mesh::BoxError> {
        match self.processes {
            Some(processes) => processes.redis_sent().await,
            None => Ok(amaos_mesh::metrics::redis_sent_so_far()),
        }
    }

    /// CPU seconds so far of each service process.
    fn usage(&self) -> Vec<crate::chaos::ProcessUse> {
        self.processes.map(|p| p.usage()).unwrap_or_default()
    }
}

/// A benchmark's mesh: every listener on port 0, the team `team` from
/// `spec`, limits sized for `options.concurrency`. The directory must
/// outlive the mesh.
pub(crate) async fn start_mesh(
    options: &BenchOptions,
    team: &str,
    spec: &str,
) -> Result<(Mesh, CancellationToken, tempfile::TempDir), amaos_mesh::BoxError> {
    let dir = tempfile::tempdir()?;
    let teams = dir.path().join("teams");
    std::fs::create_dir_all(&teams)?;
    std::fs::write(teams.join(format!("{team}.yaml")), spec)?;

    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let any = "127.0.0.1:0".parse()?;
    for (listen, admin) in [
        (
            &mut config.orchestrator.listen,
            &mut config.orchestrator.admin_listen,
        ),
        (&mut config.router.listen, &mut config.router.admin_listen),
        (&mut config.agents.listen, &mut config.agents.admin_listen),
        (&mut config.tools.listen, &mut config.tools.admin_listen),
        (&mut config.memory.listen, &mut config.memory.admin_listen),
        (&mut config.auth.listen, &mut config.auth.admin_listen),
        (&mut config.gateway.listen, &mut config.gateway.admin_listen),
    ] {
        *listen = any;
        *admin = None;
    }
    config.agents.teams_dir = teams;
    config.memory.embed_model_dir = Some(options.embed_model_dir.clone());
    let in_flight = options.concurrency.max(1);
    config.agents.capacity = (in_flight as u32 * 2).max(64);
    config.orchestrator.max_in_flight = in_flight * 2 + 64;
    config.orchestrator.max_running_per_tenant = (in_flight as u32 * 2).max(64);
    config.orchestrator.tenant_rate = 0.0;
    config.orchestrator.backend = options.backend;
    config.orchestrator.redis_url = options.redis_url.clone();
    config.orchestrator.redis_prefix = format!("amaos-bench-{}", amaos_mesh::new_id());
    config.orchestrator.retention = Duration::from_secs(600);
    config.orchestrator.max_tasks = (options.tasks as usize + in_flight).max(100_000);
    config.limits.max_concurrent_requests = in_flight * 4 + 512;
    config.auth.audit_durability = options.audit_durability;
    config.validate()?;

    let shutdown = CancellationToken::new();
    let mesh = Mesh::start(config, shutdown.clone()).await?;
    Ok((mesh, shutdown, dir))
}

/// Stops a benchmark's mesh.
pub(crate) async fn stop_mesh(mesh: Mesh, shutdown: CancellationToken) {
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), mesh.wait(shutdown)).await;
    if !matches!(stopped, Ok(Ok(()))) {
        tracing::warn!("the mesh did not stop cleanly after the benchmark");
    }
}

async fn drive(
    target: &Target<'_>,
    options: &BenchOptions,
    team: &'static str,
    calls_per_task: u64,
) -> Result<BenchReport, amaos_mesh::BoxError> {
    let mut auth = AuthServiceClient::new(target.auth.clone());
    let mut request = tonic::Request::new(auth::CreateApiKeyRequest {
        name: "bench".into(),
        tenant: "bench".into(),
        roles: vec!["developer".into()],
        ttl: None,
        idempotency_key: String::new(),
    });
    caller::set_bearer(request.metadata_mut(), &target.admin_key)?;
    let key = Arc::new(auth.create_api_key(request).await?.into_inner().secret);
    let clients: Vec<_> = target
        .orchestrators
        .iter()
        .cloned()
        .map(OrchestratorServiceClient::new)
        .collect();

    let remaining = Arc::new(AtomicU64::new(if options.tasks == 0 {
        u64::MAX
    } else {
        options.tasks
    }));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let redis_before = match options.backend {
        StoreBackend::Redis => Some(RedisBefore::read(target, &options.redis_url).await?),
        StoreBackend::Memory => None,
    };
    let usage_before = target.usage();
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let stop_at = options.duration.map(|d| started + d);
    let mut loops = Vec::new();
    for worker in 0..options.concurrency.max(1) {
        let mut orchestrator = clients[worker % clients.len()].clone();
        let key = key.clone();
        let remaining = remaining.clone();
        let failed = failed.clone();
        let first_error = first_error.clone();
        loops.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            loop {
                if stop_at.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                n += 1;
                let t0 = Instant::now();
                let outcome =
                    one_task(&mut orchestrator, &key, team, &format!("job {worker}-{n}")).await;
                if let Err(error) = outcome {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(error);
                }
                latencies.push(t0.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in loops {
        latencies.extend(handle.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    latencies.sort_unstable();
    let tasks = latencies.len() as u64;
    let per_task = |seconds: f64| 1000.0 * seconds / (tasks.max(1) as f64);
    let processes: Vec<ServiceUse> = target
        .usage()
        .into_iter()
        .map(|after| {
            let before = usage_before
                .iter()
                .find(|b| b.name == after.name)
                .map_or(0.0, |b| b.cpu_seconds);
            ServiceUse {
                cpu_ms_per_task: per_task(after.cpu_seconds - before),
                name: after.name,
                peak_rss_mib: after.peak_rss_mib,
            }
        })
        .collect();
    let redis = match redis_before {
        Some(before) => Some(before.cost(target, &options.redis_url, tasks).await?),
        None => None,
    };
    let latencies_ms: Vec<f64> = latencies.iter().map(|&us| us as f64 / 1000.0).collect();
    let latency_ms = options.model_latency.as_millis() as u64;
    Ok(BenchReport {
        scenario: options.scenario.clone(),
        backend: match options.backend {
            StoreBackend::Memory => "memory".into(),
            StoreBackend::Redis => "redis".into(),
        },
        concurrency: options.concurrency,
        tasks,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        tasks_per_s: tasks as f64 / seconds.max(1e-9),
        p50_ms: percentile(&latencies_ms, 0.50),
        p99_ms: percentile(&latencies_ms, 0.99),
        // The mesh's: this process's, or the sum of the service processes'.
        peak_rss_mib: if processes.is_empty() {
            peak_rss_mib()
        } else {
            processes.iter().map(|p| p.peak_rss_mib).sum()
        },
        model_latency_ms: latency_ms,
        cpu_ms_per_task: per_task(cpu) + processes.iter().map(|p| p.cpu_ms_per_task).sum::<f64>(),
        audit_durability: options.audit_durability.to_string(),
        ideal_tasks_per_s: (latency_ms > 0).then(|| {
            options.concurrency as f64 / (calls_per_task as f64 * latency_ms as f64 / 1000.0)
        }),
        first_error: first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        redis,
        topology: match target.processes {
            Some(_) => "processes".into(),
            None => "in-process".into(),
        },
        processes,
    })
}

/// Redis's counters when a run starts: the mesh's and the server's.
struct RedisBefore {
    /// Round trips and commands the mesh had sent.
    sent: (u64, u64),
    /// The server's counters; `None` when its INFO could not be read.
    server: Option<crate::bench_redis::ServerStats>,
}

impl RedisBefore {
    async fn read(target: &Target<'_>, url: &str) -> Result<Self, amaos_mesh::BoxError> {
        Ok(Self {
            sent: target.redis_sent().await?,
            server: crate::bench_redis::ServerStats::read(url).await.ok(),
        })
    }

    /// What Redis did since, per one of `tasks` finished tasks.
    async fn cost(
        self,
        target: &Target<'_>,
        url: &str,
        tasks: u64,
    ) -> Result<RedisCost, amaos_mesh::BoxError> {
        let (trips, commands) = target.redis_sent().await?;
        let per = |n: u64, then: u64| n.saturating_sub(then) as f64 / tasks.max(1) as f64;
        let server = match (
            self.server,
            crate::bench_redis::ServerStats::read(url).await,
        ) {
            (Some(before), Ok(after)) => Some(after.since(&before, tasks)),
            _ => None,
        };
        Ok(RedisCost {
            round_trips_per_task: per(trips, self.sent.0),
            commands_per_task: per(commands, self.sent.1),
            server,
        })
    }
}

/// Submits one task and watches it to the end; why it did not succeed.
async fn one_task(
    orchestrator: &mut OrchestratorServiceClient<amaos_mesh::client::MeshChannel>,
    key: &str,
    team: &str,
    input: &str,
) -> Result<(), String> {
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let mut request = tonic::Request::new(pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::Name(team.into())),
        }),
        input: input.into(),
        ..Default::default()
    });
    caller::set_bearer(request.metadata_mut(), key).map_err(status)?;
    let task_id = orchestrator
        .submit_task(request)
        .await
        .map_err(status)?
        .into_inner()
        .task_id;
    let mut request = tonic::Request::new(pb::WatchTaskRequest {
        task_id,
        after_sequence: 0,
    });
    caller::set_bearer(request.metadata_mut(), key).map_err(status)?;
    let mut stream = orchestrator
        .watch_task(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut last = None;
    while let Some(response) = stream.message().await.map_err(status)? {
        if let Some(pb::task_event::Kind::StateChanged(change)) =
            response.event.and_then(|e| e.kind)
        {
            last = Some(change);
        }
    }
    match last {
        Some(change) if change.to == pb::TaskState::Succeeded as i32 => Ok(()),
        Some(change) => Err(format!(
            "task ended {}: {}",
            crate::render::state_name(change.to),
            change.reason
        )),
        None => Err("the watch ended without a state".into()),
    }
}

impl BenchReport {
    /// The figures as text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "scenario {}  backend {}  topology {}  concurrency {}  model latency {} ms\n\
             tasks {} ({} failed) in {:.2} s\n\
             throughput   {:.0} tasks/s\n\
             latency      p50 {:.2} ms   p99 {:.2} ms\n\
             peak RSS     {:.0} MiB ({})\n\
             CPU          {:.3} ms per task (the mesh and the client while tasks ran)\n\
             audit trail  durability `{}`\n",
            self.scenario,
            self.backend,
            self.topology,
            self.concurrency,
            self.model_latency_ms,
            self.tasks,
            self.failed,
            self.seconds,
            self.tasks_per_s,
            self.p50_ms,
            self.p99_ms,
            self.peak_rss_mib,
            if self.processes.is_empty() {
                "whole mesh and client, one process"
            } else {
                "the service processes' peaks, summed"
            },
            self.cpu_ms_per_task,
            self.audit_durability
        );
        for p in &self.processes {
            out.push_str(&format!(
                "  {:<15} peak RSS {:>6.1} MiB   CPU {:.3} ms per task\n",
                p.name, p.peak_rss_mib, p.cpu_ms_per_task
            ));
        }
        if let Some(redis) = &self.redis {
            out.push_str(&format!(
                "Redis        {:.1} round trips, {:.1} commands per task from the mesh\n",
                redis.round_trips_per_task, redis.commands_per_task
            ));
            if let Some(server) = &redis.server {
                let top: Vec<String> = server
                    .top
                    .iter()
                    .map(|(name, n)| format!("{name} {n:.1}"))
                    .collect();
                out.push_str(&format!(
                    "redis-server {:.1} commands per task (scripts' calls included), CPU {:.3} ms per task\n",
                    server.commands_per_task, server.cpu_ms_per_task,
                ));
                out.push_str(&format!("             most run: {}\n", top.join(", ")));
            }
        }
        if let Some(error) = &self.first_error {
            out.push_str(&format!("first failure: {error}\n"));
        }
        if let Some(ideal) = self.ideal_tasks_per_s {
            out.push_str(&format!(
                "ideal        {ideal:.0} tasks/s (concurrency ÷ model calls per task × latency); reached {:.1}%\n",
                100.0 * self.tasks_per_s / ideal
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_counts_this_process_work() {
        // A fresh test process may not have used one 10 ms tick yet.
        let before = cpu_seconds();
        // Spin for 300 ms of wall time on this thread: the counter, kept in
        // 10 ms ticks, must see most of it.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = cpu_seconds() - before;
        assert!(used >= 0.1, "counted {used:.3} s of CPU for a 0.3 s spin");
    }

    #[test]
    fn percentile_picks_the_nearest_rank() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&sorted, 0.5), 3.0);
        assert_eq!(percentile(&sorted, 0.99), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
