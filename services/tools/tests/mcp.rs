//! Custom tools over MCP with a real MCP server process (`amaos-mcp-demo`,
//! built with rmcp): over stdio inside the sandbox, and over streamable
//! HTTP. Tools appear namespaced with their schemas; arguments are
//! validated against the schema, naming the failing path.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amaos_tools::ToolError;
use amaos_tools::mcp::{AddressPolicy, Mcp, Scope, Transport};
use amaos_tools::sandbox::{Limits, Sandbox};
use serde_json::{Value, json};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amaos-mcp-demo"))
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_stdio_server_runs_in_the_sandbox_and_its_tools_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(
        env!("CARGO_BIN_EXE_amaos-sandbox").into(),
        320_000,
        2,
        Limits::default(),
    ));
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"demo/token": "s3cret-value"}"#,
    )
    .unwrap();
    let secrets: Arc<dyn amaos_mesh::secrets::SecretStore> = Arc::new(
        amaos_mesh::secrets::FileSecrets::new(dir.path().join("secrets.json")),
    );
    let mcp = Mcp::new(Some(sandbox), dir.path().join("mcp"), Some(secrets));
    let tools = mcp
        .register(
            &Scope::Platform,
            "demo",
            Transport::Stdio {
                argv: vec![demo().display().to_string()],
                read_only: vec![demo()],
                secret_env: vec!["DEMO_TOKEN=demo/token".into()],
            },
        )
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["demo.add", "demo.echo", "demo.env_len"]);
    assert_eq!(tools[0].2["required"], json!(["a", "b"]));
    // The server runs as the sandbox's user, not as this process's.
    let sandboxed = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .any(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.contains("\t320001\t"))
        });
    assert!(sandboxed, "the MCP server runs under the sandbox's uid");

    // The secret reached the server as an environment variable.
    let len = mcp
        .call(
            "acme",
            "demo.env_len",
            args(json!({"name": "DEMO_TOKEN"})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(&len), "12");
    let unset = mcp
        .call(
            "acme",
            "demo.env_len",
            args(json!({"name": "HOME_OF_HOST"})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(&unset), "-1");
    let sum = mcp
        .call(
            "acme",
            "demo.add",
            args(json!({"a": 2, "b": 40})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(&sum), "42", "{sum}");
    match mcp
        .call(
            "acme",
            "demo.add",
            args(json!({"a": "two", "b": 1})),
            Duration::from_secs(10),
        )
        .await
    {
        Err(ToolError::InvalidArgument { field, .. }) => assert_eq!(field, "arguments.a"),
        other => panic!("{other:?}"),
    }
    match mcp
        .call(
            "acme",
            "demo.add",
            args(json!({"a": 1})),
            Duration::from_secs(10),
        )
        .await
    {
        Err(ToolError::InvalidArgument { message, .. }) => {
            assert!(message.contains("b"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        mcp.call("acme", "demo.nope", args(json!({})), Duration::from_secs(5))
            .await,
        Err(ToolError::NotFound(_))
    ));
    // A relative command is refused.
    assert!(matches!(
        mcp.register(
            &Scope::Platform,
            "bad",
            Transport::Stdio {
                argv: vec!["amaos-mcp-demo".into()],
                read_only: vec![],
                secret_env: vec![]
            }
        )
        .await,
        Err(ToolError::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn a_streamable_http_server_is_reached_by_url() {
    /// Kills the server however the test ends, so no process outlives it.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Server(
        std::process::Command::new(demo())
            .args(["--http", "127.0.0.1:0"])
            .env("AMAOS_MCP_DEMO_TOKEN", "bearer-xyz")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        r#"{"mcp/remote": "bearer-xyz"}"#,
    )
    .unwrap();
    let secrets: Arc<dyn amaos_mesh::secrets::SecretStore> = Arc::new(
        amaos_mesh::secrets::FileSecrets::new(dir.path().join("secrets.json")),
    );
    // A platform-wide server on loopback: the platform's config exempts it.
    let mcp = Mcp::new(None, dir.path().join("mcp"), Some(secrets)).with_policy(AddressPolicy {
        exempt: vec![],
        platform_exempt: vec![amaos_mesh::config::Cidr::parse("127.0.0.0/8").unwrap()],
    });
    // Without the bearer secret the server refuses.
    assert!(
        mcp.register(
            &Scope::Platform,
            "remote",
            Transport::Http {
                url: format!("http://{address}/mcp"),
                bearer_secret: None,
            },
        )
        .await
        .is_err()
    );
    let tools = mcp
        .register(
            &Scope::Platform,
            "remote",
            Transport::Http {
                url: format!("http://{address}/mcp"),
                bearer_secret: Some("mcp/remote".into()),
            },
        )
        .await
        .unwrap();
    assert!(tools.iter().any(|(n, _, _)| n == "remote.echo"));
    let echoed = mcp
        .call(
            "acme",
            "remote.echo",
            args(json!({"text": "hello"})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(&echoed), "hello");
    // Without a sandbox, stdio servers are refused rather than run bare.
    assert!(matches!(
        mcp.register(
            &Scope::Platform,
            "local",
            Transport::Stdio {
                argv: vec![demo().display().to_string()],
                read_only: vec![],
                secret_env: vec![]
            }
        )
        .await,
        Err(ToolError::Unimplemented(_))
    ));
    drop(child);
}

/// A demo server over streamable HTTP, killed however the test ends.
struct HttpDemo {
    child: std::process::Child,
    address: String,
}

impl HttpDemo {
    /// Listening on `ip`, with `env` added to its environment.
    fn start(ip: &str, env: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(demo())
            .args(["--http", &format!("{ip}:0")])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            child,
            address: line.trim().to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for HttpDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(url: String, bearer_secret: Option<&str>) -> Transport {
    Transport::Http {
        url,
        bearer_secret: bearer_secret.map(str::to_owned),
    }
}

fn tenant(t: &str) -> Scope {
    Scope::Tenant(t.to_owned())
}

fn secrets(dir: &std::path::Path, json: &str) -> Arc<dyn amaos_mesh::secrets::SecretStore> {
    std::fs::write(dir.join("secrets.json"), json).unwrap();
    Arc::new(amaos_mesh::secrets::FileSecrets::new(
        dir.join("secrets.json"),
    ))
}

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
