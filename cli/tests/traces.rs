//! One trace per task attempt across the services, exported over OTLP to a
//! collector started in the test: the orchestrator's `task_attempt` root,
//! the router and agents calls under it, `run_team`, the GenAI spans
//! (`invoke_agent`, `chat` with `gen_ai.*` attributes, `execute_tool`) and the
//! team-level ones no convention has (`select_speaker`, `handoff`,
//! `judge_verdict`), for a crew, a chat and a hybrid team.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use common::{TestMesh, repo_root};
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

#[derive(Clone, Debug)]
struct Span {
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

fn text(value: &Option<Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn spans(received: &[ExportTraceServiceRequest]) -> Vec<Span> {
    received
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| Span {
            trace: s.trace_id.clone(),
            id: s.span_id.clone(),
            parent: s.parent_span_id.clone(),
            name: s.name.clone(),
            attributes: s
                .attributes
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        text(&kv.value.as_ref().and_then(|v| v.value.clone())),
                    )
                })
                .collect(),
        })
        .collect()
}

/// The spans of `root`'s trace, each of which must reach `root` through
/// its parents (one tree, nothing detached).
fn tree<'a>(all: &'a [Span], root: &Span) -> Vec<&'a Span> {
    let trace: Vec<&Span> = all.iter().filter(|s| s.trace == root.trace).collect();
    let by_id: HashMap<&[u8], &Span> = trace.iter().map(|s| (s.id.as_slice(), *s)).collect();
    for span in &trace {
        let mut at = *span;
        let mut hops = 0;
        while at.id != root.id {
            at = by_id
                .get(at.parent.as_slice())
                .unwrap_or_else(|| panic!("`{}` is detached from the attempt's tree", span.name));
            hops += 1;
            assert!(hops < 64, "a cycle above `{}`", span.name);
        }
    }
    trace
}

fn named<'a>(trace: &[&'a Span], prefix: &str) -> Vec<&'a Span> {
    trace
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .copied()
        .collect()
}

#[tokio::test]
async fn each_attempt_is_one_trace_with_genai_and_team_spans() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut telemetry = amaos_mesh::Config::default();
    telemetry.telemetry.otlp_endpoint = Some(format!("http://{address}"));
    telemetry.log.level = "info".into();
    let guard = amaos_mesh::telemetry::init(&telemetry, "amaos").unwrap();

    let mesh = TestMesh::start().await;
    let key = mesh.create_key("acme", "developer").await;
    let mut tasks = BTreeMap::new();
    for (kind, file) in [
        ("crew", "research-crew.yaml"),
        ("chat", "round-robin-chat.yaml"),
        ("hybrid", "hybrid-launch.yaml"),
    ] {
        let spec = std::fs::read_to_string(repo_root().join("examples/teams").join(file)).unwrap();
        let id = mesh.submit(&key, &spec, "edge caching").await;
        mesh.events(&key, &id).await;
        tasks.insert(kind, id);
    }
    mesh.stop().await;
    // Dropping the guard flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let all = spans(&collector.received.lock().unwrap());
    server.abort();
    for (kind, id) in &tasks {
        let roots: Vec<&Span> = all
            .iter()
            .filter(|s| {
                s.name.starts_with("task_attempt") && s.attributes.get("amaos.task.id") == Some(id)
            })
            .collect();
        assert_eq!(roots.len(), 1, "{kind}: one attempt, one root span");
        let root = roots[0];
        assert!(root.parent.is_empty(), "{kind}: the attempt is a root");
        assert_eq!(root.attributes["amaos.task.attempt"], "1");
        let trace = tree(&all, root);
        let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        for rpc in [
            "/amaos.router.v1.RouterService/Route",
            "/amaos.agents.v1.AgentsService/RunTeam",
        ] {
            assert!(names.contains(&rpc), "{kind}: no {rpc} in {names:?}");
        }
        let run = named(&trace, "run_team");
        assert_eq!(run.len(), 1, "{kind}: {names:?}");
        assert_eq!(run[0].attributes["amaos.task.id"], *id);
        assert!(
            !named(&trace, "invoke_agent").is_empty(),
            "{kind}: {names:?}"
        );
        let chats = named(&trace, "chat replay");
        assert!(!chats.is_empty(), "{kind}: {names:?}");
        for chat in &chats {
            let a = &chat.attributes;
            assert_eq!(a["gen_ai.operation.name"], "chat");
            assert_eq!(a["gen_ai.provider.name"], "replay");
            assert_eq!(a["gen_ai.request.model"], "replay");
            assert_eq!(a["gen_ai.response.model"], "replay");
            assert!(a.contains_key("gen_ai.usage.input_tokens"), "{a:?}");
            assert!(a.contains_key("gen_ai.usage.output_tokens"), "{a:?}");
            assert!(
                ["stop", "tool_calls"].contains(&a["gen_ai.response.finish_reasons"].as_str()),
                "{a:?}"
            );
        }
        match *kind {
            "crew" => {
                let tools = named(&trace, "execute_tool");
                assert!(!tools.is_empty(), "{names:?}");
                assert!(
                    names.contains(&"/amaos.tools.v1.ToolsService/InvokeTool"),
                    "the tools service joins the trace: {names:?}"
                );
            }
            "chat" => {
                assert!(named(&trace, "select_speaker").len() >= 3, "{names:?}");
                let verdicts: Vec<&str> = named(&trace, "judge_verdict")
                    .iter()
                    .map(|s| s.attributes["amaos.judge.verdict"].as_str())
                    .collect();
                assert!(
                    verdicts.contains(&"revise") && verdicts.contains(&"pass"),
                    "{verdicts:?}"
                );
            }
            _ => {
                assert_eq!(run[0].attributes["amaos.team.kind"], "hybrid");
                assert!(named(&trace, "select_speaker").len() >= 2, "{names:?}");
                assert!(!named(&trace, "judge_verdict").is_empty(), "{names:?}");
            }
        }
    }
}
