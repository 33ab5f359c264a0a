//! The deployment shape: every service as its own processes on the Redis
//! backends, two replicas of each stateless one behind a connection
//! balancer (as a Kubernetes Service), the example teams and a batch of
//! side-effecting tasks running, and a SIGKILL of one replica of each
//! service mid-run. Auth runs one replica, as in the cluster (its token
//! signing keys are per process): it is killed and restarted.

use std::net::SocketAddr;

use super::balancer::Balancer;
use super::*;

/// The services that run two replicas, each behind a balancer on the
/// service's URL.
const REPLICATED: [&str; 5] = ["router", "memory", "tools", "orchestrator", "gateway"];

/// The example teams, run beside the batch.
const EXAMPLES: [(&str, &str); 6] = [
    (
        "research-crew",
        include_str!("../../../examples/teams/research-crew.yaml"),
    ),
    (
        "hierarchical-crew",
        include_str!("../../../examples/teams/hierarchical-crew.yaml"),
    ),
    (
        "round-robin-chat",
        include_str!("../../../examples/teams/round-robin-chat.yaml"),
    ),
    (
        "selector-chat",
        include_str!("../../../examples/teams/selector-chat.yaml"),
    ),
    ("swarm", include_str!("../../../examples/teams/swarm.yaml")),
    (
        "hybrid-launch",
        include_str!("../../../examples/teams/hybrid-launch.yaml"),
    ),
];

/// The window crew with both agents remembering their results: the
/// batch's memory calls reach both memory replicas.
fn deploy_crew() -> String {
    WINDOW_CREW.replace("    goal: g\n", "    goal: g\n    memory: true\n")
}

fn port_of(env: &HashMap<String, String>, service: &str) -> Result<SocketAddr, BoxError> {
    let key = format!("AMAOS_{}__LISTEN", service.to_uppercase());
    Ok(env.get(&key).ok_or_else(|| format!("no {key}"))?.parse()?)
}

