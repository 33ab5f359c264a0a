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
        // A2A, beside the orchestrator on its port.
        (&c.orchestrator.url, "lf.a2a.v1.A2AService"),
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
            "WatchTask",
            "GetUsage",
            "ListApprovals",
            "DecideApproval",
            "SendInput",
            "GetAgentCard"
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
    let body = common::scrape_metrics(admin).await;
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

/// The methods of `proto_file` whose `rpc` block carries a
/// `google.api.http` rule, read from the source.
fn rules_in_source(proto_file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::repo_root().join("proto").join(proto_file)).unwrap();
    text.split("\n  rpc ")
        .skip(1)
        .filter(|block| {
            let block = block.split("\n  rpc ").next().unwrap_or(block);
            let end = block
                .find("\n  }")
                .or_else(|| block.find(';'))
                .unwrap_or(block.len());
            block[..end].contains("google.api.http")
        })
        .map(|block| block.split('(').next().unwrap().trim().to_owned())
        .collect()
}

/// Every method with an HTTP rule in `proto/` has it in the descriptors the
/// services serve (the set used to be re-encoded through `prost_types`,
/// which dropped every extension option: 0 of 22 rules were served), and
/// the error details the services send are described too.
#[tokio::test]
async fn every_http_rule_and_the_error_details_are_served_through_reflection() {
    let mesh = TestMesh::start().await;
    let c = &mesh.config;
    let services = [
        (
            &c.orchestrator.url,
            "amaos.orchestrator.v1.OrchestratorService",
            "amaos/orchestrator/v1/orchestrator.proto",
        ),
        (
            &c.router.url,
            "amaos.router.v1.RouterService",
            "amaos/router/v1/router.proto",
        ),
        (
            &c.agents.url,
            "amaos.agents.v1.AgentsService",
            "amaos/agents/v1/agents.proto",
        ),
        (
            &c.tools.url,
            "amaos.tools.v1.ToolsService",
            "amaos/tools/v1/tools.proto",
        ),
        (
            &c.memory.url,
            "amaos.memory.v1.MemoryService",
            "amaos/memory/v1/memory.proto",
        ),
        (
            &c.auth.url,
            "amaos.auth.v1.AuthService",
            "amaos/auth/v1/auth.proto",
        ),
    ];
    let mut served_rules = 0;
    for (url, service, file) in services {
        let MessageResponse::FileDescriptorResponse(files) = ask(
            mesh.channel(url),
            MessageRequest::FileContainingSymbol(service.into()),
        )
        .await
        else {
            panic!("{service}: not a file descriptor response");
        };
        // The file and everything it imports, fetched by name, decoded as
        // one FileDescriptorSet (field 1, repeated) with options intact.
        let mut fetched: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
        let mut queue: Vec<Vec<u8>> = files.file_descriptor_proto.clone();
        while let Some(bytes) = queue.pop() {
            let proto = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            if fetched.insert(proto.name().to_owned(), bytes).is_some() {
                continue;
            }
            for dependency in &proto.dependency {
                if fetched.contains_key(dependency) {
                    continue;
                }
                let MessageResponse::FileDescriptorResponse(found) = ask(
                    mesh.channel(url),
                    MessageRequest::FileByFilename(dependency.clone()),
                )
                .await
                else {
                    panic!("{dependency} cannot be fetched");
                };
                queue.extend(found.file_descriptor_proto);
            }
        }
        let mut set = Vec::new();
        for bytes in fetched.values() {
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
            prost::encoding::encode_varint(bytes.len() as u64, &mut set);
            set.extend_from_slice(bytes);
        }
        let pool = prost_reflect::DescriptorPool::decode(set.as_slice()).unwrap();
        let http = pool
            .get_extension_by_name("google.api.http")
            .expect("google.api.http is served");
        let with_rule: Vec<String> = pool
            .get_service_by_name(service)
            .unwrap()
            .methods()
            .filter(|m| m.options().has_extension(&http))
            .map(|m| m.name().to_owned())
            .collect();
        let expected = rules_in_source(file);
        assert!(!expected.is_empty(), "{file} has no HTTP rule to check");
        assert_eq!(with_rule, expected, "{service}");
        served_rules += with_rule.len();
    }
    assert_eq!(served_rules, 27);

    // The error details (google.rpc.BadRequest, …) are described.
    let MessageResponse::FileDescriptorResponse(details) = ask(
        mesh.channel(&c.orchestrator.url),
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    )
    .await
    else {
        panic!("google.rpc.BadRequest is not served");
    };
    assert!(!details.file_descriptor_proto.is_empty());
    mesh.stop().await;
}
