//! The environment the services of a chaos run are started with.

use super::*;

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
pub(super) fn base_env(
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
pub(super) fn own_ports(
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
