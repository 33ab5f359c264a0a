//! Authenticating callers (an API key checked through auth and cached, or a
//! token verified locally: [`amaos_mesh::authn`]), authorizing them, and the
//! run tokens the orchestrator obtains for each attempt.

use std::time::{Duration, Instant};

use amaos_mesh::authn::AuthnError;
use amaos_mesh::caller::{self, Caller, RunScope};
use amaos_mesh::client::MeshChannel;
use amaos_mesh::policy::Policy;
use amaos_mesh::token;
use amaos_proto::auth::v1 as pb;
use amaos_proto::auth::v1::auth_service_client::AuthServiceClient;
use ed25519_dalek::SigningKey;
use rand::RngCore;
use tonic::metadata::MetadataMap;

use crate::error::OrchestratorError;

/// The mesh's authenticator, answering in the orchestrator's errors.
pub struct Authenticator(amaos_mesh::authn::Authenticator);

impl Authenticator {
    /// An authenticator asking `auth`, caching for `ttl`.
    pub fn new(auth: AuthServiceClient<MeshChannel>, ttl: Duration) -> Self {
        Self(amaos_mesh::authn::Authenticator::new(auth, ttl))
    }

    /// The verified caller of a request.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, OrchestratorError> {
        self.0.caller(metadata).await.map_err(|e| match e {
            AuthnError::Missing => OrchestratorError::MissingCredentials,
            AuthnError::Invalid(_) => OrchestratorError::InvalidKey,
            AuthnError::Unavailable(status) => OrchestratorError::Dependency {
                service: "auth",
                status,
            },
        })
    }
}

