//! Each fault injected into a running batch, and the watch across a quiet
//! stretch.

use super::*;

pub(super) async fn batch(
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
        Fault::WatchQuiet | Fault::Deployment => {
            return Err(format!("{} runs no plain batch", fault.name()).into());
        }
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
pub(super) async fn watch_quiet(
    mesh: &Mesh,
    cluster: &mut Cluster,
) -> Result<ChaosReport, BoxError> {
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
