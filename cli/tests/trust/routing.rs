//! The router serves each call only to the identity it is for.

use super::*;

#[tokio::test]
async fn the_router_serves_each_call_only_to_the_identity_it_is_for() {
    let mesh = TestMesh::start_with(|c| c.router.max_workers_per_identity = 3).await;
    let mut router = RouterServiceClient::new(mesh.channel(&mesh.config.router.url));
    let live = workers(&mesh).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let live = &live[0];

    // No credentials, or a user's key without a service identity.
    let status = router
        .register_worker(registration("", "http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = router
        .register_worker(TestMesh::with_key(
            &mesh.admin_key,
            registration("", "http://127.0.0.1:1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A service identity that is not a worker's: the platform admin's own
    // token, and a `worker` key made by a tenant's admin in that tenant.
    let admin_token = token_of(&mesh, &mesh.admin_key).await;
    let acme_admin = mesh.create_key("acme", "admin").await;
    let acme_worker = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &acme_admin,
            auth::CreateApiKeyRequest {
                name: "rogue".into(),
                roles: vec!["worker".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let acme_worker_token = token_of(&mesh, &acme_worker).await;
    for token in [&admin_token, &acme_worker_token] {
        let status = router
            .register_worker(as_service(
                token,
                None,
                registration("", "http://127.0.0.1:1"),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    // The workers' own key may register, but only at addresses inside
    // router.worker_networks (loopback here): not a private or a metadata
    // address, nor a name that resolves outside.
    let worker_key = std::fs::read_to_string(mesh.config.worker_key_file()).unwrap();
    let worker_token = token_of(&mesh, worker_key.trim()).await;
    for address in [
        "http://10.1.2.3:50053",
        "http://169.254.169.254",
        "http://[fd00::1]:80",
        "http://example.invalid:80",
    ] {
        let status = router
            .register_worker(as_service(&worker_token, None, registration("", address)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{address}: {status:?}"
        );
    }

    // Another worker identity (a platform admin made it) can neither take
    // over the live worker's id — and with it the traffic — nor drain it.
    let other_worker = mesh
        .auth()
        .create_api_key(TestMesh::with_key(
            &mesh.admin_key,
            auth::CreateApiKeyRequest {
                name: "second-worker-identity".into(),
                roles: vec!["worker".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let other_token = token_of(&mesh, &other_worker).await;
    let status = router
        .register_worker(as_service(
            &other_token,
            None,
            registration(&live.worker_id, "http://127.0.0.2:1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = router
        .heartbeat(as_service(
            &other_token,
            None,
            router::HeartbeatRequest {
                worker_id: live.worker_id.clone(),
                in_flight: 0,
                draining: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let now = workers(&mesh).await;
    let still = now.iter().find(|w| w.worker_id == live.worker_id).unwrap();
    assert_eq!(still.address, live.address);
    assert_eq!(still.state, router::WorkerState::Live as i32);

    // Registrations are bounded per identity.
    for n in 0..3 {
        router
            .register_worker(as_service(
                &other_token,
                None,
                registration("", &format!("http://127.0.0.3:{}", 1000 + n)),
            ))
            .await
            .unwrap();
    }
    let status = router
        .register_worker(as_service(
            &other_token,
            None,
            registration("", "http://127.0.0.3:2000"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Routing and outcomes are the orchestrator's alone.
    let route = || router::RouteRequest {
        team: "research-crew".into(),
        ..Default::default()
    };
    let outcome = || router::ReportOutcomeRequest {
        worker_id: live.worker_id.clone(),
        team: "research-crew".into(),
        success: false,
        error: "forged".into(),
        scope: router::FailureScope::Unreachable as i32,
    };
    assert_eq!(
        router.route(route()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        router.report_outcome(outcome()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        router
            .route(as_service(&worker_token, None, route()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        router
            .report_outcome(as_service(&worker_token, None, outcome()))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let breakers = workers(&mesh).await;
    let still = breakers
        .iter()
        .find(|w| w.worker_id == live.worker_id)
        .unwrap();
    assert_eq!(still.breaker, router::BreakerState::Closed as i32);

    // Workers' addresses are for operators and admins.
    assert_eq!(
        router
            .list_workers(router::ListWorkersRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    for role in ["viewer", "developer"] {
        let key = mesh.create_key("acme", role).await;
        assert_eq!(
            router
                .list_workers(TestMesh::with_key(
                    &key,
                    router::ListWorkersRequest::default()
                ))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied,
            "{role}"
        );
    }
    let operator = mesh.create_key("acme", "operator").await;
    router
        .list_workers(TestMesh::with_key(
            &operator,
            router::ListWorkersRequest::default(),
        ))
        .await
        .unwrap();

    // The mesh still runs its work through the real worker.
    let id = mesh
        .orchestrator()
        .submit_task(TestMesh::with_key(
            &mesh.admin_key,
            pb::SubmitTaskRequest {
                team: Some(pb::TeamRef {
                    team: Some(pb::team_ref::Team::Name("research-crew".into())),
                }),
                input: "trust".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let events = mesh.events(&mesh.admin_key, &id).await;
    let task = mesh
        .orchestrator()
        .get_task(TestMesh::with_key(
            &mesh.admin_key,
            pb::GetTaskRequest { task_id: id },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{events:?}");
    mesh.stop().await;
}
