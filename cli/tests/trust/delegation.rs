//! The orchestrator signs run tokens with a key auth delegated to it: who obtains one, what it signs, and its renewal.

use super::*;

/// Run tokens are signed in the orchestrator with a key auth delegated to it
/// (no call to auth per attempt). Only the platform's service key obtains a
/// delegation, and a delegated key signs nothing but run tokens: a token it
/// signs for the `admin` role, or for no task, is refused like a forgery.
#[tokio::test]
async fn only_the_platform_service_obtains_a_delegation_and_it_signs_only_run_tokens() {
    let mesh = TestMesh::start().await;
    let delegate = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let ask = |key: &str, public_key: Vec<u8>| {
        TestMesh::with_key(key, auth::DelegateRunSigningRequest { public_key })
    };
    let public = delegate.verifying_key().to_bytes().to_vec();
    // A tenant's admin, and a developer who may not even issue tokens.
    for role in ["admin", "developer"] {
        let key = mesh.create_key("acme", role).await;
        let status = mesh
            .auth()
            .delegate_run_signing(ask(&key, public.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let service_key = std::fs::read_to_string(mesh.config.service_key_file()).unwrap();
    let service_key = service_key.trim();
    let status = mesh
        .auth()
        .delegate_run_signing(ask(service_key, vec![7; 5]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let delegation = mesh
        .auth()
        .delegate_run_signing(ask(service_key, public))
        .await
        .unwrap()
        .into_inner()
        .delegation;

    // Presented as a credential, the delegation itself is refused.
    let mut orchestrator = mesh.orchestrator();
    let status = orchestrator
        .list_tasks(TestMesh::with_key(
            &delegation,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // An admin token and a token for no task, signed with the delegated key.
    let mut forged = amaos_mesh::token::claims_for(
        "mallory",
        "acme",
        &["admin".into()],
        std::time::Duration::from_secs(60),
        "",
    );
    for (roles, task) in [(vec!["admin".to_owned()], ""), (vec!["agent".into()], "")] {
        forged.roles = roles;
        forged.task = task.into();
        let token = amaos_mesh::token::sign_delegated(&forged, &delegation, &delegate);
        let status = orchestrator
            .list_tasks(TestMesh::with_key(&token, pb::ListTasksRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // A real run is signed under a delegation and runs to its end.
    let key = mesh.create_key("acme", "developer").await;
    let task = mesh
        .submit(&key, &common::research_crew(), "delegated signing")
        .await;
    let events = mesh.events(&key, &task).await;
    assert_eq!(
        mesh.task(&key, &task).await.state,
        pb::TaskState::Succeeded as i32,
        "{events:?}"
    );
    let decisions = std::fs::read_to_string(mesh.config.audit_file()).unwrap();
    let delegations: Vec<serde_json::Value> = decisions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "tokens.delegate")
        .collect();
    assert_eq!(
        delegations
            .iter()
            .map(|r| r["decision"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["deny", "deny", "allow", "allow"],
        "the test's two refused and one granted delegations, then the orchestrator's"
    );
    mesh.stop().await;
}

/// A delegation that no longer covers the run token an attempt needs is
/// renewed, rather than every attempt falling back to a call to auth (with
/// the defaults — 15 min delegations, 10 min tasks — that fell back for more
/// than half of each delegation's life).
#[tokio::test]
async fn a_delegation_that_no_longer_covers_a_run_is_renewed() {
    let mesh = TestMesh::start_with(|config| {
        config.auth.token_ttl = std::time::Duration::from_secs(40);
        config.orchestrator.task_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    let key = mesh.create_key("acme", "developer").await;
    let delegations = || {
        std::fs::read_to_string(mesh.config.audit_file())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["action"] == "tokens.delegate" && r["decision"] == "allow")
            .count()
    };
    // Each run token lives 35 s (the task's 5 s plus the margin); the first
    // delegation covers 40 s, so 11 s later a run needs a new one — and a
    // delegation younger than 10 s (`DELEGATION_FRESH`) is never renewed,
    // so the pause cannot be shorter: it is time that must pass.
    for (pause, expected) in [(0, 1), (11, 2)] {
        tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
        let task = mesh.submit(&key, &common::research_crew(), "renewal").await;
        let events = mesh.events(&key, &task).await;
        assert_eq!(
            mesh.task(&key, &task).await.state,
            pb::TaskState::Succeeded as i32,
            "{events:?}"
        );
        assert_eq!(delegations(), expected);
    }
    mesh.stop().await;
}
