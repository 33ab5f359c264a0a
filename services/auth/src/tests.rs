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

/// Counts the verifications that reach the store (each is one argon2 hash).
struct Counting {
    inner: Arc<dyn KeyBackend>,
    verified: std::sync::atomic::AtomicUsize,
}

#[tonic::async_trait]
impl KeyBackend for Counting {
    async fn is_empty(&self) -> Result<bool, AuthError> {
        self.inner.is_empty().await
    }
    async fn create(&self, new: NewKey<'_>) -> Result<(StoredKey, Option<String>), AuthError> {
        self.inner.create(new).await
    }
    async fn list(
        &self,
        tenant: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<StoredKey>, AuthError> {
        self.inner.list(tenant, include_revoked).await
    }
    async fn revoke(&self, key_id: &str, tenant: Option<&str>) -> Result<StoredKey, AuthError> {
        self.inner.revoke(key_id, tenant).await
    }
    async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        self.verified
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.verify(presented).await
    }
}

/// A client's first wave: 32 requests at once with a key not cached yet.
/// The key is hashed once and the others wait for the cache, instead of 32
/// argon2 hashes queued behind the hashing limit (a second of delay for the
/// whole wave on two cores). A wrong key gets no such help: each attempt
/// still costs its own hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_an_uncached_key_hashes_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let opened = open(&config, policy::Policy::builtin()).await.unwrap();
    let platform = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let mut state = Arc::try_unwrap(opened.state)
        .unwrap_or_else(|_| panic!("the state is shared before it is served"));
    let counting = Arc::new(Counting {
        inner: state.keys.clone(),
        verified: Default::default(),
    });
    state.keys = counting.clone();
    let state = Arc::new(state);
    let burst: Vec<_> = (0..32)
        .map(|_| {
            let state = state.clone();
            let key = platform.trim().to_owned();
            tokio::spawn(async move { state.verify(&key).await })
        })
        .collect();
    for call in burst {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        counting.verified.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(state.flights.lock().unwrap().is_empty());

    let wrong = format!("{}x", platform.trim());
    let burst: Vec<_> = (0..3)
        .map(|_| {
            let state = state.clone();
            let key = wrong.clone();
            tokio::spawn(async move { state.verify(&key).await })
        })
        .collect();
    for call in burst {
        assert!(call.await.unwrap().is_err());
    }
    assert_eq!(
        counting.verified.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    assert!(state.flights.lock().unwrap().is_empty());
}
