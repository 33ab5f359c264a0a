//! With `telemetry.otlp_endpoint` set, spans are exported over OTLP/gRPC: a
//! collector started in the test on 127.0.0.1:0 receives them, with the
//! service name as a resource attribute.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn spans_are_exported_to_the_configured_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let mut config = amaos_mesh::Config::default();
    config.telemetry.otlp_endpoint = Some(format!("http://{address}"));
    config.validate().unwrap();
    let guard = amaos_mesh::telemetry::init(&config, "otlp-test").unwrap();
    {
        let span = tracing::info_span!("exported.work", job = "x");
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    // Dropping the guard flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let received = collector.received.lock().unwrap().clone();
        let spans: Vec<_> = received
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| v.value.clone());
                rs.scope_spans.iter().flat_map(move |ss| {
                    ss.spans.iter().map({
                        let service = service.clone();
                        move |s| (service.clone(), s.name.clone(), s.trace_id.len())
                    })
                })
            })
            .collect();
        if let Some((service, _, trace_id_len)) =
            spans.iter().find(|(_, name, _)| name == "exported.work")
        {
            assert_eq!(service, &Some(Value::StringValue("otlp-test".into())));
            assert_eq!(*trace_id_len, 16);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span reached the collector: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
}
