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

/// Checks API keys through the auth service.
pub struct Authenticator {
    auth: AuthServiceClient<MeshChannel>,
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
    ttl: Duration,
}

impl Authenticator {
    /// An authenticator asking `auth`, caching for `ttl`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, ttl: Duration) -> Self {
        Self {
            auth,
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The verified caller of a request.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, OrchestratorError> {
        let key = caller::bearer(metadata).ok_or(OrchestratorError::MissingCredentials)?;
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
        let principal = response
            .into_inner()
            .principal
            .ok_or(OrchestratorError::InvalidKey)?;
        let caller = Caller {
            tenant: principal.tenant,
            principal: principal.subject,
            roles: principal.roles,
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
    match amaos_mesh::policy::allows(&caller.roles, "tasks", action) {
        Some(_) => Ok(()),
        None => Err(OrchestratorError::Forbidden(format!(
            "roles [{}] may not `{action}` tasks",
            caller.roles.join(", ")
        ))),
    }
}
