use super::*;

fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    caller::set_bearer(request.metadata_mut(), key).unwrap();
    request
}

fn trail(config: &Config) -> Vec<amaos_mesh::audit::Record> {
    std::fs::read_to_string(config.audit_file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn refused_actions_are_recorded_as_deny() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let opened = open(&config, policy::Policy::builtin()).await.unwrap();
    let auth = Auth::new(opened.state);
    let platform = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let create = |tenant: &str, roles: &[&str]| pb::CreateApiKeyRequest {
        name: "k".into(),
        tenant: tenant.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ttl: None,
        idempotency_key: String::new(),
    };
    let acme = auth
        .create_api_key(with_key(platform.trim(), create("acme", &["admin"])))
        .await
        .unwrap()
        .into_inner();
    let acme_id = acme.api_key.unwrap().key_id;

    // An admin of acme acting on globex, revoking a key it cannot see,
    // delegating a role that cannot be delegated: each refused, each
    // recorded as deny (never allow) before the refusal is answered.
    let status = auth
        .create_api_key(with_key(&acme.secret, create("globex", &["developer"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = auth
        .revoke_api_key(with_key(
            &acme.secret,
            pb::RevokeApiKeyRequest {
                key_id: "no-such-key".into(),
                idempotency_key: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = auth
        .issue_token(with_key(
            &acme.secret,
            pb::IssueTokenRequest {
                tenant: "acme".into(),
                subject: "someone".into(),
                roles: vec!["admin".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let refusals: Vec<(String, String, String)> = trail(&config)
        .into_iter()
        .filter(|r| r.principal == acme_id)
        .map(|r| (r.action, r.object, r.decision))
        .collect();
    let expected = [
        ("keys.create", "tenant:globex"),
        ("keys.revoke", "no-such-key"),
        ("tokens.issue", "role:admin"),
    ]
    .map(|(a, o)| (a.to_owned(), o.to_owned(), "deny".to_owned()));
    assert_eq!(refusals, expected);
}
