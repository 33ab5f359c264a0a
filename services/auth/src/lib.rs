//! The auth service: API keys per tenant, authentication, authorization
//! decisions and the audit trail.
//!
//! # Layout
//!
//! - [`keys`]: the key store contract and its file backend (argon2id
//!   hashes in a JSON file); [`redis_keys`]: the same in Redis, for several
//!   replicas.
//! - the hash-chained audit trail is `amaos_mesh::audit`.
//! - [`signing`]: the Ed25519 keys that sign tokens, rotated.
//! - [`trail_check`]: the trail's verification QueryAudit reports, cached.
//! - [`error`]: the service's errors and their mapping to gRPC codes.
//! - `service`: the gRPC service ([`Auth`]) over [`AuthState`].
//! - this file: the state, the verification cache, [`open`] (which
//!   creates the first admin key) and [`serve`].

pub mod error;
pub mod keys;
pub mod metrics;
pub mod redis_keys;
mod service;
pub mod signing;
pub mod trail_check;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amaos_mesh::config::Limits;
use amaos_mesh::metrics::Metrics;
use amaos_mesh::server::GrpcService;
use amaos_mesh::{BoxError, Config, caller, limit_messages, policy};
use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use amaos_proto::time::{duration, timestamp};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use crate::service::Auth;

use crate::error::AuthError;
use crate::keys::{KeyBackend, KeyStore, NewKey, StoredKey};
use amaos_mesh::audit::{AuditLog, Entry};
use amaos_mesh::config::KeyStoreBackend;

/// The tenant whose admins manage every tenant.
pub const PLATFORM_TENANT: &str = amaos_mesh::identity::PLATFORM_TENANT;

/// Roles a service may put in tokens it obtains for others.
const DELEGABLE_ROLES: &[&str] = &["agent", "viewer"];

/// The longest life of a token not scoped to a task.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The longest life of a token scoped to a task: a run token lives until its
/// task's deadline, and is useless for any other task.
const MAX_TASK_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

const MAX_CACHE_ENTRIES: usize = 10_000;

/// The auth service's state.
pub struct AuthState {
    keys: Arc<dyn KeyBackend>,
    signer: signing::Signer,
    audit: AuditLog,
    trail_check: trail_check::TrailCheck,
    cache: Mutex<HashMap<[u8; 32], (StoredKey, Instant)>>,
    /// One verification at a time per presented key: a burst of requests
    /// with a key not yet cached (a client's first wave) hashes it once, the
    /// rest wait for the cache. Holds only the keys being verified now.
    flights: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    cache_ttl: Duration,
    max_key_ttl: Duration,
    /// The RBAC policy keys are held to.
    policy: policy::Policy,
    metrics: metrics::AuthMetrics,
}

/// What [`open`] found or made.
pub struct Opened {
    /// The state to serve.
    pub state: Arc<AuthState>,
    /// Where the first admin key was written, when the store was empty.
    pub bootstrap_key_file: Option<PathBuf>,
}

/// Creates a key of the platform tenant with `role`, once across replicas
/// (`once` is its idempotency key), and writes its secret to `path`
/// (mode 0600).
async fn bootstrap_key(
    keys: &dyn KeyBackend,
    name: &str,
    role: &str,
    once: &str,
    path: &std::path::Path,
) -> Result<(), AuthError> {
    let (_, secret) = keys
        .create(NewKey {
            key_id: amaos_mesh::new_id(),
            name,
            tenant: PLATFORM_TENANT,
            roles: vec![role.into()],
            ttl: None,
            idempotency_key: Some(once),
        })
        .await?;
    keys::write_secret_file(path, secret.as_deref().unwrap_or_default())
        .map_err(|e| AuthError::Store(format!("cannot write {}: {e}", path.display())))
}

/// Opens the key store; when it holds no key, creates an `admin` key for the
/// `default` tenant and writes its secret to `<data_dir>/admin.key`. The
/// state authorizes by `policy`.
pub async fn open(config: &Config, policy: policy::Policy) -> Result<Opened, AuthError> {
    let keys: Arc<dyn KeyBackend> = match config.auth.key_store {
        KeyStoreBackend::File => Arc::new(KeyStore::open(&config.key_file())?),
        KeyStoreBackend::Redis => Arc::new(
            redis_keys::RedisKeys::connect(&config.auth.redis_url, &config.auth.redis_prefix)
                .await?,
        ),
    };
    let mut bootstrap_key_file = None;
    if keys.is_empty().await? {
        // Replicas starting on an empty shared store make one key of each
        // (the idempotency keys).
        let path = config.data_dir.join("admin.key");
        bootstrap_key(&*keys, "bootstrap-admin", "admin", "bootstrap-admin", &path).await?;
        tracing::warn!(path = %path.display(), "created the first admin key for tenant `default`");
        bootstrap_key_file = Some(path);
        // The orchestrator's credential for task-scoped tokens.
        let path = config.service_key_file();
        bootstrap_key(
            &*keys,
            "orchestrator-service",
            amaos_mesh::identity::ORCHESTRATOR,
            "bootstrap-service",
            &path,
        )
        .await?;
    }
    // The agents workers' credential for registering with the router. A
    // store made before workers had one gets it at the next start.
    let worker_key = config.worker_key_file();
    if !worker_key.exists() {
        let once = format!("bootstrap-worker-{}", amaos_mesh::new_id());
        bootstrap_key(
            &*keys,
            "agents-worker",
            amaos_mesh::identity::WORKER,
            &once,
            &worker_key,
        )
        .await?;
    }
    let signer = signing::Signer::open(
        &config.signing_key_file(),
        config.auth.key_rotation,
        config.auth.token_ttl,
    )?;
    Ok(Opened {
        state: Arc::new(AuthState {
            keys,
            signer,
            audit: AuditLog::open_configured(config)
                .map_err(|e| AuthError::Store(e.to_string()))?,
            trail_check: trail_check::TrailCheck::new(config, trail_check::MIN_INTERVAL),
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            cache_ttl: config.auth.key_cache_ttl,
            max_key_ttl: config.auth.max_key_ttl,
            policy,
            metrics: metrics::AuthMetrics::default(),
        }),
        bootstrap_key_file,
    })
}

