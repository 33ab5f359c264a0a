//! Trust between services, probed as an attacker with network access to the
//! mesh or a tenant's low-privilege key would: the router serves each call
//! only to the identity it is for, runs start only from the orchestrator
//! with the run token of that very task and attempt, and a run token reaches
//! no other task.
//!
//! # Layout
//!
//! - `routing`: the router serves each call only to the identity it is for.
//! - `runs`: runs start only from the orchestrator with their own run token, and a run token reaches only its run's memory.
//! - `denials`: refusals after the permission check are audited as denials.
//! - `delegation`: the orchestrator's delegated signing key, its limits and its renewal.

#[path = "../common/mod.rs"]
mod common;

mod delegation;
mod denials;
mod routing;
mod runs;

use amaos_proto::agents::v1 as agents;
use amaos_proto::agents::v1::agents_service_client::AgentsServiceClient;
use amaos_proto::auth::v1 as auth;
use amaos_proto::memory::v1 as memory;
use amaos_proto::memory::v1::memory_service_client::MemoryServiceClient;
use amaos_proto::orchestrator::v1 as pb;
use amaos_proto::router::v1 as router;
use amaos_proto::router::v1::router_service_client::RouterServiceClient;
use amaos_proto::tools::v1 as tools;
use amaos_proto::tools::v1::tools_service_client::ToolsServiceClient;
use common::TestMesh;
use tonic::Code;

/// A request carrying `service_token` as the calling service's identity and,
/// when given, `bearer` as the credential it acts with.
fn as_service<T>(service_token: &str, bearer: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = match bearer {
        Some(key) => TestMesh::with_key(key, message),
        None => tonic::Request::new(message),
    };
    request.metadata_mut().insert(
        amaos_mesh::identity::SERVICE_HEADER,
        format!("Bearer {service_token}").parse().unwrap(),
    );
    request
}

/// The token auth gives for `key`.
async fn token_of(mesh: &TestMesh, key: &str) -> String {
    mesh.auth()
        .authenticate(auth::AuthenticateRequest {
            api_key: key.into(),
            audience: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn registration(worker_id: &str, address: &str) -> router::RegisterWorkerRequest {
    router::RegisterWorkerRequest {
        worker_id: worker_id.into(),
        address: address.into(),
        teams: vec!["research-crew".into(), "*".into()],
        capacity: 100,
        ..Default::default()
    }
}

async fn workers(mesh: &TestMesh) -> Vec<router::Worker> {
    RouterServiceClient::new(mesh.channel(&mesh.config.router.url))
        .list_workers(TestMesh::with_key(
            &mesh.admin_key,
            router::ListWorkersRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .workers
}
