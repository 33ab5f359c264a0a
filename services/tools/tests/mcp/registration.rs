//! Registering tool servers through the service: per tenant, audited, platform-wide only for platform admins.

use super::*;

fn caller(tenant: &str, roles: &[&str]) -> amaos_mesh::caller::Caller {
    amaos_mesh::caller::Caller {
        tenant: tenant.into(),
        principal: format!("{tenant}-{}", roles.join("-")),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        token: None,
        task: None,
    }
}

fn register_request(name: &str, url: String) -> amaos_proto::tools::v1::RegisterToolServerRequest {
    register_with_secret(name, url, "")
}

fn register_with_secret(
    name: &str,
    url: String,
    bearer_secret: &str,
) -> amaos_proto::tools::v1::RegisterToolServerRequest {
    use amaos_proto::tools::v1 as pb;
    pb::RegisterToolServerRequest {
        name: name.into(),
        transport: Some(pb::register_tool_server_request::Transport::Http(
            pb::HttpServer {
                url,
                bearer_secret: bearer_secret.into(),
            },
        )),
        idempotency_key: String::new(),
    }
}

/// The audit records of `action`: (tenant, object, decision, principal).
fn audited(config: &amaos_mesh::Config, action: &str) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(config.audit_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["action"] == action)
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("tenant"), s("object"), s("decision"), s("principal"))
        })
        .collect()
}

/// The audit records of tool server registrations: (tenant, object, decision).
fn registrations(config: &amaos_mesh::Config) -> Vec<(String, String, String)> {
    audited(config, "tool_server.register")
        .into_iter()
        .map(|(t, o, d, _)| (t, o, d))
        .collect()
}

#[tokio::test]
async fn registration_is_per_tenant_audited_and_platform_wide_only_for_platform_admins() {
    use amaos_proto::tools::v1 as pb;
    // The platform's server on 127.0.0.1 (exempted for platform-wide
    // servers only); a tenant-reachable one on 127.0.0.2 (exempted as for
    // web_fetch).
    let platform = HttpDemo::start("127.0.0.1", &[]);
    let public = HttpDemo::start("127.0.0.2", &[("AMAOS_MCP_DEMO_TOKEN", "tok-123")]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = amaos_mesh::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.tools.mcp_exempt = vec!["127.0.0.1/32".into()];
    config.tools.web_fetch_exempt = vec!["127.0.0.2".parse().unwrap()];
    config.validate().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"tenants/acme/mcp": "tok-123"}"#,
    )
    .unwrap();
    let store = amaos_mesh::secrets::open_audited(&config, "tools")
        .await
        .unwrap();
    let tools = amaos_tools::Tools::new(
        &config,
        amaos_mesh::policy::Policy::builtin(),
        None,
        Some(store),
    )
    .unwrap();

    // Tenants' operators and admins, and the platform tenant's operator,
    // register only for their tenant: the platform's exemption is not theirs.
    for who in [
        caller("acme", &["operator"]),
        caller("acme", &["admin"]),
        caller("default", &["operator"]),
    ] {
        match tools
            .register_server(&who, register_request("search", platform.url()))
            .await
        {
            Err(ToolError::PermissionDenied(m)) => assert!(m.contains("loopback"), "{m}"),
            other => panic!("{who:?}: {:?}", other.map(|_| ())),
        }
    }
    // Other roles may not register at all.
    assert!(matches!(
        tools
            .register_server(
                &caller("acme", &["developer"]),
                register_request("search", public.url())
            )
            .await,
        Err(ToolError::PermissionDenied(_))
    ));
    // The platform admin registers platform-wide.
    let admin = caller("default", &["admin"]);
    tools
        .register_server(&admin, register_request("search", platform.url()))
        .await
        .unwrap();
    // Acme's operator registers its own, with its tenant's secret (read
    // for that operator, as the audit trail records).
    let registered = tools
        .register_server(
            &caller("acme", &["operator"]),
            register_with_secret("mine", public.url(), "tenants/acme/mcp"),
        )
        .await
        .unwrap();
    assert!(registered.tools.iter().any(|t| t.name == "mine.echo"));
    assert!(
        audited(&config, "secret.read").contains(&(
            "acme".into(),
            "tenants/acme/mcp".into(),
            "allow".into(),
            "acme-operator".into()
        )),
        "{:?}",
        audited(&config, "secret.read")
    );

    let listed = |t: &'static str| {
        let tools = &tools;
        async move {
            tools
                .list(&caller(t, &["agent"]))
                .await
                .tools
                .into_iter()
                .map(|d| (d.name, d.source))
                .collect::<Vec<_>>()
        }
    };
    let acme = listed("acme").await;
    assert!(acme.contains(&("mine.echo".into(), "mcp:mine".into())));
    assert!(acme.contains(&("search.echo".into(), "mcp:search".into())));
    let globex = listed("globex").await;
    assert!(globex.contains(&("search.echo".into(), "mcp:search".into())));
    assert!(
        !globex.iter().any(|(n, _)| n.starts_with("mine.")),
        "{globex:?}"
    );

    // A call resolves the same way.
    let call = |t: &'static str, tool: &str| {
        tools.invoke(
            Box::leak(Box::new(caller(t, &["agent"]))),
            pb::InvokeToolRequest {
                tool: tool.into(),
                arguments: Some(amaos_proto::json::map_to_struct(&args(
                    json!({"text": "hi"}),
                ))),
                task_id: "t-1".into(),
                ..Default::default()
            },
        )
    };
    call("acme", "mine.echo").await.unwrap();
    call("globex", "search.echo").await.unwrap();
    assert!(matches!(
        call("globex", "mine.echo").await,
        Err(ToolError::NotFound(_))
    ));

    // Every decision is on the audit trail, refusals included.
    let records = registrations(&config);
    for expected in [
        ("acme", "mcp/acme/search", "deny"),
        ("default", "mcp/default/search", "deny"),
        ("acme", "mcp/acme/search", "deny"),
        ("default", "mcp/*/search", "allow"),
        ("acme", "mcp/acme/mine", "allow"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(records.contains(&expected), "{expected:?} in {records:?}");
    }
    assert_eq!(
        records.iter().filter(|r| r.2 == "deny").count(),
        4,
        "{records:?}"
    );
}