/// Checks that `caller` may do `action` on tasks under `policy`.
pub fn require(policy: &Policy, caller: &Caller, action: &str) -> Result<(), OrchestratorError> {
    match policy.allows(
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

/// Signs a token for each attempt: role `agent`, scoped to the task and the
/// attempt, living until the task's deadline (plus a small margin). Workers,
/// tools and memory see only what that run may do, and a token captured from
/// one run reaches no other task. One signature per attempt, made here with
/// a key of this process that auth delegated (`DelegateRunSigning`, asked
/// again as soon as it no longer covers the token an attempt needs); a token
/// that would outlive even a new delegation is asked of auth (`IssueToken`).
pub struct RunTokens {
    auth: AuthServiceClient<MeshChannel>,
    key_file: std::path::PathBuf,
    key: tokio::sync::Mutex<Option<String>>,
    /// The key run tokens are signed with; never leaves this process.
    signing: SigningKey,
    /// The delegation for `signing`, when it expires, and when it was obtained.
    delegation: std::sync::RwLock<Option<Delegation>>,
    /// Held while asking for a delegation, so concurrent attempts share one;
    /// after a refusal, until when auth is not asked again.
    delegating: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Delegation {
    token: String,
    /// Seconds since the epoch.
    expires: u64,
    obtained: Instant,
}

/// How long a run token outlives its task's deadline (clock skew, the last
/// events of a run that ends at its deadline).
pub const RUN_TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// How long after a refused delegation run tokens are asked of auth without
/// asking for a delegation again.
const DELEGATION_RETRY: Duration = Duration::from_secs(30);
/// A delegation younger than this is not renewed for a run it cannot cover:
/// a new one would expire barely later.
const DELEGATION_FRESH: Duration = Duration::from_secs(10);

impl RunTokens {
    /// Tokens from `auth`, with the service key read from `key_file` when first needed.
    pub fn new(auth: AuthServiceClient<MeshChannel>, key_file: std::path::PathBuf) -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Self {
            auth,
            key_file,
            key: tokio::sync::Mutex::new(None),
            signing: SigningKey::from_bytes(&seed),
            delegation: std::sync::RwLock::new(None),
            delegating: tokio::sync::Mutex::new(None),
        }
    }

    /// A token for `run` (an attempt of a task of `tenant`, the team it runs
    /// and its session), on behalf of `subject`, with the `agent` role, valid
    /// for `left` (the time left before the task's deadline) plus
    /// [`RUN_TOKEN_MARGIN`].
    pub async fn issue(
        &self,
        tenant: &str,
        subject: &str,
        run: &RunScope,
        left: Duration,
    ) -> Result<String, String> {
        let ttl = left.saturating_add(RUN_TOKEN_MARGIN);
        let mut claims = token::claims_for(subject, tenant, &["agent".into()], ttl, &run.task);
        claims.attempt = run.attempt;
        claims.team = run.team.clone();
        claims.session = run.session.clone();
        claims.apv = run.approved.clone();
        match self.delegation(claims.exp).await {
            Ok(Some(delegation)) => Ok(token::sign_delegated(
                &claims,
                &delegation.token,
                &self.signing,
            )),
            Ok(None) => self.issued_by_auth(tenant, subject, run, ttl).await,
            Err(error) => {
                // An auth that cannot delegate (an older version, say) still
                // signs each run token itself.
                tracing::warn!(%error, "run tokens are asked of auth, one call per attempt");
                self.issued_by_auth(tenant, subject, run, ttl).await
            }
        }
    }

    /// A delegation that covers a token expiring at `exp` (seconds since the
    /// epoch): the one in force, else a new one asked of auth. `None`: even a
    /// new delegation would expire first (the run outlives what auth
    /// delegates).
    async fn delegation(&self, exp: u64) -> Result<Option<Delegation>, String> {
        let current = || {
            self.delegation
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        // A delegation asked for a moment ago is as long as auth gives:
        // asking again cannot cover more.
        let covers = |d: &Delegation| exp <= d.expires;
        let fresh = |d: &Delegation| d.obtained.elapsed() < DELEGATION_FRESH;
        match current() {
            Some(d) if covers(&d) => return Ok(Some(d)),
            Some(d) if fresh(&d) => return Ok(None),
            _ => {}
        }
        let mut asking = self.delegating.lock().await;
        match current() {
            Some(d) if covers(&d) => return Ok(Some(d)),
            Some(d) if fresh(&d) => return Ok(None),
            _ => {}
        }
        // After a refusal, auth is not asked again for a while.
        if asking.is_some_and(|until| Instant::now() < until) {
            return Err("auth refused to delegate run signing a moment ago".into());
        }
        let asked = self.ask_delegation().await;
        *asking = asked.is_err().then(|| Instant::now() + DELEGATION_RETRY);
        let delegation = asked?;
        *self.delegation.write().unwrap_or_else(|e| e.into_inner()) = Some(delegation.clone());
        Ok(covers(&delegation).then_some(delegation))
    }

    async fn ask_delegation(&self) -> Result<Delegation, String> {
        let mut request = tonic::Request::new(pb::DelegateRunSigningRequest {
            public_key: self.signing.verifying_key().to_bytes().to_vec(),
        });
        caller::set_bearer(request.metadata_mut(), &self.service_key().await?)
            .map_err(|s| s.message().to_owned())?;
        let answer = self
            .auth
            .clone()
            .delegate_run_signing(request)
            .await
            .map_err(|s| format!("auth refused to delegate run signing: {}", s.message()))?
            .into_inner();
        let expires = answer
            .expires_at
            .and_then(|t| u64::try_from(t.seconds).ok())
            .ok_or("auth answered a delegation without an expiry")?;
        Ok(Delegation {
            token: answer.delegation,
            expires,
            obtained: Instant::now(),
        })
    }

    async fn service_key(&self) -> Result<String, String> {
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
        Ok(key.clone().unwrap_or_default())
    }

    /// A run token signed by auth, for a run that outlives the delegation.
    async fn issued_by_auth(
        &self,
        tenant: &str,
        subject: &str,
        run: &RunScope,
        ttl: Duration,
    ) -> Result<String, String> {
        let mut request = tonic::Request::new(pb::IssueTokenRequest {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            roles: vec!["agent".into()],
            audience: String::new(),
            ttl: Some(amaos_proto::time::proto_duration(ttl)),
            task_id: run.task.clone(),
            attempt: run.attempt,
            team: run.team.clone(),
            session_id: run.session.clone(),
            approved_calls: run.approved.clone(),
        });
        caller::set_bearer(request.metadata_mut(), &self.service_key().await?)
            .map_err(|s| s.message().to_owned())?;
        self.auth
            .clone()
            .issue_token(request)
            .await
            .map(|r| r.into_inner().token)
            .map_err(|s| format!("auth refused a run token: {}", s.message()))
    }
}
