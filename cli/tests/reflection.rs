//! Every public service lists and describes itself through gRPC reflection
//! and reports SERVING through gRPC health.

mod common;

use amaos_mesh::client::MeshChannel;
use common::TestMesh;
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn ask(channel: MeshChannel, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel);
    let outbound = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut inbound = client
        .server_reflection_info(outbound)
        .await
        .unwrap()
        .into_inner();
    inbound
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test]
async fn services_are_listed_and_described_through_reflection() {
    let mesh = TestMesh::start().await;
    let c = &mesh.config;
    let services = [
        (
            &c.orchestrator.url,
            "amaos.orchestrator.v1.OrchestratorService",
        ),
        (&c.router.url, "amaos.router.v1.RouterService"),
        (&c.agents.url, "amaos.agents.v1.AgentsService"),
        (&c.tools.url, "amaos.tools.v1.ToolsService"),
        (&c.memory.url, "amaos.memory.v1.MemoryService"),
        (&c.auth.url, "amaos.auth.v1.AuthService"),
    ];
    for (url, name) in services {
        let MessageResponse::ListServicesResponse(list) = ask(
            mesh.channel(url),
            MessageRequest::ListServices(String::new()),
        )
        .await
        else {
            panic!("{name}: not a service list");
        };
        let listed: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(listed.contains(&name), "{name} not in {listed:?}");
        assert!(listed.contains(&"grpc.health.v1.Health"), "{listed:?}");

        let health = HealthClient::new(mesh.channel(url))
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32, "{name}");
    }

    // Describe the orchestrator: its file, methods, streaming and HTTP rules.
    let MessageResponse::FileDescriptorResponse(files) = ask(
        mesh.channel(&c.orchestrator.url),
        MessageRequest::FileContainingSymbol("amaos.orchestrator.v1.OrchestratorService".into()),
    )
    .await
    else {
        panic!("not a file descriptor response");
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let file = files
        .iter()
        .find(|f| f.name() == "amaos/orchestrator/v1/orchestrator.proto")
        .unwrap();
    let service = &file.service[0];
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "SubmitTask",
            "SubmitWorkflow",
            "GetTask",
            "ListTasks",
            "CancelTask",
            "WatchTask"
        ]
    );
    let watch = service
        .method
        .iter()
        .find(|m| m.name() == "WatchTask")
        .unwrap();
    assert!(watch.server_streaming());
    // Its dependencies can be fetched by name, so clients resolve every type.
    assert!(
        file.dependency
            .iter()
            .any(|d| d == "amaos/agents/v1/agents.proto")
    );
    for dependency in &file.dependency {
        let MessageResponse::FileDescriptorResponse(found) = ask(
            mesh.channel(&c.orchestrator.url),
            MessageRequest::FileByFilename(dependency.clone()),
        )
        .await
        else {
            panic!("{dependency} cannot be fetched");
        };
        assert!(!found.file_descriptor_proto.is_empty(), "{dependency}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_rpc_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.router.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mesh = amaos_cli::up::Mesh::start(config, shutdown.clone())
        .await
        .unwrap();
    let admin = mesh
        .addresses
        .iter()
        .find(|(s, _, _)| *s == "router")
        .unwrap()
        .2
        .unwrap();
    // One plain HTTP/1.1 GET, by hand, to keep the test free of an HTTP client.
    let body = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains(r#"amaos_grpc_requests_total{service="router",rpc="/amaos.router.v1.RouterService/RegisterWorker",code="Ok"}"#),
        "{body}"
    );
    assert!(
        body.contains("amaos_grpc_request_duration_seconds_bucket"),
        "{body}"
    );
    shutdown.cancel();
    mesh.wait(shutdown).await.unwrap();
}
