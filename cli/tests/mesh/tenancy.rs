//! Tenants stay apart: semantic recall and another tenant's token on tasks, memory and keys.

use super::*;

#[tokio::test]
async fn semantic_recall_through_the_service_never_crosses_tenants_and_forget_empties_a_session() {
    let mesh = TestMesh::start().await;
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let remember = |text: &str, session: &str| memory::RememberRequest {
        team: "crew".into(),
        agent: "researcher".into(),
        session_id: session.into(),
        kind: memory::MemoryKind::Fact as i32,
        text: text.into(),
        ..Default::default()
    };
    for (tenant, text) in [
        ("acme", "Our cafeteria serves lasagne on Thursdays."),
        ("globex", "The launch code for project X is 7731."),
        (
            "globex",
            "Globex's quarterly revenue grew by twelve percent.",
        ),
    ] {
        memory
            .remember(mesh.internal(tenant, &["agent"], remember(text, "s1")))
            .await
            .unwrap();
    }
    let recall = |query: &str| memory::RecallRequest {
        query: query.into(),
        top_k: 10,
        ..Default::default()
    };
    let acme = memory
        .recall(mesh.internal(
            "acme",
            &["agent"],
            recall("What is the secret launch code?"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.mode, memory::RecallMode::Hybrid as i32);
    let texts: Vec<String> = acme
        .memories
        .iter()
        .map(|m| m.item.as_ref().unwrap().text.clone())
        .collect();
    assert_eq!(
        texts,
        ["Our cafeteria serves lasagne on Thursdays."],
        "acme sees only its own"
    );
    let globex = memory
        .recall(mesh.internal(
            "globex",
            &["agent"],
            recall("What is the secret launch code?"),
        ))
        .await
        .unwrap()
        .into_inner();
    let best = globex.memories[0].item.as_ref().unwrap();
    assert_eq!(
        best.text, "The launch code for project X is 7731.",
        "semantic ranking"
    );
    // An empty query is refused with the field named.
    let status = memory
        .recall(mesh.internal("acme", &["agent"], recall("  ")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Forgetting globex's session leaves acme untouched.
    assert_eq!(forget_session(&mesh, &mut memory, "globex", "s1").await, 2);
    let left = memory
        .recall(mesh.internal("acme", &["agent"], recall("lasagne")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.memories.len(), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn another_tenants_token_is_denied_on_tasks_memory_and_keys_everywhere() {
    let mesh = TestMesh::start().await;
    let acme_key = mesh.create_key("acme", "developer").await;
    let id = mesh
        .submit(&acme_key, &research_crew(), "vector databases")
        .await;
    mesh.events(&acme_key, &id).await;
    // Globex's strongest credentials: an admin key and an admin token.
    let globex_admin = mesh.create_key("globex", "admin").await;
    let globex_token = mesh.token("globex", &["admin"]);

    for credential in [&globex_admin, &globex_token] {
        let mut orchestrator = mesh.orchestrator();
        // Tasks: another tenant's task does not exist for them.
        let status = orchestrator
            .get_task(TestMesh::with_key(
                credential,
                pb::GetTaskRequest {
                    task_id: id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = orchestrator
            .cancel_task(TestMesh::with_key(
                credential,
                pb::CancelTaskRequest {
                    task_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let watched = orchestrator
            .watch_task(TestMesh::with_key(
                credential,
                pb::WatchTaskRequest {
                    task_id: id.clone(),
                    after_sequence: 0,
                },
            ))
            .await;
        let code = match watched {
            Err(status) => status.code(),
            Ok(stream) => stream.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code, Code::NotFound);
        let listed = orchestrator
            .list_tasks(TestMesh::with_key(
                credential,
                pb::ListTasksRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(listed.iter().all(|t| t.task_id != id), "{listed:?}");

        // Keys: naming another tenant is refused; its keys cannot be revoked.
        let mut auth = mesh.auth();
        let status = auth
            .list_api_keys(TestMesh::with_key(
                credential,
                amaos_proto::auth::v1::ListApiKeysRequest {
                    tenant: "acme".into(),
                    include_revoked: true,
                },
            ))
            .await
            .unwrap_err();
        // Auth manages keys with API keys only: a token is not even a login there.
        let expected = if credential.starts_with("amaos_") {
            Code::PermissionDenied
        } else {
            Code::Unauthenticated
        };
        assert_eq!(status.code(), expected, "{status:?}");
    }
    let acme_keys = mesh
        .auth()
        .list_api_keys(TestMesh::with_key(
            &mesh.admin_key,
            amaos_proto::auth::v1::ListApiKeysRequest {
                tenant: "acme".into(),
                include_revoked: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let acme_key_id = acme_keys[0].key_id.clone();
    let status = mesh
        .auth()
        .revoke_api_key(TestMesh::with_key(
            &globex_admin,
            amaos_proto::auth::v1::RevokeApiKeyRequest {
                key_id: acme_key_id,
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::NotFound | Code::PermissionDenied),
        "{status:?}"
    );
    // Acme's key still works.
    mesh.task(&acme_key, &id).await;

    // Memory: globex recalls nothing of acme's and forgets none of it.
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    memory
        .remember(mesh.internal(
            "acme",
            &["agent"],
            memory::RememberRequest {
                session_id: "s1".into(),
                text: "acme's launch date is the 3rd of March".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let recall = |tenant: &str| {
        mesh.internal(
            tenant,
            &["agent"],
            memory::RecallRequest {
                query: "when is the launch".into(),
                top_k: 5,
                ..Default::default()
            },
        )
    };
    let theirs = memory.recall(recall("globex")).await.unwrap().into_inner();
    assert!(
        !format!("{theirs:?}").contains("3rd of March"),
        "{theirs:?}"
    );
    assert_eq!(forget_session(&mesh, &mut memory, "globex", "s1").await, 0);
    let ours = memory.recall(recall("acme")).await.unwrap().into_inner();
    assert!(format!("{ours:?}").contains("3rd of March"), "{ours:?}");
    mesh.stop().await;
}