impl AuthState {
    /// Verifies a presented key, with a short cache so argon2 runs once per TTL.
    pub async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(key) = self.cached(&digest) {
            return Ok(key);
        }
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest)
            .or_default()
            .clone();
        let verified = {
            let _turn = flight.lock().await;
            // Whoever held the turn before may have cached it.
            match self.cached(&digest) {
                Some(key) => Ok(key),
                None => self.verify_uncached(&digest, presented).await,
            }
        };
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else waits on this key.
        if Arc::strong_count(&flight) == 2 {
            flights.remove(&digest);
        }
        verified
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<StoredKey> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (key, at) = cache.get(digest)?;
        if at.elapsed() < self.cache_ttl && key.usable(keys::now_ms()) {
            self.metrics.authenticated("ok");
            return Some(key.clone());
        }
        None
    }

    async fn verify_uncached(
        &self,
        digest: &[u8; 32],
        presented: &str,
    ) -> Result<StoredKey, AuthError> {
        let verified = self.keys.verify(presented).await;
        self.metrics.authenticated(match &verified {
            Ok(_) => "ok",
            Err(AuthError::InvalidKey) => "invalid",
            Err(_) => "error",
        });
        let key = verified?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(*digest, (key.clone(), Instant::now()));
        Ok(key)
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<StoredKey, AuthError> {
        let Some(presented) = caller::bearer(request.metadata()) else {
            self.metrics.authenticated("missing");
            return Err(AuthError::MissingCredentials);
        };
        self.verify(presented).await
    }

    /// Records that `key` was refused `action` on `object`. The action is
    /// refused either way; a trail that cannot be written is logged.
    async fn refused(&self, key: &StoredKey, action: &str, object: &str) {
        let entry = Entry {
            principal: &key.key_id,
            tenant: &key.tenant,
            action,
            object,
            allowed: false,
        };
        if let Err(error) = self.audit.append_async(entry).await {
            tracing::error!(%error, "could not audit a refusal");
        }
    }

    /// Checks that `key` may do `action` on `object`, auditing a refusal.
    async fn check(&self, key: &StoredKey, object: &str, action: &str) -> Result<(), AuthError> {
        if self
            .policy
            .allows(&key.key_id, &key.roles, &key.tenant, object, action)
            .is_some()
        {
            return Ok(());
        }
        self.refused(key, &format!("{object}.{action}"), object)
            .await;
        Err(AuthError::Forbidden(format!(
            "roles [{}] may not `{action}` on `{object}`",
            key.roles.join(", ")
        )))
    }

    /// The tenant a request acts on: its own, or (for platform admins)
    /// another; a refusal is audited as `action` on `tenant:<requested>`.
    async fn scope(
        &self,
        key: &StoredKey,
        requested: &str,
        action: &str,
    ) -> Result<String, AuthError> {
        if requested.is_empty() || requested == key.tenant {
            return Ok(key.tenant.clone());
        }
        if !caller::valid_tenant(requested) {
            return Err(AuthError::InvalidArgument {
                field: "tenant",
                message: "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
            });
        }
        if key.tenant == PLATFORM_TENANT && key.roles.iter().any(|r| r == "admin") {
            Ok(requested.to_owned())
        } else {
            self.refused(key, action, &format!("tenant:{requested}"))
                .await;
            Err(AuthError::Forbidden(format!(
                "a key of tenant `{}` cannot act on tenant `{requested}`",
                key.tenant
            )))
        }
    }

    fn forget_cached(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The auth service, ready for [`amaos_mesh::server::serve`].
pub fn grpc_service(state: Arc<AuthState>, limits: &Limits) -> GrpcService {
    GrpcService::public(
        "auth",
        limit_messages!(AuthServiceServer::new(Auth::new(state)), limits),
    )
}

/// Serves the auth service on `listener` until `shutdown`, authorizing by
/// `policy`.
pub async fn serve(
    config: Config,
    policy: policy::Policy,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let opened = open(&config, policy).await?;
    serve_state(opened.state, &config, listener, metrics, shutdown).await
}

/// Serves already-opened state (see [`open`]) on `listener` until `shutdown`.
pub async fn serve_state(
    state: Arc<AuthState>,
    config: &Config,
    listener: impl Into<amaos_mesh::server::Listener> + Send,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    // Rotate signing keys on schedule while serving.
    let rotation = {
        let state = state.clone();
        let every = (config.auth.key_rotation / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match state.signer.rotate_if_due() {
                    Ok(true) => {
                        state.metrics.rotated();
                        tracing::info!("rotated the token signing key");
                    }
                    Ok(false) => {}
                    Err(error) => tracing::error!(%error, "rotating the token signing key failed"),
                }
            }
        })
    };
    state.metrics.register(&metrics);
    let service = grpc_service(state, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, config, metrics, shutdown).await;
    rotation.abort();
    served?;
    Ok(())
}

#[cfg(test)]
mod tests;
