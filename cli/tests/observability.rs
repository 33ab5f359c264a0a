//! What an operator scrapes: after the six example teams ran through the
//! mesh, every service's `/metrics` carries the metrics of its part (tasks,
//! queue, routing, model calls, tools, memory, auth), with bounded labels,
//! no audit append failure, and every metric a rule or dashboard under
//! `deploy/observability/` names.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use amaos_proto::orchestrator::v1 as pb;
use common::{TestMesh, repo_root};

/// A crew on the `dead` model alias.
const FLAKY: &str = r#"name: flaky
agents:
  - { name: a, role: r, goal: g, model: dead }
crew:
  tasks:
    - { name: t, description: "Look into {input}", agent: a }
"#;

/// `(service, metric)`: each metric as its `# TYPE` line names it.
const EXPECTED: &[(&str, &str)] = &[
    ("orchestrator", "amaos_tasks_submitted"),
    ("orchestrator", "amaos_tasks_finished"),
    ("orchestrator", "amaos_task_queue_depth"),
    ("orchestrator", "amaos_task_queue_oldest_age_seconds"),
    ("orchestrator", "amaos_task_attempts"),
    ("orchestrator", "amaos_task_retries"),
    ("orchestrator", "amaos_task_fallbacks"),
    ("orchestrator", "amaos_task_takeovers"),
    ("orchestrator", "amaos_task_attempts_running"),
    ("orchestrator", "amaos_admission_rejections"),
    ("orchestrator", "amaos_task_duration_seconds"),
    ("orchestrator", "amaos_task_submit_duration_seconds"),
    ("orchestrator", "amaos_task_first_event_seconds"),
    ("router", "amaos_router_live_workers"),
    ("router", "amaos_router_breakers_tripped"),
    ("router", "amaos_router_decisions"),
    ("agents", "amaos_model_calls"),
    ("agents", "amaos_model_call_duration_seconds"),
    ("agents", "amaos_model_tokens"),
    ("agents", "amaos_model_cost_usd"),
    ("agents", "amaos_model_breaker_open"),
    ("agents", "amaos_tenant_cost_usd"),
    ("agents", "amaos_tenant_tokens"),
    ("agents", "amaos_team_runs"),
    ("agents", "amaos_judge_verdicts"),
    ("agents", "amaos_run_guard_stops"),
    ("tools", "amaos_tool_calls"),
    ("tools", "amaos_tool_call_duration_seconds"),
    ("tools", "amaos_sandbox_available"),
    ("tools", "amaos_sandbox_failures"),
    ("tools", "amaos_tool_journal_replays"),
    ("tools", "amaos_ssrf_refusals"),
    ("memory", "amaos_memory_items"),
    ("memory", "amaos_memory_tier_moves"),
    ("memory", "amaos_embedding_duration_seconds"),
    ("memory", "amaos_embedding_batch_size"),
    ("memory", "amaos_memory_recall_duration_seconds"),
    ("auth", "amaos_authentications"),
    ("auth", "amaos_tokens_issued"),
    ("auth", "amaos_key_rotations"),
    ("gateway", "amaos_http_requests"),
    ("gateway", "amaos_http_request_duration_seconds"),
];

/// Every service exports these.
const COMMON: &[&str] = &[
    "amaos_grpc_requests",
    "amaos_grpc_request_duration_seconds",
    "amaos_grpc_in_flight_requests",
    "amaos_grpc_shed_requests",
    "amaos_audit_append_failures",
    "amaos_redis_errors",
];

async fn scrape(admin: SocketAddr) -> String {
    let out = common::scrape_metrics(admin).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}

