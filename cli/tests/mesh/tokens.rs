//! Every service verifies tokens and refuses forged, expired, early, misaddressed and confused ones.

use super::*;

#[tokio::test]
async fn every_service_verifies_tokens_and_trusts_no_bare_headers() {
    let mesh = TestMesh::start().await;
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let recent = || memory::RecentRequest {
        filter: None,
        limit: 10,
    };

    // Identity headers without a token are not trusted any more.
    let mut forged = tonic::Request::new(recent());
    forged
        .metadata_mut()
        .insert("x-amaos-tenant", "acme".parse().unwrap());
    forged
        .metadata_mut()
        .insert("x-amaos-roles", "admin".parse().unwrap());
    assert_eq!(
        memory.recent(forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A valid token works; tampered, unsigned and foreign-key tokens do not.
    let token = mesh.token("acme", &["agent"]);
    memory
        .recent(TestMesh::with_key(&token, recent()))
        .await
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let unsigned = format!("eyJhbGciOiJub25lIiwia2lkIjoieCJ9.{}.", parts[1]);
    let mut bad_sig = parts[2].to_owned();
    bad_sig.replace_range(
        0..2,
        if bad_sig.starts_with("AA") {
            "BB"
        } else {
            "AA"
        },
    );
    for bad in [
        unsigned,
        format!("{}.{}.{}", parts[0], parts[1], bad_sig),
        "not-a-token".into(),
    ] {
        let status = memory
            .recent(TestMesh::with_key(&bad, recent()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}: {status:?}");
    }
    let foreign = amaos_mesh::token::sign(
        &amaos_mesh::token::claims_for("x", "acme", &["agent".into()], Duration::from_secs(60), ""),
        "made-up-key",
        &ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
    );
    assert_eq!(
        memory
            .recent(TestMesh::with_key(&foreign, recent()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // The tenant comes from the token: tenant B's token sees nothing of A's.
    memory
        .remember(mesh.internal(
            "acme",
            &["agent"],
            memory::RememberRequest {
                text: "acme's secret plan".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let theirs = memory
        .recent(mesh.internal("globex", &["agent"], recent()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(theirs.is_empty());

    // The token Authenticate returns is accepted by the orchestrator, verified locally.
    let key = mesh.create_key("acme", "viewer").await;
    let issued = mesh
        .auth()
        .authenticate(amaos_proto::auth::v1::AuthenticateRequest {
            api_key: key,
            audience: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(issued.expires_at.is_some());
    mesh.orchestrator()
        .list_tasks(TestMesh::with_key(
            &issued.token,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap();
    let mut tampered = issued.token.clone();
    tampered.pop();
    tampered.push(if issued.token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let status = mesh
        .orchestrator()
        .list_tasks(TestMesh::with_key(
            &tampered,
            pb::ListTasksRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Tokens for others: a developer may not obtain them, a tenant's admin only
    // for its own tenant, and nobody may delegate more than `agent` or `viewer`.
    let issue = |key: String, tenant: &str, role: &str| {
        TestMesh::with_key(
            &key,
            amaos_proto::auth::v1::IssueTokenRequest {
                tenant: tenant.into(),
                subject: "x".into(),
                roles: vec![role.into()],
                ..Default::default()
            },
        )
    };
    let developer = mesh.create_key("acme", "developer").await;
    let acme_admin = mesh.create_key("acme", "admin").await;
    for (request, code) in [
        (issue(developer, "acme", "agent"), Code::PermissionDenied),
        (
            issue(acme_admin.clone(), "globex", "agent"),
            Code::PermissionDenied,
        ),
        (
            issue(acme_admin.clone(), "acme", "admin"),
            Code::PermissionDenied,
        ),
    ] {
        assert_eq!(
            mesh.auth().issue_token(request).await.unwrap_err().code(),
            code
        );
    }
    mesh.auth()
        .issue_token(issue(acme_admin, "acme", "agent"))
        .await
        .unwrap();
    mesh.stop().await;
}

/// HMAC-SHA256, for forging an HS256 token keyed with the public key.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test]
async fn forged_expired_early_misaddressed_and_confused_tokens_are_refused_by_every_service() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let mesh = TestMesh::start().await;
    let (kid, key) = mesh.signing_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = amaos_mesh::token::claims_for(
        "mallory",
        "acme",
        &["admin".into()],
        Duration::from_secs(300),
        "",
    );
    let with = |change: &dyn Fn(&mut amaos_mesh::token::Claims)| {
        let mut claims = good.clone();
        change(&mut claims);
        amaos_mesh::token::sign(&claims, &kid, &key)
    };
    let payload = B64.encode(serde_json::to_vec(&good).unwrap());
    let confused = {
        let header = B64.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
        let public = key.verifying_key().to_bytes();
        let mac = hmac_sha256(&public, format!("{header}.{payload}").as_bytes());
        format!("{header}.{payload}.{}", B64.encode(mac))
    };
    let unsigned = format!(
        "{}.{payload}.",
        B64.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#))
    );
    let forged: Vec<(&str, String)> = vec![
        ("alg none", unsigned),
        ("HS256 keyed with the public key", confused),
        (
            "expired",
            with(&|c| {
                c.iat = now - 3600;
                c.nbf = now - 3600;
                c.exp = now - 600;
            }),
        ),
        ("not yet valid", with(&|c| c.nbf = now + 600)),
        ("another audience", with(&|c| c.aud = "someone-else".into())),
        ("another issuer", with(&|c| c.iss = "someone-else".into())),
        (
            "a key id auth never published",
            amaos_mesh::token::sign(&good, "kid-that-does-not-exist", &key),
        ),
    ];
    // The control: the same claims, properly signed, pass everywhere.
    let valid = amaos_mesh::token::sign(&good, &kid, &key);
    let mut memory = MemoryServiceClient::new(mesh.channel(&mesh.config.memory.url));
    let mut tools = ToolsServiceClient::new(mesh.channel(&mesh.config.tools.url));
    let mut orchestrator = mesh.orchestrator();
    let recent = || memory::RecentRequest {
        filter: None,
        limit: 1,
    };
    memory
        .recent(TestMesh::with_key(&valid, recent()))
        .await
        .unwrap();
    tools
        .list_tools(TestMesh::with_key(
            &valid,
            tools::ListToolsRequest::default(),
        ))
        .await
        .unwrap();
    orchestrator
        .list_tasks(TestMesh::with_key(&valid, pb::ListTasksRequest::default()))
        .await
        .unwrap();
    for (what, token) in forged {
        let codes = [
            memory
                .recent(TestMesh::with_key(&token, recent()))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            tools
                .list_tools(TestMesh::with_key(
                    &token,
                    tools::ListToolsRequest::default(),
                ))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            orchestrator
                .list_tasks(TestMesh::with_key(&token, pb::ListTasksRequest::default()))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
        ];
        assert_eq!(codes, [Code::Unauthenticated; 3], "{what}");
    }
    mesh.stop().await;
}
