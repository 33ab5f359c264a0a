//! The gRPC face of [`AuthState`]: keys, authentication, tokens, run-signing
//! delegations, signing keys, authorization decisions and the audit query.

use super::*;
use crate::metrics::TokenKind;

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
            self.state.metrics.authenticated("missing");
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
        self.state.metrics.issued(TokenKind::Access);
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
            approved_calls,
        } = request.into_inner();
        if approved_calls.len() > 64 || approved_calls.iter().any(|g| g.len() > 512) {
            return Err(AuthError::InvalidArgument {
                field: "approved_calls",
                message: "at most 64, each at most 512 bytes".into(),
            }
            .into());
        }
        if task_id.is_empty() && !approved_calls.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "approved_calls",
                message: "only a token scoped to a task carries approved calls".into(),
            }
            .into());
        }
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
            if !approved_calls.is_empty() {
                self.state
                    .refused(&key, "tokens.issue", "approved_calls")
                    .await;
                return Err(AuthError::Forbidden(
                    "only the platform's service key grants approved calls".into(),
                )
                .into());
            }
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
        claims.apv = approved_calls;
        self.state.metrics.issued(if claims.task.is_empty() {
            TokenKind::Service
        } else {
            TokenKind::Run
        });
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
        self.state.metrics.issued(TokenKind::Delegation);
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
