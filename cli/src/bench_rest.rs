//! `amaos bench --scenario rest`: what the REST gateway adds to a call.
//! Against one mesh, each round submits a task and reads it back twice —
//! once over gRPC to the orchestrator, once as REST through the gateway —
//! in alternating order, so both paths see the same background load (the
//! submitted crews running). Prints the p50/p99 of each and the overhead.

use std::time::{Duration, Instant};

use amaos_mesh::caller;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;

use crate::bench::{BenchOptions, crew_spec, percentile, start_mesh, stop_mesh};

/// The figures of one REST run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestReport {
    /// Measured rounds (each: one submit + one get per path).
    pub rounds: usize,
    /// gRPC submit+get p50, ms.
    pub grpc_p50_ms: f64,
    /// gRPC submit+get p99, ms.
    pub grpc_p99_ms: f64,
    /// REST submit+get p50, ms.
    pub rest_p50_ms: f64,
    /// REST submit+get p99, ms.
    pub rest_p99_ms: f64,
}

impl RestReport {
    /// The report as text.
    pub fn text(&self) -> String {
        format!(
            "scenario rest  ({} rounds of submit + get on each path)\n\
             gRPC (orchestrator)  p50 {:.2} ms  p99 {:.2} ms\n\
             REST (gateway)       p50 {:.2} ms  p99 {:.2} ms\n\
             overhead             p50 +{:.2} ms ({:+.0}%)  p99 +{:.2} ms\n",
            self.rounds,
            self.grpc_p50_ms,
            self.grpc_p99_ms,
            self.rest_p50_ms,
            self.rest_p99_ms,
            self.rest_p50_ms - self.grpc_p50_ms,
            (self.rest_p50_ms / self.grpc_p50_ms.max(1e-9) - 1.0) * 100.0,
            self.rest_p99_ms - self.grpc_p99_ms,
        )
    }
}

/// Runs `rounds` measured rounds after a warm-up.
pub async fn run(options: BenchOptions, rounds: usize) -> Result<RestReport, amaos_mesh::BoxError> {
    let spec = crew_spec(Duration::ZERO);
    let (mesh, shutdown, _dir) = start_mesh(&options, "bench-crew", &spec).await?;
    let result = drive(&mesh, rounds.max(10)).await;
    stop_mesh(mesh, shutdown).await;
    result
}

async fn drive(mesh: &crate::up::Mesh, rounds: usize) -> Result<RestReport, amaos_mesh::BoxError> {
    let key = std::fs::read_to_string(mesh.config.data_dir.join("admin.key"))?;
    let key = key.trim().to_owned();
    let dialer = amaos_mesh::client::Dialer::new(&mesh.config, "cli")?;
    let mut grpc = OrchestratorServiceClient::new(
        dialer.channel("orchestrator", &mesh.config.orchestrator.url)?,
    );
    let http = reqwest::Client::builder().build()?;
    let base = mesh.config.gateway.url.clone();
    let warm_up = 20;
    let mut grpc_ms = Vec::with_capacity(rounds);
    let mut rest_ms = Vec::with_capacity(rounds);
    for round in 0..warm_up + rounds {
        let input = format!("round {round}");
        let mut pair = [0.0; 2];
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for path in order {
            let t0 = Instant::now();
            if path == 0 {
                grpc_round(&mut grpc, &key, &input).await?;
            } else {
                rest_round(&http, &base, &key, &input).await?;
            }
            pair[path] = t0.elapsed().as_secs_f64() * 1000.0;
        }
        if round >= warm_up {
            grpc_ms.push(pair[0]);
            rest_ms.push(pair[1]);
        }
    }
    grpc_ms.sort_by(f64::total_cmp);
    rest_ms.sort_by(f64::total_cmp);
    Ok(RestReport {
        rounds,
        grpc_p50_ms: percentile(&grpc_ms, 0.5),
        grpc_p99_ms: percentile(&grpc_ms, 0.99),
        rest_p50_ms: percentile(&rest_ms, 0.5),
        rest_p99_ms: percentile(&rest_ms, 0.99),
    })
}

async fn grpc_round(
    grpc: &mut OrchestratorServiceClient<amaos_mesh::client::MeshChannel>,
    key: &str,
    input: &str,
) -> Result<(), amaos_mesh::BoxError> {
    let mut request = tonic::Request::new(pb::SubmitTaskRequest {
        team: Some(pb::TeamRef {
            team: Some(pb::team_ref::Team::Name("bench-crew".into())),
        }),
        input: input.into(),
        ..Default::default()
    });
    caller::set_bearer(request.metadata_mut(), key)?;
    let task_id = grpc.submit_task(request).await?.into_inner().task_id;
    let mut request = tonic::Request::new(pb::GetTaskRequest { task_id });
    caller::set_bearer(request.metadata_mut(), key)?;
    grpc.get_task(request).await?;
    Ok(())
}

async fn rest_round(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    input: &str,
) -> Result<(), amaos_mesh::BoxError> {
    let submitted: serde_json::Value = http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(key)
        .json(&serde_json::json!({ "team": { "name": "bench-crew" }, "input": input }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let task_id = submitted["taskId"]
        .as_str()
        .ok_or("the submit response has no taskId")?;
    http.get(format!("{base}/v1/tasks/{task_id}"))
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok(())
}
