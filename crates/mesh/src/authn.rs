//! Who is calling, from the credential a user holds: an API key (checked by
//! the auth service, the answer cached for a while so argon2 runs once per
//! key per TTL and a revoked key stops working within it) or a signed token
//! (verified locally). Every service accepts both in
//! `authorization: Bearer …`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::caller::{self, Caller};
use crate::client::MeshChannel;
use crate::token::{TokenError, TokenVerifier};

const MAX_CACHED: usize = 10_000;

/// Why a caller could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// No `authorization: Bearer …`.
    #[error("missing credentials: send `authorization: Bearer <API key or token>`")]
    Missing,
    /// The key or token is not valid.
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// Auth could not be asked.
    #[error("auth is unavailable: {}", .0.message())]
    Unavailable(tonic::Status),
}

impl From<AuthnError> for tonic::Status {
    fn from(error: AuthnError) -> Self {
        match error {
            AuthnError::Missing | AuthnError::Invalid(_) => {
                tonic::Status::unauthenticated(error.to_string())
            }
            AuthnError::Unavailable(_) => tonic::Status::unavailable(error.to_string()),
        }
    }
}

/// Checks API keys through the auth service, and tokens locally.
pub struct Authenticator {
    auth: AuthServiceClient<MeshChannel>,
    verifier: TokenVerifier,
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
    ttl: Duration,
}

impl Authenticator {
    /// An authenticator asking `auth`, caching keys' answers for `ttl`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, ttl: Duration) -> Self {
        Self {
            verifier: TokenVerifier::new(crate::token::KeySource::Auth(auth.clone())),
            auth,
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// An authenticator for the auth service at `url`.
    pub fn from_auth(
        dialer: &crate::client::Dialer,
        url: &str,
        ttl: Duration,
    ) -> Result<Self, crate::client::ChannelError> {
        Ok(Self::new(
            AuthServiceClient::new(dialer.channel("auth", url)?),
            ttl,
        ))
    }

    /// The token verifier behind it (for service tokens).
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// The verified caller of a request.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, AuthnError> {
        let key = caller::bearer(metadata).ok_or(AuthnError::Missing)?;
        // A signed token is verified here, without asking auth.
        if key.split('.').count() == 3 {
            let claims = self.verifier.verify(key).await.map_err(|e| match e {
                TokenError::Keys(message) => {
                    AuthnError::Unavailable(tonic::Status::unavailable(message))
                }
                other => AuthnError::Invalid(other.to_string()),
            })?;
            return Ok(Caller {
                task: claims.run_scope(),
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
                audience: String::new(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unauthenticated => AuthnError::Invalid(status.message().to_owned()),
                _ => AuthnError::Unavailable(status),
            })?
            .into_inner();
        let principal = response
            .principal
            .ok_or_else(|| AuthnError::Invalid("auth named no principal".into()))?;
        let caller = Caller {
            tenant: principal.tenant,
            principal: principal.subject,
            roles: principal.roles,
            token: Some(response.token).filter(|t| !t.is_empty()),
            task: None,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(digest, (caller.clone(), Instant::now()));
        Ok(caller)
    }
}
