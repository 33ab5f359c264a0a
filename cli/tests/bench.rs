//! `amaos bench` on Redis: the in-process mesh reports what each task cost
//! in Redis round trips, and `--topology processes` runs the deployed shape
//! (the services as processes, two orchestrator replicas, two workers) and
//! reports each process. Outcomes and the presence of the figures only;
//! the figures themselves are the benchmark's to print, never asserted.

mod common;

use amaos_cli::bench::{self, BenchOptions, Topology};
use amaos_mesh::config::{Durability, StoreBackend};
use common::procs;

fn options(topology: Topology, tasks: u64) -> BenchOptions {
    BenchOptions {
        scenario: "crew".into(),
        backend: StoreBackend::Redis,
        concurrency: 8,
        tasks,
        duration: None,
        model_latency: std::time::Duration::ZERO,
        redis_url: std::env::var("AMAOS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        embed_model_dir: common::model_dir(),
        audit_durability: Durability::Always,
        topology,
    }
}

#[tokio::test]
async fn the_redis_crew_reports_its_round_trips_per_task() {
    let report = bench::run(options(Topology::InProcess, 30)).await.unwrap();
    assert_eq!((report.tasks, report.failed), (30, 0), "{report:?}");
    let redis = report.redis.expect("a Redis run reports its Redis cost");
    // Each task is at least created, claimed, recorded and finished.
    assert!(redis.round_trips_per_task >= 4.0, "{redis:?}");
    assert!(redis.commands_per_task >= redis.round_trips_per_task);
    let server = redis.server.expect("the server's INFO is readable");
    assert!(
        server.commands_per_task >= redis.commands_per_task,
        "{server:?}"
    );
    assert!(server.top.iter().any(|(name, _)| name == "evalsha"));
    assert!(report.processes.is_empty());
}

#[tokio::test]
async fn the_processes_topology_runs_the_crew_across_replicas_and_reports_each_process() {
    // Builds the service binaries if they are stale; bench finds them next
    // to this test's directory.
    procs::bin("amaos-orchestrator");
    let report = bench::run(options(Topology::Processes, 60)).await.unwrap();
    assert_eq!((report.tasks, report.failed), (60, 0), "{report:?}");
    assert_eq!(report.topology, "processes");
    let names: Vec<&str> = report.processes.iter().map(|p| p.name.as_str()).collect();
    for name in [
        "auth",
        "router",
        "memory",
        "tools",
        "orchestrator",
        "orchestrator-2",
        "agents",
        "agents-2",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(report.processes.iter().all(|p| p.peak_rss_mib > 0.0));
    // The client spreads its tasks over both replicas: both did work.
    for replica in ["orchestrator", "orchestrator-2"] {
        let p = report.processes.iter().find(|p| p.name == replica).unwrap();
        assert!(p.cpu_ms_per_task > 0.0, "{replica} did nothing: {report:?}");
    }
    let redis = report.redis.expect("the processes' Redis traffic is read");
    assert!(redis.round_trips_per_task >= 4.0, "{redis:?}");
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after
        // its closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A reaped or exited process: no /proc entry, or a zombie waiting for
    // its new parent.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn a_sigterm_stops_the_benchmark_and_every_process_it_started() {
    procs::bin("amaos-orchestrator");
    let redis =
        std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut bench = std::process::Command::new(procs::bin("amaos"))
        .args(["bench", "--backend", "redis", "--topology", "processes"])
        .args(["--concurrency", "2", "--tasks", "1000000"])
        .env("AMAOS_ORCHESTRATOR__REDIS_URL", &redis)
        .env("AMAOS_MEMORY__EMBED_MODEL_DIR", common::model_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = bench.id();
    // Wait until it runs the services: two orchestrators, two workers and
    // the four others.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let started = loop {
        let children = children_of(pid);
        if children.len() >= 8 {
            break children;
        }
        assert!(
            std::time::Instant::now() < deadline && bench.try_wait().unwrap().is_none(),
            "the benchmark did not start its processes: {children:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = sigterm(pid);
    assert!(sent, "could not signal the benchmark");
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left: Vec<u32> = started.into_iter().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes outlived the benchmark: {left:?}"
    );
}

/// SIGTERM to `pid`, with the `kill` command.
fn sigterm(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
