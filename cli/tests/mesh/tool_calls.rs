//! Tools through the service: workspace confinement, replayed calls, the shell sandbox, MCP tools.

use super::*;

#[tokio::test]
async fn paths_outside_the_workspace_are_permission_denied() {
    let mesh = TestMesh::start().await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    for path in ["../../etc/passwd", "/etc/passwd", "notes/../../x"] {
        let args = serde_json::json!({ "path": path });
        let status = tools
            .invoke_tool(mesh.internal(
                "acme",
                &["agent"],
                tools::InvokeToolRequest {
                    tool: "file_read".into(),
                    arguments: Some(map_to_struct(args.as_object().unwrap())),
                    task_id: "t-1".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
    }
    // A role that may not use tools is refused too.
    let status = tools
        .invoke_tool(mesh.internal(
            "acme",
            &["viewer"],
            tools::InvokeToolRequest {
                tool: "file_list".into(),
                task_id: "t-1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    mesh.stop().await;
}

#[tokio::test]
async fn a_retried_tool_call_replays_its_recorded_result() {
    let mesh = TestMesh::start().await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let call = |content: &str| {
        let args = serde_json::json!({ "path": "log.txt", "content": content, "append": true });
        mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "file_write".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-2".into(),
                idempotency_key: "call-1".into(),
                ..Default::default()
            },
        )
    };
    let first = tools
        .invoke_tool(call("once\n"))
        .await
        .unwrap()
        .into_inner();
    let again = tools
        .invoke_tool(call("once\n"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert!(again.replayed);
    let written =
        std::fs::read_to_string(mesh.config.workspace_dir().join("acme/t-2/log.txt")).unwrap();
    assert_eq!(written, "once\n");
    let status = tools.invoke_tool(call("different\n")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    mesh.stop().await;
}

#[tokio::test]
async fn the_shell_tool_runs_sandboxed_in_the_task_workspace_once_per_key() {
    let mesh = TestMesh::start_with(|c| {
        c.tools.max_sandboxes_per_tenant = 1;
        c.tools
            .role_tools
            .insert("developer".into(), vec!["file_read".into()]);
    })
    .await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let listed = tools
        .list_tools(mesh.internal("acme", &["agent"], tools::ListToolsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(listed.iter().any(|t| t.name == "shell" && t.side_effects));
    let shell = |roles: &[&str], args: serde_json::Value, key: &str| {
        mesh.internal(
            "acme",
            roles,
            tools::InvokeToolRequest {
                tool: "shell".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-sh".into(),
                idempotency_key: key.into(),
                ..Default::default()
            },
        )
    };
    let command = serde_json::json!({ "command": "echo ran >> log.txt; id -u; cat log.txt" });
    let first = tools
        .invoke_tool(shell(&["agent"], command.clone(), "k-1"))
        .await
        .unwrap()
        .into_inner();
    let again = tools
        .invoke_tool(shell(&["agent"], command, "k-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed && again.replayed);
    let result = amaos_proto::json::value_to_json(first.result.as_ref().unwrap());
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout"], "1000\nran\n", "{result}");
    let log =
        std::fs::read_to_string(mesh.config.workspace_dir().join("acme/t-sh/log.txt")).unwrap();
    assert_eq!(log, "ran\n", "the retried call did not run again");
    // A non-zero exit is a result for the model, not an error.
    let failed = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "exit 3" }),
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    let result = amaos_proto::json::value_to_json(failed.result.as_ref().unwrap());
    assert_eq!(result["exit_code"], 3);
    // Bad arguments name the field; a role without `shell` is denied.
    let status = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "", "x": 1 }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("arguments."), "{status:?}");
    let status = tools
        .invoke_tool(shell(
            &["developer"],
            serde_json::json!({ "command": "true" }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // One sandbox per tenant at a time: a second concurrent call is refused.
    let mut slow = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let running = tokio::spawn({
        let request = shell(
            &["agent"],
            serde_json::json!({ "command": "touch started; sleep 2" }),
            "",
        );
        async move { slow.invoke_tool(request).await }
    });
    // Once the slow call runs (its file appears; probing with calls instead
    // would contend for the very sandbox), another call is refused.
    let started = mesh.config.workspace_dir().join("acme/t-sh/started");
    eventually("the slow call runs", async || {
        started.exists().then_some(())
    })
    .await;
    let status = tools
        .invoke_tool(shell(
            &["agent"],
            serde_json::json!({ "command": "true" }),
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(running.await.unwrap().is_ok());
    mesh.stop().await;
}

#[tokio::test]
async fn mcp_tools_are_namespaced_checked_and_registered_only_by_operators() {
    let demo = common::procs::bin("amaos-mcp-demo");
    let mesh = TestMesh::start_with(|c| {
        c.tools.mcp_servers.insert(
            "demo".into(),
            amaos_mesh::config::McpServerConfig {
                command: vec![demo.display().to_string()],
                read_only_paths: vec![demo.clone()],
                ..Default::default()
            },
        );
    })
    .await;
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let listed = tools
        .list_tools(mesh.internal("acme", &["agent"], tools::ListToolsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tools;
    let add = listed.iter().find(|t| t.name == "demo.add").unwrap();
    assert_eq!(add.source, "mcp:demo");
    assert!(add.input_schema.is_some());
    let call = |args: serde_json::Value| {
        mesh.internal(
            "acme",
            &["agent"],
            tools::InvokeToolRequest {
                tool: "demo.add".into(),
                arguments: Some(map_to_struct(args.as_object().unwrap())),
                task_id: "t-mcp".into(),
                ..Default::default()
            },
        )
    };
    let sum = tools
        .invoke_tool(call(serde_json::json!({"a": 20, "b": 22})))
        .await
        .unwrap()
        .into_inner();
    let result = amaos_proto::json::value_to_json(sum.result.as_ref().unwrap());
    assert_eq!(result["content"][0]["text"], "42", "{result}");
    let status = tools
        .invoke_tool(call(serde_json::json!({"a": "x", "b": 1})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_details_bad_request().unwrap();
    assert_eq!(details.field_violations[0].field, "arguments.a");
    // Registering servers is for operators and admins.
    let status = tools
        .register_tool_server(mesh.internal(
            "acme",
            &["developer"],
            tools::RegisterToolServerRequest {
                name: "other".into(),
                transport: Some(tools::register_tool_server_request::Transport::Stdio(
                    tools::StdioServer {
                        command: "/bin/true".into(),
                        ..Default::default()
                    },
                )),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    mesh.stop().await;
}
