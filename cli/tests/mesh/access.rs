//! API keys (missing, wrong, revoked), message limits and the audit trail.

use super::*;

#[tokio::test]
async fn missing_wrong_and_revoked_keys_are_unauthenticated() {
    let mesh = TestMesh::start_with(|c| c.auth.key_cache_ttl = Duration::from_millis(1)).await;
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = orchestrator
        .list_tasks(TestMesh::with_key(
            "amaos_0123456789ab_wrong",
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A viewer may read but not submit.
    let viewer = mesh.create_key("acme", "viewer").await;
    orchestrator
        .list_tasks(TestMesh::with_key(&viewer, pb::ListTasksRequest::default()))
        .await
        .unwrap();
    let status = orchestrator
        .submit_task(TestMesh::with_key(
            &viewer,
            submit_spec(research_crew(), "x"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A revoked key stops working once the short verification cache expires.
    let keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                include_revoked: false,
                tenant: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    mesh.auth()
        .revoke_api_key(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::RevokeApiKeyRequest {
                key_id: keys[0].key_id.clone(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap();
    eventually("the revoked key is refused", async || {
        match orchestrator
            .list_tasks(TestMesh::with_key(&viewer, pb::ListTasksRequest::default()))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => Some(()),
            Err(status) => panic!("the revoked key: {status:?}"),
            Ok(_) => None,
        }
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let mesh = TestMesh::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let key = mesh.create_key("acme", "developer").await;
    let huge = "x".repeat(200 * 1024);
    let status = mesh
        .orchestrator()
        .max_encoding_message_size(1024 * 1024)
        .submit_task(TestMesh::with_key(
            &key,
            submit_spec(research_crew(), &huge),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn the_audit_trail_is_verifiable_and_privileged_actions_fail_closed() {
    let mesh = TestMesh::start().await;
    for tenant in ["acme", "globex", "initech"] {
        mesh.create_key(tenant, "developer").await;
    }
    let trail = mesh.config.audit_file();
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_amaos"))
            .args(["audit", "verify", "--file"])
            .arg(&trail)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact, 3 records"));

    // Edit the second record: verification names it.
    let text = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let edited = lines[1].replace("globex", "hooli");
    std::fs::write(&trail, format!("{}\n{edited}\n{}\n", lines[0], lines[2])).unwrap();
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("broken at record 1"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    // Delete it instead: still named.
    std::fs::write(&trail, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    assert!(String::from_utf8_lossy(&verify().stderr).contains("broken at record 1"));
    std::fs::write(&trail, &text).unwrap();

    // Every service appends to the one chain: a crew run leaves its
    // submission and each tool call, and the chain still verifies.
    let key = mesh.create_key("acme", "developer").await;
    let id = mesh
        .submit(&key, &research_crew(), "vector databases")
        .await;
    mesh.events(&key, &id).await;
    let actions: Vec<String> = std::fs::read_to_string(&trail)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            format!(
                "{} {} {}",
                r["action"].as_str().unwrap(),
                r["tenant"].as_str().unwrap(),
                r["decision"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        actions.contains(&"task.submit acme allow".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"tool.invoke acme allow".to_owned()),
        "{actions:?}"
    );
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    mesh.stop().await;

    // With the trail unwritable, creating a key is refused and no key appears.
    let mesh =
        TestMesh::start_with(|c| c.auth.audit_file = Some("/nonexistent-dir/audit.jsonl".into()))
            .await;
    let status = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::CreateApiKeyRequest {
                name: "x".into(),
                tenant: "acme".into(),
                roles: vec!["developer".into()],
                ttl: None,
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"));
    let keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                include_revoked: true,
                tenant: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(keys.is_empty());
    // Nor is a task submitted.
    let status = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &mesh.admin_key,
            submit_spec(research_crew(), "anything"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("audit"), "{status:?}");
    mesh.stop().await;
}
