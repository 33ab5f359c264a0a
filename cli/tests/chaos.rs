//! The chaos suite: each fault of `amaos bench --scenario chaos` against the
//! six services as processes on Redis, with a batch of 200 side-effecting
//! tasks whose model calls take a second. Every acknowledged task must end
//! SUCCEEDED, none unfinished or lost, and each tool side effect must be on
//! disk exactly once. The benchmark runs the same code with 500 tasks and
//! prints the figures; these tests assert on outcomes only, never on times.

mod common;

use amaos_cli::chaos::{self, ChaosOptions, ChaosReport, Fault};
use common::procs;

const BATCH: usize = 200;

fn redis_url() -> String {
    std::env::var("AMAOS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Runs `fault` with a batch of `BATCH` and asserts that nothing was lost,
/// failed, stranded, repeated or half-written.
async fn survives(fault: Fault) -> ChaosReport {
    survives_but(fault, |_| false).await
}

/// As [`survives`], except for the problems `known` names (a gap the README
/// states, asserted on separately by the caller).
async fn survives_but(fault: Fault, known: impl Fn(&str) -> bool) -> ChaosReport {
    // Builds the service binaries if they are stale.
    let bins = procs::bin("amaos-orchestrator")
        .parent()
        .unwrap()
        .to_owned();
    let mut options = ChaosOptions::new(BATCH, &redis_url(), common::model_dir());
    options.bin_dir = Some(bins);
    options.settle_timeout = std::time::Duration::from_secs(180);
    let report = chaos::run(fault, &options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", fault.name()));
    eprintln!("{}", chaos::table(std::slice::from_ref(&report)));
    let problems: Vec<String> = report
        .problems()
        .into_iter()
        .filter(|p| !known(p))
        .collect();
    assert!(
        problems.is_empty(),
        "{}: {problems:#?}\n{report:#?}",
        fault.name()
    );
    report
}

#[tokio::test]
async fn a_batch_survives_the_kill_of_one_agents_worker_with_each_effect_once() {
    let report = survives(Fault::WorkerKill).await;
    assert_eq!(report.acknowledged, BATCH);
    assert!(
        report.retried > 0,
        "the kill interrupted no run: the test proved nothing"
    );
}

#[tokio::test]
async fn a_batch_survives_the_kill_of_one_orchestrator_replica() {
    let report = survives(Fault::ReplicaKill).await;
    assert_eq!(report.acknowledged, BATCH);
    assert!(
        report.takeovers_stalled > 0,
        "no attempt of the killed replica was taken over: the test proved nothing"
    );
}

#[tokio::test]
async fn a_batch_survives_the_kill_of_a_worker_then_of_a_replica() {
    let report = survives(Fault::WorkerThenReplica).await;
    assert_eq!(report.acknowledged, BATCH);
    assert!(report.retried > 0, "the kills interrupted no run");
}

#[tokio::test]
async fn a_tools_restart_between_a_call_and_its_retry_repeats_no_effect() {
    let report = survives(Fault::ToolsRestart).await;
    assert_eq!(report.acknowledged, BATCH);
    assert!(
        report.retried > 0,
        "no run was retried after the restart: the journal was not exercised"
    );
}

#[tokio::test]
async fn a_retry_reaching_another_tools_replica_repeats_no_effect() {
    let report = survives(Fault::ToolsReplica).await;
    assert_eq!(report.acknowledged, BATCH);
    assert!(
        report.retried > 0,
        "no run was retried on the other replica: the journal was not exercised"
    );
}

#[tokio::test]
async fn a_redis_crash_loses_no_acknowledged_task_and_refuses_submissions_while_down() {
    // A tool call made while Redis is down is refused UNAVAILABLE (its
    // journal and the run's liveness check need Redis); the agents engine
    // ends the attempt as transient, so it is retried and its effect happens
    // once (it used to hand the refusal to the model, and the task succeeded
    // without its effect).
    let report = survives(Fault::RedisCrash).await;
    assert_eq!(report.acknowledged, BATCH);
    assert_eq!(report.repeated_effects, 0);
    assert_eq!(report.lost, 0);
    assert_eq!(
        report.outage_unavailable,
        Some(20),
        "every submission during the outage gets UNAVAILABLE"
    );
    assert_eq!(report.half_written, Some(0));
}

#[tokio::test]
async fn a_replica_stopped_with_sigterm_exits_0_and_hands_its_attempts_back() {
    let report = survives(Fault::ReplicaSigterm).await;
    assert_eq!(report.acknowledged, BATCH);
    assert_eq!(report.sigterm_exit_code, Some(0));
    assert!(
        report.takeovers_handed_back > 0,
        "no attempt outlived the drain: the hand-back was not exercised"
    );
}

#[tokio::test]
async fn a_watch_stream_outlives_the_replica_running_its_task_and_a_quiet_stretch() {
    let report = survives(Fault::WatchQuiet).await;
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.watch_final_state.as_deref(), Some("SUCCEEDED"));
    assert!(
        report.watch_longest_quiet_s.unwrap_or(0.0) >= 10.0,
        "the stream saw no 10 s without an event: {report:?}"
    );
    assert!(
        report.takeovers_stalled > 0,
        "the killed replica was not running the task: {report:?}"
    );
}

#[tokio::test]
async fn the_deployment_shape_survives_the_kill_of_one_replica_of_each_service() {
    // Two replicas of router, memory, tools, orchestrator and gateway behind
    // connection balancers, two agents workers, auth on its own; the batch
    // and the six example teams (through the REST gateway) running; then a
    // SIGKILL of one replica of each, auth killed and restarted, and the
    // example teams submitted again while the survivors take over.
    let report = survives(Fault::Deployment).await;
    assert_eq!(report.acknowledged, BATCH);
    assert_eq!(report.examples_acknowledged, 12);
    assert_eq!(report.examples_succeeded, 12);
    assert_eq!(report.replicas_used.len(), 5, "{report:?}");
    assert!(
        report.retried > 0,
        "the kills interrupted no run: the test proved nothing"
    );
    assert!(
        report.takeovers_stalled > 0,
        "no attempt of the killed orchestrator replica was taken over"
    );
}
