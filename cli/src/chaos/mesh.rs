//! Starting a mesh of one fault's shape and waiting until it serves.

use super::*;

pub(super) async fn wait_serving(
    url: &str,
    service: &str,
    within: Duration,
) -> Result<(), BoxError> {
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

pub(super) async fn read_admin_key(path: &Path) -> Result<String, BoxError> {
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

pub(super) async fn wait_workers(router_url: &str, key: &str, n: usize) -> Result<(), BoxError> {
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
pub(super) struct Mesh {
    pub(super) env: HashMap<String, String>,
    pub(super) key: String,
    /// The replica a fault stops (the only one with one replica).
    pub(super) first_url: String,
    /// The replica that survives (tools and memory call it); equal to
    /// `first_url` with one replica.
    pub(super) survivor_url: String,
    /// The balancers in front of replicated services (the deployment shape).
    pub(super) balancers: Vec<super::balancer::Balancer>,
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
pub(super) async fn start(
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
        balancers: Vec::new(),
    })
}
