//! Authenticating callers: the bearer API key is checked by the auth service
//! and the answer cached for `auth.key_cache_ttl`, so a revoked key stops
//! working within that time and argon2 runs once per key per TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amaos_mesh::caller::{self, Caller};
use amaos_mesh::client::MeshChannel;
use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::OrchestratorError;

const MAX_CACHED: usize = 10_000;

/// Checks API keys through the auth service, and tokens locally.
pub struct Authenticator {
    auth: AuthServiceClient<MeshChannel>,
    verifier: amaos_mesh::token::TokenVerifier,
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
    ttl: Duration,
}

impl Authenticator {
    /// An authenticator asking `auth`, caching for `ttl`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, ttl: Duration) -> Self {
        Self {
            verifier: amaos_mesh::token::TokenVerifier::new(amaos_mesh::token::KeySource::Auth(
                auth.clone(),
            )),
            auth,
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The verified caller of a request.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, OrchestratorError> {
        let key = caller::bearer(metadata).ok_or(OrchestratorError::MissingCredentials)?;
        // A signed token is verified here, without asking auth.
        if key.split('.').count() == 3 {
            let claims = self.verifier.verify(key).await.map_err(|e| match e {
                amaos_mesh::token::TokenError::Keys(message) => OrchestratorError::Dependency {
                    service: "auth",
                    status: tonic::Status::unavailable(message),
                },
                _ => OrchestratorError::InvalidKey,
            })?;
            return Ok(Caller {
                tenant: claims.tenant,
                principal: claims.sub,
                roles: claims.roles,
                token: Some(key.to_owned()),
            });
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some((caller, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            && at.elapsed() < self.ttl
        {
            return Ok(caller.clone());
        }
        let response = self
            .auth
            .clone()
            .authenticate(pb::AuthenticateRequest {
                api_key: key.to_owned(),
                audience: "orchestrator".into(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unauthenticated => OrchestratorError::InvalidKey,
                _ => OrchestratorError::Dependency {
                    service: "auth",
                    status,
                },
            })?;
        let response = response.into_inner();
        let principal = response.principal.ok_or(OrchestratorError::InvalidKey)?;
        let caller = Caller {
            tenant: principal.tenant,
            principal: principal.subject,
            roles: principal.roles,
            token: Some(response.token).filter(|t| !t.is_empty()),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(digest, (caller.clone(), Instant::now()));
        Ok(caller)
    }
}

/// Checks that `caller` may do `action` on tasks.
pub fn require(caller: &Caller, action: &str) -> Result<(), OrchestratorError> {
    match amaos_mesh::policy::allows(
        &caller.principal,
        &caller.roles,
        &caller.tenant,
        "tasks",
        action,
    ) {
        Some(_) => Ok(()),
        None => Err(OrchestratorError::Forbidden(format!(
            "roles [{}] may not `{action}` tasks",
            caller.roles.join(", ")
        ))),
    }
}

/// Obtains task-scoped tokens (role `agent`) from auth with the orchestrator's
/// service key, so workers, tools and memory see only what the run may do.
pub struct RunTokens {
    auth: AuthServiceClient<MeshChannel>,
    key_file: std::path::PathBuf,
    key: tokio::sync::Mutex<Option<String>>,
    /// Tokens by (tenant, subject), with when they expire; reused while they
    /// outlive the run that asks.
    cache: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// Lifetime asked for a run token (the most auth grants).
const RUN_TOKEN_TTL: Duration = Duration::from_secs(3600);

impl RunTokens {
    /// Tokens from `auth`, with the service key read from `key_file` when first needed.
    pub fn new(auth: AuthServiceClient<MeshChannel>, key_file: std::path::PathBuf) -> Self {
        Self {
            auth,
            key_file,
            key: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A token for a run of `tenant` on behalf of `subject` with the `agent`
    /// role, valid for at least `needed` (up to 1 h) from now.
    pub async fn issue(
        &self,
        tenant: &str,
        subject: &str,
        needed: Duration,
    ) -> Result<String, String> {
        let cache_key = (tenant.to_owned(), subject.to_owned());
        let needed = needed.min(RUN_TOKEN_TTL - Duration::from_secs(60));
        if let Some((token, expires)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
            && expires.saturating_duration_since(Instant::now()) > needed
        {
            return Ok(token.clone());
        }
        let key = {
            let mut key = self.key.lock().await;
            if key.is_none() {
                let text = std::fs::read_to_string(&self.key_file).map_err(|e| {
                    format!(
                        "the service key {} cannot be read: {e}",
                        self.key_file.display()
                    )
                })?;
                *key = Some(text.trim().to_owned());
            }
            key.clone().unwrap_or_default()
        };
        let mut request = tonic::Request::new(pb::IssueTokenRequest {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            roles: vec!["agent".into()],
            audience: String::new(),
            ttl: Some(amaos_proto::time::proto_duration(RUN_TOKEN_TTL)),
            task_id: String::new(),
        });
        caller::set_bearer(request.metadata_mut(), &key).map_err(|s| s.message().to_owned())?;
        let token = self
            .auth
            .clone()
            .issue_token(request)
            .await
            .map(|r| r.into_inner().token)
            .map_err(|s| format!("auth refused a run token: {}", s.message()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        // Counted from before the call, so never longer than the token lives.
        cache.insert(
            cache_key,
            (
                token.clone(),
                Instant::now() + RUN_TOKEN_TTL - Duration::from_secs(5),
            ),
        );
        Ok(token)
    }
}
