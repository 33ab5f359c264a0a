//! A tenant's MCP servers and secrets are its own, and a server's URL passes the web_fetch address policy.

use super::*;

#[tokio::test]
async fn a_tenants_server_is_its_own_and_resolves_before_the_platforms() {
    let platform = HttpDemo::start("127.0.0.1", &[("WHO", "platform")]);
    let acme = HttpDemo::start("127.0.0.1", &[("WHO", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    // Loopback exempted for everyone (as `tools.web_fetch_exempt` would),
    // so that tenants' servers can be reached in this test.
    let mcp = Mcp::new(None, dir.path().join("mcp"), None).with_policy(AddressPolicy {
        exempt: vec!["127.0.0.1".parse().unwrap()],
        platform_exempt: vec![],
    });
    mcp.register(&Scope::Platform, "search", http(platform.url(), None))
        .await
        .unwrap();
    // Acme's operator registers a server of the same name: it does not
    // replace the platform's.
    mcp.register(&tenant("acme"), "search", http(acme.url(), None))
        .await
        .unwrap();
    let who = |t: &'static str| {
        let mcp = &mcp;
        async move {
            text(
                &mcp.call(
                    t,
                    "search.env_len",
                    args(json!({"name": "WHO"})),
                    Duration::from_secs(10),
                )
                .await
                .unwrap(),
            )
        }
    };
    assert_eq!(who("acme").await, "4", "acme's own server answers acme");
    assert_eq!(
        who("globex").await,
        "8",
        "the platform's server answers globex"
    );
    // Each tenant lists each name once.
    let names = |tools: Vec<(String, String, serde_json::Map<String, Value>)>| {
        tools.into_iter().map(|(n, _, _)| n).collect::<Vec<_>>()
    };
    assert_eq!(
        names(mcp.tools("acme").await),
        ["search.add", "search.echo", "search.env_len"]
    );
    // A tenant's server is invisible to the others.
    mcp.register(&tenant("acme"), "private", http(acme.url(), None))
        .await
        .unwrap();
    assert!(mcp.has("acme", "private.echo").await);
    assert!(!mcp.has("globex", "private.echo").await);
    assert!(
        !names(mcp.tools("globex").await)
            .iter()
            .any(|n| n.starts_with("private."))
    );
    assert!(matches!(
        mcp.call(
            "globex",
            "private.echo",
            args(json!({"text": "x"})),
            Duration::from_secs(5)
        )
        .await,
        Err(ToolError::NotFound(_))
    ));
    // A tenant has at most MAX_SERVERS_PER_TENANT servers.
    for name in ["third", "fourth"] {
        mcp.register(&tenant("acme"), name, http(acme.url(), None))
            .await
            .unwrap();
    }
    assert!(matches!(
        mcp.register(&tenant("acme"), "fifth", http(acme.url(), None))
            .await,
        Err(ToolError::Quota(_))
    ));
    // Replacing one of its own is not a new server.
    mcp.register(&tenant("acme"), "third", http(acme.url(), None))
        .await
        .unwrap();
}

#[test]
fn tenant_secrets_are_under_their_tenants_prefix() {
    use amaos_tools::mcp::tenant_secret;
    assert!(tenant_secret("acme", "tenants/acme/github"));
    assert!(tenant_secret("acme", "tenants/acme/mcp/token@3"));
    for bad in [
        "mcp/remote",
        "tenants/acme",
        "tenants/acme/",
        "tenants/acmecorp/x",
        "tenants/globex/x",
        "tenants/acme/../globex/x",
        "tenants/acme//x",
        "tenants/acme/./x",
        "/tenants/acme/x",
        "llm/openai",
    ] {
        assert!(!tenant_secret("acme", bad), "{bad}");
    }
}

#[tokio::test]
async fn a_tenants_server_may_name_only_its_tenants_secrets() {
    let server = HttpDemo::start("127.0.0.1", &[("AMAOS_MCP_DEMO_TOKEN", "bearer-xyz")]);
    let dir = tempfile::tempdir().unwrap();
    let store = secrets(
        dir.path(),
        r#"{"mcp/remote": "bearer-xyz", "tenants/acme/remote": "bearer-xyz", "tenants/globex/remote": "bearer-xyz"}"#,
    );
    let mcp = Mcp::new(None, dir.path().join("mcp"), Some(store)).with_policy(AddressPolicy {
        exempt: vec!["127.0.0.1".parse().unwrap()],
        platform_exempt: vec![],
    });
    for path in [
        "mcp/remote",
        "tenants/globex/remote",
        "tenants/acme/../globex/remote",
    ] {
        match mcp
            .register(&tenant("acme"), "remote", http(server.url(), Some(path)))
            .await
        {
            Err(ToolError::PermissionDenied(m)) => {
                assert!(m.contains("tenants/acme/"), "{m}")
            }
            other => panic!("{path}: {:?}", other.map(|_| ())),
        }
    }
    // Stdio servers' secrets too (refused before anything runs).
    assert!(matches!(
        mcp.register(
            &tenant("acme"),
            "local",
            Transport::Stdio {
                argv: vec![demo().display().to_string()],
                read_only: vec![],
                secret_env: vec!["TOKEN=mcp/remote".into()],
            }
        )
        .await,
        Err(ToolError::PermissionDenied(_))
    ));
    let tools = mcp
        .register(
            &tenant("acme"),
            "remote",
            http(server.url(), Some("tenants/acme/remote")),
        )
        .await
        .unwrap();
    assert!(tools.iter().any(|(n, _, _)| n == "remote.echo"));
    // The platform names any secret.
    mcp.register(
        &Scope::Platform,
        "remote",
        http(server.url(), Some("mcp/remote")),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_servers_url_passes_the_web_fetch_address_policy() {
    let server = HttpDemo::start("127.0.0.1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mcp = Mcp::new(None, dir.path().join("mcp"), None).with_policy(AddressPolicy {
        exempt: vec![],
        platform_exempt: vec![amaos_mesh::config::Cidr::parse("127.0.0.0/8").unwrap()],
    });
    let port = server.port();
    for url in [
        server.url(),
        format!("http://localhost:{port}/mcp"),
        format!("http://[::ffff:127.0.0.1]:{port}/mcp"),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://10.0.0.1:9604/metrics".into(),
        "http://[fd00::1]/mcp".into(),
        "http://user:pw@example.com/mcp".into(),
        "ftp://example.com/mcp".into(),
    ] {
        match mcp
            .register(&tenant("acme"), "x", http(url.clone(), None))
            .await
        {
            Err(ToolError::PermissionDenied(m)) => assert!(m.starts_with("http.url"), "{m}"),
            other => panic!("{url}: {:?}", other.map(|_| ())),
        }
    }
    // Without the platform's exemption, a platform-wide server is refused too.
    let strict = Mcp::new(None, dir.path().join("mcp2"), None);
    assert!(matches!(
        strict
            .register(&Scope::Platform, "x", http(server.url(), None))
            .await,
        Err(ToolError::PermissionDenied(_))
    ));
    // With it, a platform-wide server by name is reached at the checked
    // address (the URL is pinned, the name sent as Host).
    let tools = mcp
        .register(
            &Scope::Platform,
            "local",
            http(format!("http://localhost:{port}/mcp"), None),
        )
        .await
        .unwrap();
    assert!(tools.iter().any(|(n, _, _)| n == "local.echo"));
    let echoed = mcp
        .call(
            "acme",
            "local.echo",
            args(json!({"text": "pinned"})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(&echoed), "pinned");
}
