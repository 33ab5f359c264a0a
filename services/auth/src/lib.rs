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
//! - this file: the gRPC service, the verification cache, [`open`] (which
//!   creates the first admin key) and [`serve`].

pub mod error;
pub mod keys;
pub mod redis_keys;
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
    cache_ttl: Duration,
    max_key_ttl: Duration,
    /// The RBAC policy keys are held to.
    policy: policy::Policy,
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
            cache_ttl: config.auth.key_cache_ttl,
            max_key_ttl: config.auth.max_key_ttl,
            policy,
        }),
        bootstrap_key_file,
    })
}

impl AuthState {
    /// Verifies a presented key, with a short cache so argon2 runs once per TTL.
    pub async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((key, at)) = cache.get(&digest)
                && at.elapsed() < self.cache_ttl
                && key.usable(keys::now_ms())
            {
                return Ok(key.clone());
            }
        }
        let key = self.keys.verify(presented).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest, (key.clone(), Instant::now()));
        Ok(key)
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<StoredKey, AuthError> {
        let presented = caller::bearer(request.metadata()).ok_or(AuthError::MissingCredentials)?;
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

fn ms_timestamp(ms: u64) -> prost_types::Timestamp {
    timestamp(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

fn to_proto(key: &StoredKey) -> pb::ApiKey {
    pb::ApiKey {
        key_id: key.key_id.clone(),
        name: key.name.clone(),
        tenant: key.tenant.clone(),
        roles: key.roles.clone(),
        prefix: key.prefix.clone(),
        created_at: Some(ms_timestamp(key.created_at_ms)),
        last_used_at: key.last_used_at_ms.map(ms_timestamp),
        revoked_at: key.revoked_at_ms.map(ms_timestamp),
        expires_at: key.expires_at_ms.map(ms_timestamp),
    }
}

fn principal(key: &StoredKey) -> pb::Principal {
    pb::Principal {
        subject: key.key_id.clone(),
        tenant: key.tenant.clone(),
        roles: key.roles.clone(),
        name: key.name.clone(),
    }
}

/// The gRPC face of [`AuthState`].
#[derive(Clone)]
pub struct Auth {
    state: Arc<AuthState>,
}

impl Auth {
    /// Serves `state`.
    pub fn new(state: Arc<AuthState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AuthService for Auth {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let key = self.state.caller(&request).await?;
        self.state.check(&key, "keys", "write").await?;
        let pb::CreateApiKeyRequest {
            name,
            tenant,
            roles,
            ttl,
            idempotency_key,
        } = request.into_inner();
        let tenant = self.state.scope(&key, &tenant, "keys.create").await?;
        if name.trim().is_empty() || name.chars().count() > 128 {
            return Err(AuthError::InvalidArgument {
                field: "name",
                message: "must be 1 to 128 characters".into(),
            }
            .into());
        }
        let roles = if roles.is_empty() {
            vec!["developer".to_owned()]
        } else {
            roles
        };
        if let Some(bad) = roles.iter().find(|r| !policy::ROLES.contains(&r.as_str())) {
            return Err(AuthError::InvalidArgument {
                field: "roles",
                message: format!(
                    "unknown role `{bad}`; roles are {}",
                    policy::ROLES.join(", ")
                ),
            }
            .into());
        }
        // Checked before anything is written (the audit record included).
        let max_ttl = self.state.max_key_ttl;
        let ttl = match ttl {
            Some(ttl) => Some(
                duration(&ttl)
                    .filter(|d| !d.is_zero() && *d <= max_ttl)
                    .ok_or_else(|| AuthError::InvalidArgument {
                        field: "ttl",
                        message: format!(
                            "must be positive and at most {} (auth.max_key_ttl)",
                            humantime::format_duration(max_ttl)
                        ),
                    })?,
            ),
            None => None,
        };
        let idempotency_key = Some(idempotency_key).filter(|k| !k.is_empty());
        // Audited before it happens: no record, no key.
        let key_id = amaos_mesh::new_id();
        self.state
            .audit
            .append_async(Entry {
                principal: &key.key_id,
                tenant: &tenant,
                action: "keys.create",
                object: &key_id,
                allowed: true,
            })
            .await
            .map_err(|e| AuthError::AuditDown(e.to_string()))?;
        let (created, secret) = self
            .state
            .keys
            .create(NewKey {
                key_id,
                name: &name,
                tenant: &tenant,
                roles,
                ttl,
                idempotency_key: idempotency_key.as_deref(),
            })
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(to_proto(&created)),
            secret: secret.unwrap_or_default(),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let key = self.state.caller(&request).await?;
        self.state.check(&key, "keys", "read").await?;
        let pb::ListApiKeysRequest {
            include_revoked,
            tenant,
        } = request.into_inner();
        let tenant = self.state.scope(&key, &tenant, "keys.read").await?;
        let keys = self.state.keys.list(Some(&tenant), include_revoked).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(to_proto).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let key = self.state.caller(&request).await?;
        self.state.check(&key, "keys", "write").await?;
        let pb::RevokeApiKeyRequest {
            key_id,
            idempotency_key: _,
        } = request.into_inner();
        // Platform admins revoke in any tenant; others only in their own.
        let platform = key.tenant == PLATFORM_TENANT && key.roles.iter().any(|r| r == "admin");
        let scope = (!platform).then_some(key.tenant.as_str());
        let target = self
            .state
            .keys
            .list(scope, true)
            .await?
            .into_iter()
            .find(|k| k.key_id == key_id);
        let Some(target) = target else {
            // Not found (or another tenant's: the same answer) is refused.
            self.state.refused(&key, "keys.revoke", &key_id).await;
            return Err(AuthError::KeyNotFound(key_id).into());
        };
        self.state
            .audit
            .append_async(Entry {
                principal: &key.key_id,
                tenant: &target.tenant,
                action: "keys.revoke",
                object: &target.key_id,
                allowed: true,
            })
            .await
            .map_err(|e| AuthError::AuditDown(e.to_string()))?;
        let revoked = self.state.keys.revoke(&key_id, scope).await?;
        self.state.forget_cached();
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(to_proto(&revoked)),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let pb::AuthenticateRequest {
            api_key,
            audience: _,
        } = request.into_inner();
        if api_key.is_empty() {
            return Err(AuthError::MissingCredentials.into());
        }
        let key = self.state.verify(&api_key).await?;
        let claims = amaos_mesh::token::claims_for(
            &key.key_id,
            &key.tenant,
            &key.roles,
            self.state.signer.token_ttl(),
            "",
        );
        let expires_at = ms_timestamp(claims.exp * 1000);
        Ok(Response::new(pb::AuthenticateResponse {
            principal: Some(principal(&key)),
            token: self.state.signer.sign(&claims),
            expires_at: Some(expires_at),
        }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let key = self.state.caller(&request).await?;
        self.state.check(&key, "tokens", "issue").await?;
        let pb::IssueTokenRequest {
            tenant,
            subject,
            roles,
            audience: _,
            ttl,
            task_id,
            attempt,
            team,
            session_id,
        } = request.into_inner();
        if task_id.is_empty() && !(team.is_empty() && session_id.is_empty()) {
            return Err(AuthError::InvalidArgument {
                field: if team.is_empty() {
                    "session_id"
                } else {
                    "team"
                },
                message: "only a token scoped to a task carries a team or session".into(),
            }
            .into());
        }
        for (field, value) in [("team", &team), ("session_id", &session_id)] {
            if value.len() > 128 {
                return Err(AuthError::InvalidArgument {
                    field,
                    message: "must be at most 128 bytes".into(),
                }
                .into());
            }
        }
        if attempt != 0 && task_id.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "attempt",
                message: "an attempt needs a task_id".into(),
            }
            .into());
        }
        if task_id.len() > 128 {
            return Err(AuthError::InvalidArgument {
                field: "task_id",
                message: "must be at most 128 bytes".into(),
            }
            .into());
        }
        // The platform's service key acts for any tenant; anyone else only for its own.
        let platform_service =
            key.tenant == PLATFORM_TENANT && key.roles.iter().any(|r| r == "service");
        let tenant = if platform_service {
            if !caller::valid_tenant(&tenant) {
                return Err(AuthError::InvalidArgument {
                    field: "tenant",
                    message: "must be 1 to 64 of a-z, 0-9, `-` and `_`".into(),
                }
                .into());
            }
            tenant
        } else {
            self.state.scope(&key, &tenant, "tokens.issue").await?
        };
        if subject.is_empty() || subject.len() > 256 {
            return Err(AuthError::InvalidArgument {
                field: "subject",
                message: "must be 1 to 256 bytes".into(),
            }
            .into());
        }
        if let Some(role) = roles
            .iter()
            .find(|r| !DELEGABLE_ROLES.contains(&r.as_str()))
        {
            self.state
                .refused(&key, "tokens.issue", &format!("role:{role}"))
                .await;
            return Err(AuthError::Forbidden(format!(
                "role `{role}` cannot be delegated; only {} can",
                DELEGABLE_ROLES.join(", ")
            ))
            .into());
        }
        let max_ttl = if task_id.is_empty() {
            MAX_TOKEN_TTL
        } else {
            MAX_TASK_TOKEN_TTL
        };
        let ttl = match ttl {
            None => self.state.signer.token_ttl(),
            Some(ttl) => duration(&ttl)
                .filter(|d| !d.is_zero() && *d <= max_ttl)
                .ok_or_else(|| AuthError::InvalidArgument {
                    field: "ttl",
                    message: format!(
                        "must be positive and at most {}",
                        humantime::format_duration(max_ttl)
                    ),
                })?,
        };
        let mut claims = amaos_mesh::token::claims_for(&subject, &tenant, &roles, ttl, &task_id);
        claims.attempt = attempt;
        claims.team = team;
        claims.session = session_id;
        Ok(Response::new(pb::IssueTokenResponse {
            token: self.state.signer.sign(&claims),
            expires_at: Some(ms_timestamp(claims.exp * 1000)),
        }))
    }

    async fn delegate_run_signing(
        &self,
        request: Request<pb::DelegateRunSigningRequest>,
    ) -> Result<Response<pb::DelegateRunSigningResponse>, Status> {
        let key = self.state.caller(&request).await?;
        // Only the platform's service key may issue run tokens for any
        // tenant; a delegation lets its holder do exactly that, no more. Any
        // other caller is refused (and recorded) as `tokens.delegate`.
        let platform_service =
            key.tenant == PLATFORM_TENANT && key.roles.iter().any(|r| r == "service");
        if !platform_service {
            self.state
                .refused(&key, "tokens.delegate", "run-signer")
                .await;
            return Err(AuthError::Forbidden(
                "only the platform's service key may sign run tokens".into(),
            )
            .into());
        }
        self.state.check(&key, "tokens", "issue").await?;
        let public_key = <[u8; 32]>::try_from(request.get_ref().public_key.as_slice())
            .ok()
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| AuthError::InvalidArgument {
                field: "public_key",
                message: "must be an Ed25519 public key (32 bytes)".into(),
            })?;
        let mut claims = amaos_mesh::token::claims_for(
            &key.key_id,
            PLATFORM_TENANT,
            &[amaos_mesh::token::RUN_SIGNER_ROLE.into()],
            self.state.signer.token_ttl(),
            "",
        );
        claims.cnf = amaos_mesh::token::confirmation_key(&public_key);
        // Audited before it is handed out: no record, no delegation.
        self.state
            .audit
            .append_async(Entry {
                principal: &key.key_id,
                tenant: &key.tenant,
                action: "tokens.delegate",
                object: &claims.cnf,
                allowed: true,
            })
            .await
            .map_err(|e| AuthError::AuditDown(e.to_string()))?;
        Ok(Response::new(pb::DelegateRunSigningResponse {
            delegation: self.state.signer.sign(&claims),
            expires_at: Some(ms_timestamp(claims.exp * 1000)),
        }))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(pb::GetSigningKeysResponse {
            keys: self
                .state
                .signer
                .public_keys()
                .into_iter()
                .map(|(kid, key, created_ms)| pb::SigningKey {
                    key_id: kid,
                    algorithm: "EdDSA".into(),
                    public_key: key.to_bytes().to_vec(),
                    created_at: Some(ms_timestamp(created_ms)),
                })
                .collect(),
        }))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let key = self.state.caller(&request).await?;
        let pb::AuthorizeRequest {
            subject,
            tenant,
            object,
            action,
        } = request.into_inner();
        let tenant = self.state.scope(&key, &tenant, "authorize").await?;
        // The subject is a role name or a key id of that tenant.
        let roles = if policy::ROLES.contains(&subject.as_str()) {
            vec![subject.clone()]
        } else {
            self.state
                .keys
                .list(Some(&tenant), false)
                .await?
                .into_iter()
                .find(|k| k.key_id == subject)
                .map(|k| k.roles)
                .unwrap_or_default()
        };
        let decision = self
            .state
            .policy
            .allows(&subject, &roles, &tenant, &object, &action);
        Ok(Response::new(pb::AuthorizeResponse {
            allowed: decision.is_some(),
            reason: decision.unwrap_or_else(|| "no rule allows it".into()),
        }))
    }

    async fn query_audit(
        &self,
        request: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        let key = self.state.caller(&request).await?;
        self.state.check(&key, "audit", "read").await?;
        let pb::QueryAuditRequest {
            after,
            action,
            page_size,
            after_index,
        } = request.into_inner();
        let platform = key.tenant == PLATFORM_TENANT && key.roles.iter().any(|r| r == "admin");
        let tenant = (!platform).then_some(key.tenant.as_str());
        let after_ms = after
            .as_ref()
            .and_then(amaos_proto::time::system_time)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let limit = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let action = Some(action.as_str()).filter(|a| !a.is_empty());
        let records = self
            .state
            .audit
            .query(tenant, action, after_ms, after_index, limit);
        let verification = self.state.trail_check.current().await;
        let verification = if platform {
            verification
        } else {
            trail_check::for_tenant(verification)
        };
        Ok(Response::new(pb::QueryAuditResponse {
            records: records
                .into_iter()
                .map(|r| pb::AuditRecord {
                    index: r.index,
                    at: Some(ms_timestamp(r.at_ms)),
                    principal: r.principal,
                    tenant: r.tenant,
                    action: r.action,
                    object: r.object,
                    decision: r.decision,
                    trace_id: r.trace_id,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                })
                .collect(),
            verification: Some(verification),
        }))
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
                    Ok(true) => tracing::info!("rotated the token signing key"),
                    Ok(false) => {}
                    Err(error) => tracing::error!(%error, "rotating the token signing key failed"),
                }
            }
        })
    };
    let service = grpc_service(state, &config.limits);
    let served = amaos_mesh::server::serve(service, listener, config, metrics, shutdown).await;
    rotation.abort();
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
