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