/// The metric names a scrape declares (`# TYPE` lines) and the sample
/// names it carries.
fn names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut declared = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                declared.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (declared, samples)
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every `amaos_…` metric name in the rule files and dashboards (recording
/// rules are named `amaos:…`, so they never match).
fn names_used_by_observability() -> BTreeMap<String, String> {
    let base = repo_root().join("deploy/observability");
    let mut used = BTreeMap::new();
    for dir in ["rules", "dashboards"] {
        let Ok(entries) = std::fs::read_dir(base.join(dir)) else {
            panic!("deploy/observability/{dir} is missing");
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let bytes = text.as_bytes();
            let mut i = 0;
            while let Some(at) = text[i..].find("amaos_") {
                let start = i + at;
                let preceded = start > 0
                    && (bytes[start - 1].is_ascii_alphanumeric()
                        || bytes[start - 1] == b'_'
                        || bytes[start - 1] == b':');
                let end = text[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(text.len(), |e| start + e);
                if !preceded {
                    used.entry(text[start..end].to_owned())
                        .or_insert_with(|| path.display().to_string());
                }
                i = end;
            }
        }
    }
    used
}

fn declared_by(name: &str, declared: &BTreeSet<String>, samples: &BTreeSet<String>) -> bool {
    if samples.contains(name) || declared.contains(name) {
        return true;
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|b| declared.contains(b))
        })
}

