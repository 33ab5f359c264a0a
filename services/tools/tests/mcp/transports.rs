//! MCP servers over stdio inside the sandbox and over streamable HTTP: tools namespaced, arguments checked.

use super::*;

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