/// Starts the deployment shape: auth, two replicas of every stateless
/// service (each pair behind a balancer on the service's URL), two agents
/// workers.
pub(super) async fn start(options: &ChaosOptions, cluster: &mut Cluster) -> Result<Mesh, BoxError> {
    let env = base_env(&cluster.path, options, &options.redis_url)?;
    // The gateway is not among the six the base environment gives ports.
    let (mut env, gateway_url) = own_ports(&env, "gateway")?;
    let run = amaos_mesh::new_id();
    for (k, v) in [
        ("AMAOS_GATEWAY__URL", gateway_url),
        ("AMAOS_AUTH__KEY_STORE", "redis".to_owned()),
        ("AMAOS_AUTH__REDIS_URL", options.redis_url.clone()),
        ("AMAOS_AUTH__REDIS_PREFIX", format!("amaos-chaos-{run}-a")),
        ("AMAOS_MEMORY__HOT", "redis".to_owned()),
        ("AMAOS_MEMORY__REDIS_URL", options.redis_url.clone()),
        ("AMAOS_MEMORY__REDIS_PREFIX", format!("amaos-chaos-{run}-m")),
        // Calls are balanced per connection: enough of them that each
        // caller reaches both replicas of a service.
        ("AMAOS_LIMITS__CONNECTIONS_PER_SERVICE", "4".to_owned()),
    ] {
        env.insert(k.into(), v);
    }
    let mut balancers = Vec::new();
    let mut ready: Vec<(String, &'static str)> = Vec::new();
    cluster.spawn("auth", "auth", &env)?;
    ready.push((env["AMAOS_AUTH__URL"].clone(), "auth"));
    for service in REPLICATED {
        let mut backends = Vec::new();
        for n in 1..=2 {
            let (mut replica, url) = own_ports(&env, service)?;
            if service == "memory" {
                // qdrant-edge is one process per directory.
                replica.insert(
                    "AMAOS_MEMORY__EDGE_DIR".into(),
                    cluster
                        .path
                        .join(format!("memory-edge-{n}"))
                        .display()
                        .to_string(),
                );
            }
            backends.push(port_of(&replica, service)?);
            let name = if n == 1 {
                service.to_owned()
            } else {
                format!("{service}-2")
            };
            cluster.spawn(&name, service, &replica)?;
            ready.push((url, service));
        }
        balancers.push(Balancer::start(service, port_of(&env, service)?, backends).await?);
    }
    cluster.spawn("agents", "agents", &env)?;
    ready.push((env["AMAOS_AGENTS__URL"].clone(), "agents"));
    let (worker, url) = own_ports(&env, "agents")?;
    cluster.spawn("agents-2", "agents", &worker)?;
    ready.push((url, "agents"));
    for (url, service) in &ready {
        if *service == "gateway" {
            wait_http(url, Duration::from_secs(90)).await?;
        } else {
            wait_serving(url, service, Duration::from_secs(90)).await?;
        }
    }
    let key = read_admin_key(&cluster.admin_key()).await?;
    wait_workers(&env["AMAOS_ROUTER__URL"], &key, 2).await?;
    let url = env["AMAOS_ORCHESTRATOR__URL"].clone();
    Ok(Mesh {
        env,
        key,
        first_url: url.clone(),
        survivor_url: url,
        balancers,
    })
}

/// Waits until the gateway at `url` answers HTTP.
async fn wait_http(url: &str, within: Duration) -> Result<(), BoxError> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let answered = http
            .get(format!("{url}/openapi.json"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway at {url} did not answer").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits each example team once through the REST gateway, as a client
/// would: a 503 or a broken connection is retried for up to 60 s with the
/// same idempotency key, so a retry never makes a second task.
async fn submit_examples(gateway: &str, key: &str, wave: &str) -> (Vec<Acked>, Vec<String>) {
    // A connection per request, as many clients make: the balancer spreads
    // them over both gateway replicas.
    let http = match reqwest::Client::builder().pool_max_idle_per_host(0).build() {
        Ok(http) => http,
        Err(e) => return (Vec::new(), vec![format!("an HTTP client: {e}")]),
    };
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for (name, spec) in EXAMPLES {
        let body = serde_json::json!({
            "team": { "specYaml": spec },
            "input": format!("{wave} {name}"),
            "idempotencyKey": format!("{wave}-{name}"),
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let outcome = loop {
            let sent = http
                .post(format!("{gateway}/v1/tasks"))
                .bearer_auth(key)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => {
                    let answer = r.json::<serde_json::Value>().await.ok();
                    break match answer.as_ref().and_then(|v| v["taskId"].as_str()) {
                        Some(id) => Ok(id.to_owned()),
                        None => Err(format!("{name}: no taskId in {answer:?}")),
                    };
                }
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    format!("{name}: HTTP 503: {}", r.text().await.unwrap_or_default())
                }
                Ok(r) => {
                    break Err(format!(
                        "{name}: HTTP {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ));
                }
                Err(e) => format!("{name}: {e}"),
            };
            if Instant::now() > deadline {
                break Err(retry);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match outcome {
            Ok(id) => acked.push(Acked {
                id,
                at: SystemTime::now(),
            }),
            Err(e) => errors.push(e),
        }
    }
    (acked, errors)
}

/// The batch and the example teams, then a SIGKILL of one replica of each
/// service once every tool call has run (the second agent is thinking).
pub(super) async fn run(
    mesh: &Mesh,
    cluster: &mut Cluster,
    options: &ChaosOptions,
) -> Result<ChaosReport, BoxError> {
    let mut report = ChaosReport {
        fault: Fault::Deployment.name().into(),
        ..ChaosReport::default()
    };
    let key = mesh.key.clone();
    let orchestrator = mesh.survivor_url.clone();
    let gateway = mesh.env["AMAOS_GATEWAY__URL"].clone();
    let workspaces = cluster.workspaces();
    let (acked, errors) = submit_batch(
        std::slice::from_ref(&orchestrator),
        &key,
        &deploy_crew(),
        options.tasks,
    )
    .await;
    let (mut examples, example_errors) = submit_examples(&gateway, &key, "before").await;
    if let Some(error) = errors.iter().chain(&example_errors).next() {
        return Err(format!("submissions failed before the faults: {error}").into());
    }
    wait_for_effects(&workspaces, &acked).await?;
    report.replicas_used = mesh
        .balancers
        .iter()
        .map(|b| (b.service.to_owned(), b.forwarded()))
        .collect();
    let fault_at = SystemTime::now();
    for name in [
        "agents-2",
        "orchestrator",
        "router-2",
        "memory-2",
        "tools-2",
        "gateway-2",
    ] {
        cluster.kill9(name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.kill9("auth");
    cluster.restart("auth")?;
    // Submitted while the restarted auth comes up and the survivors take
    // over.
    let (after, after_errors) = submit_examples(&gateway, &key, "after").await;
    report.example_errors = after_errors;
    examples.extend(after);
    wait_serving(
        &mesh.env["AMAOS_AUTH__URL"],
        "auth",
        Duration::from_secs(60),
    )
    .await?;
    let all: Vec<Acked> = acked.iter().chain(&examples).cloned().collect();
    let tasks = settle(&orchestrator, &key, &all, options.settle_timeout).await;
    count(&mut report, &acked, &tasks, &workspaces, fault_at);
    report.examples_acknowledged = examples.len();
    for a in &examples {
        match tasks.get(&a.id) {
            Some(t) if t.state == pb::TaskState::Succeeded as i32 && !t.output.is_empty() => {
                report.examples_succeeded += 1
            }
            Some(t) => report.example_errors.push(format!(
                "{} ({}) ended {}: {}",
                a.id,
                t.input,
                crate::render::state_name(t.state),
                t.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
            )),
            None => report.example_errors.push(format!("{} is lost", a.id)),
        }
    }
    takeovers(&mut report, &orchestrator, &key, &tasks, None).await;
    Ok(report)
}
