//! Token verification against keys fetched from the auth service: requests
//! that arrive together with a token signed by a key not yet known all pass
//! on one fetch, and unknown keys do not make every request fetch again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amaos_mesh::config::Limits;
use amaos_mesh::token::{self, KeySource, TokenError, TokenVerifier};
use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use amaos_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use ed25519_dalek::SigningKey;
use tonic::{Request, Response, Status};

/// Serves one signing key, slowly, and counts the fetches.
struct SlowKeys {
    key: SigningKey,
    fetches: Arc<AtomicUsize>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AuthService for SlowKeys {
    async fn create_api_key(
        &self,
        _: Request<pb::CreateApiKeyRequest>,
    ) -> Answer<pb::CreateApiKeyResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn list_api_keys(
        &self,
        _: Request<pb::ListApiKeysRequest>,
    ) -> Answer<pb::ListApiKeysResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn revoke_api_key(
        &self,
        _: Request<pb::RevokeApiKeyRequest>,
    ) -> Answer<pb::RevokeApiKeyResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn authenticate(
        &self,
        _: Request<pb::AuthenticateRequest>,
    ) -> Answer<pb::AuthenticateResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn issue_token(
        &self,
        _: Request<pb::IssueTokenRequest>,
    ) -> Answer<pb::IssueTokenResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn delegate_run_signing(
        &self,
        _: Request<pb::DelegateRunSigningRequest>,
    ) -> Answer<pb::DelegateRunSigningResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn get_signing_keys(
        &self,
        _: Request<pb::GetSigningKeysRequest>,
    ) -> Answer<pb::GetSigningKeysResponse> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Response::new(pb::GetSigningKeysResponse {
            keys: vec![pb::SigningKey {
                key_id: "k1".into(),
                algorithm: "EdDSA".into(),
                public_key: self.key.verifying_key().to_bytes().to_vec(),
                created_at: None,
            }],
        }))
    }
    async fn authorize(&self, _: Request<pb::AuthorizeRequest>) -> Answer<pb::AuthorizeResponse> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn query_audit(
        &self,
        _: Request<pb::QueryAuditRequest>,
    ) -> Answer<pb::QueryAuditResponse> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn concurrent_requests_with_a_new_key_pass_on_one_fetch() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(SlowKeys {
                key: key.clone(),
                fetches: fetches.clone(),
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = amaos_mesh::client::channel(&url, &Limits::default()).unwrap();
    let verifier = Arc::new(TokenVerifier::new(KeySource::Auth(AuthServiceClient::new(
        channel,
    ))));

    // Eight runs start at once, each presenting its own token.
    let tokens: Vec<String> = (0..8)
        .map(|i| {
            let claims = token::claims_for(
                &format!("user-{i}"),
                "acme",
                &["agent".into()],
                Duration::from_secs(60),
                "",
            );
            token::sign(&claims, "k1", &key)
        })
        .collect();
    let checks = tokens.iter().map(|t| {
        let verifier = verifier.clone();
        let t = t.clone();
        tokio::spawn(async move { verifier.verify(&t).await })
    });
    for result in futures::future::join_all(checks).await {
        let claims = result.unwrap().unwrap();
        assert_eq!(claims.tenant, "acme");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // A key the auth service does not have: refused, and a burst of such
    // tokens fetches at most once more.
    let forged = SigningKey::from_bytes(&[9; 32]);
    let bad = token::sign(
        &token::claims_for("mallory", "acme", &[], Duration::from_secs(60), ""),
        "k2",
        &forged,
    );
    for _ in 0..5 {
        let error = verifier.verify(&bad).await.unwrap_err();
        assert!(
            matches!(error, TokenError::UnknownKey(ref kid) if kid == "k2"),
            "{error:?}"
        );
    }
    assert!(fetches.load(Ordering::SeqCst) <= 2, "{fetches:?}");
}
