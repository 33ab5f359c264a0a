//! Submitting the batch, waiting for it to settle, and counting what
//! survived.

use super::*;

/// One acknowledged submission.
#[derive(Clone)]
pub(super) struct Acked {
    pub(super) id: String,
    pub(super) at: SystemTime,
}

pub(super) async fn submit(
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
pub(super) async fn submit_batch(
    urls: &[String],
    key: &str,
    spec: &str,
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

pub(super) async fn list_all(url: &str, key: &str) -> Result<Vec<pb::Task>, tonic::Status> {
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
pub(super) async fn settle(
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
pub(super) async fn events(
    url: &str,
    key: &str,
    id: &str,
) -> Result<Vec<pb::TaskEvent>, tonic::Status> {
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
pub(super) fn count(
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
pub(super) async fn takeovers(
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
pub(super) async fn wait_for_effects(workspaces: &Path, acked: &[Acked]) -> Result<(), BoxError> {
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
