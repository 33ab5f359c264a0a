//! Services' own identities between each other.
//!
//! Nothing is trusted for being on the network: a service that calls another
//! for itself (a worker registering with the router, the orchestrator
//! routing or starting a run) proves who it is with a token of the platform
//! tenant carrying its service role, sent in the [`SERVICE_HEADER`] metadata
//! entry beside `authorization` (which keeps carrying the credential of the
//! tenant the call acts for, such as a run token). The token is obtained
//! from auth with the service's own key ([`ServiceCredential`]) and renewed
//! before it expires; receivers verify it locally ([`require_service`]).
//!
//! The service roles: [`ORCHESTRATOR`] (routes, reports outcomes, starts
//! runs, mints run tokens) and [`WORKER`] (an agents worker: registers and
//! heartbeats). Only a platform admin can create keys holding them, and auth
//! never delegates them in tokens it issues for others.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::client::MeshChannel;
use crate::token::{Claims, TokenVerifier};

/// The metadata entry carrying the calling service's own token.
pub const SERVICE_HEADER: &str = "x-amaos-service";
/// The tenant of platform identities (services, platform admins).
pub const PLATFORM_TENANT: &str = "default";
/// The orchestrator's service role.
pub const ORCHESTRATOR: &str = "service";
/// An agents worker's service role.
pub const WORKER: &str = "worker";

/// A verified service identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCaller {
    /// The principal (the service key's id): owner of what it registers.
    pub principal: String,
    /// The service role it proved.
    pub role: &'static str,
}

/// The token in [`SERVICE_HEADER`], verified, holding `role` in the platform
/// tenant; UNAUTHENTICATED when absent or invalid, PERMISSION_DENIED when it
/// proves another identity.
pub async fn require_service(
    verifier: &TokenVerifier,
    metadata: &MetadataMap,
    role: &'static str,
) -> Result<ServiceCaller, tonic::Status> {
    let claims = service_claims(verifier, metadata).await?;
    if claims.tenant == PLATFORM_TENANT && claims.roles.iter().any(|r| r == role) {
        Ok(ServiceCaller {
            principal: claims.sub,
            role,
        })
    } else {
        Err(tonic::Status::permission_denied(format!(
            "this call is reserved to the `{role}` service identity"
        )))
    }
}

/// The verified claims of the service token in `metadata`.
pub async fn service_claims(
    verifier: &TokenVerifier,
    metadata: &MetadataMap,
) -> Result<Claims, tonic::Status> {
    let token = metadata
        .get(SERVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            tonic::Status::unauthenticated(format!(
                "this call needs a service identity: send `{SERVICE_HEADER}: Bearer <service token>`"
            ))
        })?;
    Ok(verifier.verify(token).await?)
}

/// A service's own credential: its key, read from a file when first needed
/// and exchanged at auth for a token that is renewed once a third of its
/// life is left.
pub struct ServiceCredential {
    auth: AuthServiceClient<MeshChannel>,
    key_file: PathBuf,
    /// The token and when to renew it; read on every call.
    current: std::sync::RwLock<Option<(String, Instant)>>,
    /// Held while fetching, so concurrent callers share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredential")
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServiceCredential {
    /// A credential exchanging the key in `key_file` at `auth`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, key_file: PathBuf) -> Self {
        Self {
            auth,
            key_file,
            current: std::sync::RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The service key itself (for calls to auth that take a key).
    pub fn key(&self) -> Result<String, tonic::Status> {
        std::fs::read_to_string(&self.key_file)
            .map(|k| k.trim().to_owned())
            .map_err(|e| {
                tonic::Status::unauthenticated(format!(
                    "this service's key {} cannot be read ({e}): auth writes it at first start; in a cluster mount it from a Secret",
                    self.key_file.display()
                ))
            })
    }

    /// A valid token for this service, fetched or renewed when needed.
    /// Concurrent callers share one fetch.
    pub async fn token(&self) -> Result<String, tonic::Status> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let asked = Instant::now();
        let response = self
            .auth
            .clone()
            .authenticate(pb::AuthenticateRequest {
                api_key: self.key()?,
                audience: String::new(),
            })
            .await
            .map_err(|s| {
                tonic::Status::new(
                    s.code(),
                    format!("obtaining this service's token from auth: {}", s.message()),
                )
            })?
            .into_inner();
        let life = response
            .expires_at
            .as_ref()
            .and_then(amaos_proto::time::system_time)
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some((response.token.clone(), asked + life * 2 / 3));
        Ok(response.token)
    }

    fn fresh(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(_, renew_at)| Instant::now() < *renew_at)
            .map(|(token, _)| token.clone())
    }

    /// Puts this service's token into `metadata` (under [`SERVICE_HEADER`]).
    pub async fn stamp(&self, metadata: &mut MetadataMap) -> Result<(), tonic::Status> {
        let token = self.token().await?;
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| tonic::Status::internal("a service token does not fit in metadata"))?;
        metadata.insert(SERVICE_HEADER, value);
        Ok(())
    }
}