#[tokio::test]
async fn every_service_exports_its_metrics_after_the_example_teams_ran() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mesh = TestMesh::start_with(|c| {
        c.orchestrator.admin_listen = Some(any);
        c.router.admin_listen = Some(any);
        c.agents.admin_listen = Some(any);
        c.tools.admin_listen = Some(any);
        c.memory.admin_listen = Some(any);
        c.auth.admin_listen = Some(any);
        c.gateway.admin_listen = Some(any);
        c.telemetry
            .tenant_classes
            .insert("acme".into(), "gold".into());
        // One submission per team at once: a second is refused.
        c.orchestrator.team_rate = 0.001;
        c.orchestrator.team_burst = 1;
        // A model nothing listens for: its calls fail, and are retried.
        c.models.insert(
            "dead".into(),
            serde_json::from_value(serde_json::json!({
                "provider": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "none",
                "max_retries": 0,
                "timeout": "2s"
            }))
            .unwrap(),
        );
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let examples = repo_root().join("examples/teams");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // It waits for a person's approval (tests/approvals.rs runs it).
        .filter(|p| !p.ends_with("approved-payout.yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    let mut ids = Vec::new();
    for file in &files {
        let spec = std::fs::read_to_string(file).unwrap();
        ids.push(mesh.submit(&key, &spec, "edge caching").await);
    }
    // A team on the dead model, retried once, then handed to a fallback.
    let flaky = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &key,
            pb::SubmitTaskRequest {
                retry: Some(pb::RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 50_000_000,
                    }),
                    ..Default::default()
                }),
                fallbacks: vec![pb::Fallback {
                    target: Some(pb::fallback::Target::TeamName("research-crew".into())),
                }],
                ..common::inline(FLAKY, "edge caching")
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    ids.push(flaky.clone());
    // The same team again at once: over its submission rate.
    let refused = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(&key, common::inline(FLAKY, "again")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    for id in &ids {
        mesh.events(&key, id).await;
    }
    // One REST call, so the gateway has requests to count.
    let rest = reqwest::Client::new()
        .get(format!("{}/v1/usage", mesh.config.gateway.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let flaky = mesh.task(&key, &flaky).await;
    assert_eq!(flaky.state, pb::TaskState::Succeeded as i32, "{flaky:?}");
    // The orchestrator measures its queue every 5 s; the router its
    // workers every 5 s.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;

    let mut scraped = BTreeMap::new();
    for (service, admin) in mesh.admin_addresses() {
        scraped.insert(service, scrape(admin).await);
    }
    assert_eq!(
        scraped.keys().copied().collect::<Vec<_>>(),
        [
            "agents",
            "auth",
            "gateway",
            "memory",
            "orchestrator",
            "router",
            "tools"
        ]
    );
    for (service, text) in &scraped {
        let (declared, _) = names(text);
        // The gateway serves HTTP, not gRPC: its requests are `http_*`.
        let common = COMMON.iter().filter(|n| {
            *service != "gateway"
                || !n.starts_with("amaos_grpc_requests")
                    && !n.starts_with("amaos_grpc_request_duration")
        });
        for name in common {
            assert!(declared.contains(*name), "{service} lacks {name}:\n{text}");
        }
        assert_eq!(
            value(text, "amaos_audit_append_failures_total", &[]),
            0.0,
            "{service}"
        );
    }
    for (service, name) in EXPECTED {
        let (declared, _) = names(&scraped[service]);
        assert!(
            declared.contains(*name),
            "{service} lacks {name}:\n{}",
            scraped[service]
        );
    }

    // What ran shows in the figures, under the tenant's class.
    let orchestrator = &scraped["orchestrator"];
    let gold = [("tenant_class", "gold")];
    assert_eq!(
        value(orchestrator, "amaos_tasks_submitted_total", &gold),
        7.0
    );
    let finished = value(orchestrator, "amaos_tasks_finished_total", &gold);
    assert_eq!(finished, 7.0, "{orchestrator}");
    assert!(
        value(
            orchestrator,
            "amaos_tasks_finished_total",
            &[("state", "succeeded")]
        ) >= 6.0,
        "{orchestrator}"
    );
    assert_eq!(
        value(
            orchestrator,
            "amaos_task_submit_duration_seconds_count",
            &gold
        ),
        7.0
    );
    assert_eq!(
        value(orchestrator, "amaos_task_first_event_seconds_count", &gold),
        7.0
    );
    assert!(value(orchestrator, "amaos_task_attempts_total", &[]) >= 9.0);
    let flaky_team = [("team", "flaky")];
    assert_eq!(
        value(orchestrator, "amaos_task_retries_total", &flaky_team),
        1.0
    );
    assert_eq!(
        value(orchestrator, "amaos_task_fallbacks_total", &flaky_team),
        1.0
    );
    assert_eq!(
        value(
            orchestrator,
            "amaos_admission_rejections_total",
            &[("tenant", "acme"), ("reason", "rate_limit")]
        ),
        1.0
    );
    assert_eq!(value(orchestrator, "amaos_task_attempts_running", &[]), 0.0);
    assert_eq!(value(orchestrator, "amaos_task_queue_depth", &[]), 0.0);

    let router = &scraped["router"];
    assert!(
        value(
            router,
            "amaos_router_decisions_total",
            &[("outcome", "routed")]
        ) >= 6.0
    );
    assert!(
        value(router, "amaos_router_live_workers", &[]) >= 1.0,
        "{router}"
    );

    let agents = &scraped["agents"];
    let replay = [
        ("alias", "replay"),
        ("provider", "replay"),
        ("outcome", "ok"),
    ];
    assert!(
        value(agents, "amaos_model_calls_total", &replay) > 0.0,
        "{agents}"
    );
    let dead = [
        ("alias", "dead"),
        ("provider", "openai"),
        ("outcome", "error"),
    ];
    assert_eq!(
        value(agents, "amaos_model_calls_total", &dead),
        2.0,
        "{agents}"
    );
    assert_eq!(
        value(agents, "amaos_model_breaker_open", &[("alias", "dead")]),
        0.0
    );
    for kind in ["crew", "group_chat", "hybrid"] {
        assert!(
            value(agents, "amaos_team_runs_total", &[("kind", kind)]) >= 1.0,
            "{kind}: {agents}"
        );
    }
    assert!(
        value(agents, "amaos_judge_verdicts_total", &[]) >= 1.0,
        "{agents}"
    );

    let tools = &scraped["tools"];
    assert!(
        value(
            tools,
            "amaos_tool_calls_total",
            &[("tool", "file_write"), ("outcome", "ok")]
        ) >= 1.0,
        "{tools}"
    );
    assert_eq!(value(tools, "amaos_sandbox_available", &[]), 1.0);

    let memory = &scraped["memory"];
    assert!(
        value(memory, "amaos_embedding_duration_seconds_count", &[]) >= 1.0,
        "{memory}"
    );

    let auth = &scraped["auth"];
    assert!(
        value(auth, "amaos_authentications_total", &[("outcome", "ok")]) >= 1.0,
        "{auth}"
    );
    assert!(
        value(auth, "amaos_tokens_issued_total", &[]) >= 1.0,
        "{auth}"
    );

    // Every metric the rules and dashboards name is in the live scrape.
    let mut declared = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for text in scraped.values() {
        let (d, s) = names(text);
        declared.extend(d);
        samples.extend(s);
    }
    let used = names_used_by_observability();
    assert!(used.len() >= 20, "few metric names found: {used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|(name, _)| !declared_by(name, &declared, &samples))
        .collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
    mesh.stop().await;
}
