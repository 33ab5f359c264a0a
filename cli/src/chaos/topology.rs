//! The deployed shape for `amaos bench --topology processes`: the six
//! services as separate processes on Redis, two orchestrator replicas and two
//! agents workers, with the production defaults (leases, heartbeats, retries)
//! and only the limits sized for the run.

use super::*;

/// A running mesh of processes; they are killed when it is dropped.
pub struct ProcessMesh {
    cluster: Cluster,
    /// The orchestrator replicas' gRPC URLs.
    pub orchestrator_urls: Vec<String>,
    /// Auth's gRPC URL.
    pub auth_url: String,
    /// The admin key auth wrote at its first start.
    pub admin_key: String,
    /// Each process's name and admin (metrics) address.
    admin: Vec<(String, String)>,
}

/// One process's resource use so far.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcessUse {
    /// `orchestrator`, `orchestrator-2`, `agents`, …
    pub name: String,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// User and system CPU seconds.
    pub cpu_seconds: f64,
}

/// Starts the services for a benchmark of team `team` (its spec `spec`)
/// with `in_flight` tasks at once, on the Redis at `redis_url`.
pub async fn start_processes(
    redis_url: &str,
    embed_model_dir: &Path,
    in_flight: usize,
    team: &str,
    spec: &str,
) -> Result<ProcessMesh, BoxError> {
    let mut cluster = Cluster::new(bin_dir()?)?;
    std::fs::write(
        cluster.path.join("teams").join(format!("{team}.yaml")),
        spec,
    )?;
    let mut env = service_env(
        &cluster.path.join("data"),
        &cluster.path.join("teams"),
        embed_model_dir,
    )?;
    let run = amaos_mesh::new_id();
    let n = in_flight.max(1);
    for (k, v) in [
        ("AMAOS_ROUTER__BACKEND", "redis".to_owned()),
        ("AMAOS_ROUTER__REDIS_URL", redis_url.to_owned()),
        ("AMAOS_ROUTER__REDIS_PREFIX", format!("amaos-bench-{run}-r")),
        ("AMAOS_ORCHESTRATOR__BACKEND", "redis".to_owned()),
        ("AMAOS_ORCHESTRATOR__REDIS_URL", redis_url.to_owned()),
        (
            "AMAOS_ORCHESTRATOR__REDIS_PREFIX",
            format!("amaos-bench-{run}-o"),
        ),
        (
            "AMAOS_ORCHESTRATOR__MAX_IN_FLIGHT",
            (n * 2 + 64).to_string(),
        ),
        (
            "AMAOS_ORCHESTRATOR__MAX_RUNNING_PER_TENANT",
            (n * 2).max(64).to_string(),
        ),
        ("AMAOS_ORCHESTRATOR__TENANT_RATE", "0".into()),
        ("AMAOS_ORCHESTRATOR__RETENTION", "10m".into()),
        (
            "AMAOS_LIMITS__MAX_CONCURRENT_REQUESTS",
            (n * 4 + 512).to_string(),
        ),
        ("AMAOS_AGENTS__CAPACITY", (n * 2).max(64).to_string()),
        // What the images set: mimalloc returns memory it does not use.
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0".into()),
        ("MIMALLOC_PURGE_DELAY", "0".into()),
    ] {
        env.insert(k.into(), v);
    }
    let mut ready: Vec<(String, &'static str)> = Vec::new();
    let mut admin = Vec::new();
    let mut spawn = |cluster: &mut Cluster,
                     name: &str,
                     service: &'static str,
                     env: &HashMap<String, String>,
                     url: String|
     -> Result<(), BoxError> {
        cluster.spawn(name, service, env)?;
        let upper = service.to_uppercase();
        admin.push((
            name.to_owned(),
            env[&format!("AMAOS_{upper}__ADMIN_LISTEN")].clone(),
        ));
        ready.push((url, service));
        Ok(())
    };
    for service in ["auth", "router", "memory", "tools"] {
        let url = env[&format!("AMAOS_{}__URL", service.to_uppercase())].clone();
        spawn(&mut cluster, service, service, &env, url)?;
    }
    let first = env["AMAOS_ORCHESTRATOR__URL"].clone();
    spawn(
        &mut cluster,
        "orchestrator",
        "orchestrator",
        &env,
        first.clone(),
    )?;
    let (second_env, second) = own_ports(&env, "orchestrator")?;
    spawn(
        &mut cluster,
        "orchestrator-2",
        "orchestrator",
        &second_env,
        second.clone(),
    )?;
    let url = env["AMAOS_AGENTS__URL"].clone();
    spawn(&mut cluster, "agents", "agents", &env, url)?;
    let (worker, url) = own_ports(&env, "agents")?;
    spawn(&mut cluster, "agents-2", "agents", &worker, url)?;
    for (url, service) in &ready {
        wait_serving(url, service, Duration::from_secs(120)).await?;
    }
    let admin_key = read_admin_key(&cluster.admin_key()).await?;
    wait_workers(&env["AMAOS_ROUTER__URL"], &admin_key, 2).await?;
    Ok(ProcessMesh {
        cluster,
        orchestrator_urls: vec![first, second],
        auth_url: env["AMAOS_AUTH__URL"].clone(),
        admin_key,
        admin,
    })
}

impl ProcessMesh {
    /// Each process's peak RSS and CPU time so far, from /proc.
    pub fn usage(&self) -> Vec<ProcessUse> {
        self.cluster
            .procs
            .iter()
            .filter_map(|p| {
                let pid = p.child.as_ref()?.id();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some(ProcessUse {
                    name: p.name.clone(),
                    peak_rss_mib: crate::bench::peak_rss_in(&status),
                    cpu_seconds: crate::bench::cpu_seconds_in(&stat),
                })
            })
            .collect()
    }

    /// Round trips to Redis and commands sent so far by every process, from
    /// their `/metrics`.
    pub async fn redis_sent(&self) -> Result<(u64, u64), BoxError> {
        let http = reqwest::Client::new();
        let (mut trips, mut commands) = (0, 0);
        for (name, addr) in &self.admin {
            let text = http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("{name}'s metrics: {e}"))?
                .text()
                .await?;
            trips += counter(&text, "amaos_redis_round_trips_total");
            commands += counter(&text, "amaos_redis_commands_total");
        }
        Ok((trips, commands))
    }
}

/// The value of counter `name` in a Prometheus text exposition (summed over
/// its label sets); 0 when absent.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_counter_is_read_from_the_exposition() {
        let text = "# HELP amaos_redis_round_trips Round trips.\n\
                    # TYPE amaos_redis_round_trips counter\n\
                    amaos_redis_round_trips_total{service=\"router\"} 12\n\
                    amaos_redis_round_trips_total_other 99\n\
                    amaos_redis_commands_total{service=\"router\"} 30\n";
        assert_eq!(super::counter(text, "amaos_redis_round_trips_total"), 12);
        assert_eq!(super::counter(text, "amaos_redis_commands_total"), 30);
        assert_eq!(super::counter(text, "amaos_grpc_requests_total"), 0);
    }
}
