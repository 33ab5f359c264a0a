//! Signed tokens: JWTs signed with EdDSA (Ed25519) by the auth service and
//! verified locally by every service.
//!
//! A token's header must say `alg: EdDSA` and name a `kid`; anything else
//! (`none`, HMAC, RSA) is refused before any key is used, so neither an
//! unsigned token nor algorithm confusion gets through. The verifying keys
//! come from auth (`GetSigningKeys`), are cached, and are fetched again when a
//! token names an unknown key id (at most once a second). Expiry, not-before,
//! issuer and audience are checked with a small leeway for clock skew.
//!
//! Run tokens may also be signed by the orchestrator with a key auth
//! delegated to it: such a token's header carries the delegation (`dlg`), a
//! token auth signed with the `run-signer` role that names the delegated
//! public key (`cnf`). A delegated key signs nothing but run tokens — one
//! task, one attempt, the `agent` role — that expire with the delegation, so
//! a stolen delegated key is worth no more than what the orchestrator could
//! already ask auth for.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::caller::{self, Caller};
use crate::client::MeshChannel;

/// The issuer every token names.
pub const ISSUER: &str = "amaos-auth";
/// The audience of tokens for every AMAOS service.
pub const AUDIENCE: &str = "amaos";
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: u64 = 5;
/// Longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Verified tokens remembered.
const MAX_VERIFIED: usize = 10_000;
/// The role of a delegation: a token that lets its `cnf` key sign run tokens.
pub const RUN_SIGNER_ROLE: &str = "run-signer";
/// The only role a run token signed with a delegated key may carry.
const RUN_ROLE: &str = "agent";

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the principal.
    pub sub: String,
    /// The tenant.
    pub tenant: String,
    /// The roles.
    pub roles: Vec<String>,
    /// Audience.
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires at.
    pub exp: u64,
    /// The task it is scoped to, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task: String,
    /// The attempt of `task` it is scoped to (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The team a run token's attempt runs (its memory scope).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// The session a run token's task belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// A delegation's confirmation key: the base64url Ed25519 public key it
    /// lets sign run tokens (RFC 7800's `cnf`, as a bare key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cnf: String,
    /// The gated tool calls a run token's attempt may make, approved by a
    /// person: `<arguments sha256 hex>:<call id>` each
    /// ([`crate::approval::grant`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apv: Vec<String>,
}

impl Claims {
    /// The run these claims are scoped to, if any.
    pub fn run_scope(&self) -> Option<crate::caller::RunScope> {
        (!self.task.is_empty()).then(|| crate::caller::RunScope {
            task: self.task.clone(),
            attempt: self.attempt,
            team: self.team.clone(),
            session: self.session.clone(),
            approved: self.apv.clone(),
        })
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    typ: String,
    /// The delegation the signing key comes from (a token auth signed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    dlg: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token")]
    Malformed,
    /// The algorithm is not EdDSA.
    #[error("token algorithm `{0}` is not accepted")]
    Algorithm(String),
    /// No key has this id.
    #[error("unknown signing key `{0}`")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad token signature")]
    Signature,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Not valid yet.
    #[error("token not valid yet")]
    NotYetValid,
    /// Wrong issuer or audience.
    #[error("token not meant for this service")]
    Audience,
    /// The keys could not be fetched.
    #[error("signing keys unavailable: {0}")]
    Keys(String),
    /// Signed with a delegated key beyond what a delegation allows.
    #[error("delegated token refused: {0}")]
    Delegation(&'static str),
}

impl From<TokenError> for tonic::Status {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Keys(_) => tonic::Status::unavailable(error.to_string()),
            _ => tonic::Status::unauthenticated(error.to_string()),
        }
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Signs `claims` with `key`, naming it `kid`.
pub fn sign(claims: &Claims, kid: &str, key: &SigningKey) -> String {
    sign_with_header(
        &Header {
            alg: "EdDSA".into(),
            kid: kid.into(),
            typ: "JWT".into(),
            dlg: String::new(),
        },
        claims,
        key,
    )
}

/// Signs a run token's `claims` with a key auth delegated: `delegation` is
/// the token auth signed naming that key.
pub fn sign_delegated(claims: &Claims, delegation: &str, key: &SigningKey) -> String {
    sign_with_header(
        &Header {
            alg: "EdDSA".into(),
            kid: "delegated".into(),
            typ: "JWT".into(),
            dlg: delegation.into(),
        },
        claims,
        key,
    )
}

fn sign_with_header(header: &Header, claims: &Claims, key: &SigningKey) -> String {
    // Serializing these plain structs cannot fail.
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap_or_default());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// The base64url form of a delegated public key, as `cnf` carries it.
pub fn confirmation_key(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Claims for `caller`, valid from now for `ttl`.
pub fn claims_for(
    subject: &str,
    tenant: &str,
    roles: &[String],
    ttl: Duration,
    task: &str,
) -> Claims {
    let now = now_s();
    Claims {
        iss: ISSUER.into(),
        sub: subject.into(),
        tenant: tenant.into(),
        roles: roles.to_vec(),
        aud: AUDIENCE.into(),
        iat: now,
        nbf: now,
        exp: now.saturating_add(ttl.as_secs().max(1)),
        task: task.into(),
        attempt: 0,
        team: String::new(),
        session: String::new(),
        cnf: String::new(),
        apv: Vec::new(),
    }
}

/// A token split into its parts, nothing checked yet but its shape.
struct Parsed<'a> {
    header: Header,
    payload: &'a str,
    signed: &'a str,
    signature: Signature,
}

fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Algorithm(header.alg));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or(TokenError::Malformed)?;
    let signed = &token[..token.len() - token.rsplit('.').next().map(str::len).unwrap_or(0) - 1];
    Ok(Parsed {
        header,
        payload,
        signed,
        signature,
    })
}

impl Parsed<'_> {
    /// The claims, once the signature verified with `key`.
    fn claims(&self, key: &VerifyingKey) -> Result<Claims, TokenError> {
        key.verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(self.payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed)?;
        let now = now_s();
        if claims.exp.saturating_add(LEEWAY) <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now.saturating_add(LEEWAY) {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != ISSUER || claims.aud != AUDIENCE {
            return Err(TokenError::Audience);
        }
        if !caller::valid_tenant(&claims.tenant) {
            return Err(TokenError::Malformed);
        }
        Ok(claims)
    }

    /// The claims of a token auth signed (no delegation).
    fn direct(&self, key_for: impl Fn(&str) -> Option<VerifyingKey>) -> Result<Claims, TokenError> {
        if !self.header.dlg.is_empty() {
            return Err(TokenError::Delegation(
                "a delegation cannot itself be delegated",
            ));
        }
        let key = key_for(&self.header.kid)
            .ok_or_else(|| TokenError::UnknownKey(self.header.kid.clone()))?;
        self.claims(&key)
    }

    /// The claims of a run token signed with the key `delegation` (already
    /// verified) names, held to what a delegated key may sign.
    fn delegated(&self, delegation: &Claims) -> Result<Claims, TokenError> {
        if delegation.roles != [RUN_SIGNER_ROLE]
            || delegation.tenant != crate::identity::PLATFORM_TENANT
            || !delegation.task.is_empty()
        {
            return Err(TokenError::Delegation(
                "the delegation is not a run signer's",
            ));
        }
        let key = URL_SAFE_NO_PAD
            .decode(&delegation.cnf)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or(TokenError::Delegation("the delegation names no valid key"))?;
        let claims = self.claims(&key)?;
        if claims.task.is_empty() || claims.attempt == 0 || claims.roles != [RUN_ROLE] {
            return Err(TokenError::Delegation(
                "a delegated key signs only run tokens (one task and attempt, role agent)",
            ));
        }
        if claims.exp > delegation.exp {
            return Err(TokenError::Delegation("the token outlives its delegation"));
        }
        Ok(claims)
    }
}

/// Checks a token against `key_for(kid)`, without fetching keys: a token
/// auth signed, or a run token signed with a key auth delegated.
pub fn verify_with(
    token: &str,
    key_for: impl Fn(&str) -> Option<VerifyingKey>,
) -> Result<Claims, TokenError> {
    let parsed = parse(token)?;
    if parsed.header.dlg.is_empty() {
        return parsed.direct(key_for);
    }
    let delegation = parse(&parsed.header.dlg)?.direct(key_for)?;
    parsed.delegated(&delegation)
}

/// Where verifying keys come from.
pub enum KeySource {
    /// Fetched from the auth service.
    Auth(amaos_proto::auth::v1::auth_service_client::AuthServiceClient<MeshChannel>),
    /// Given (tests, or a service that signs itself).
    Fixed(Vec<(String, VerifyingKey)>),
}

/// Verifies tokens locally, with keys cached from the source.
pub struct TokenVerifier {
    keys: RwLock<HashMap<String, VerifyingKey>>,
    /// Tokens already verified (a run's token is presented on every call it
    /// makes); entries are checked for expiry on every hit.
    verified: Mutex<HashMap<String, Claims>>,
    source: tokio::sync::Mutex<KeySource>,
    last_fetch: Mutex<Option<Instant>>,
}

impl TokenVerifier {
    /// A verifier over `source`.
    pub fn new(source: KeySource) -> Self {
        let keys = match &source {
            KeySource::Fixed(keys) => keys.iter().cloned().collect(),
            KeySource::Auth(_) => HashMap::new(),
        };
        Self {
            keys: RwLock::new(keys),
            verified: Mutex::new(HashMap::new()),
            source: tokio::sync::Mutex::new(source),
            last_fetch: Mutex::new(None),
        }
    }

    /// A verifier fetching keys from the auth service at `url`.
    pub fn from_auth(
        dialer: &crate::client::Dialer,
        url: &str,
    ) -> Result<Self, crate::client::ChannelError> {
        let channel = dialer.channel("auth", url)?;
        Ok(Self::new(KeySource::Auth(
            amaos_proto::auth::v1::auth_service_client::AuthServiceClient::new(channel),
        )))
    }

    fn lookup(&self, kid: &str) -> Option<VerifyingKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .copied()
    }

    /// Fetches the keys again because a token names `kid`, unknown here.
    /// Refreshes are serialised: a caller that waited for another's fetch
    /// finds the key without fetching, and a kid still unknown right after a
    /// fetch (a forged token, say) does not fetch again for a second.
    async fn refresh(&self, kid: &str) -> Result<(), TokenError> {
        let mut source = self.source.lock().await;
        if self.lookup(kid).is_some() {
            return Ok(());
        }
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let KeySource::Auth(auth) = &mut *source else {
            return Ok(());
        };
        let keys = auth
            .get_signing_keys(amaos_proto::auth::v1::GetSigningKeysRequest {})
            .await
            .map_err(|s| TokenError::Keys(s.message().to_owned()))?
            .into_inner()
            .keys;
        let mut map = HashMap::new();
        for key in keys {
            let bytes: [u8; 32] = key
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| TokenError::Keys("a key is not 32 bytes".into()))?;
            let verifying = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| TokenError::Keys("a key is not an Ed25519 point".into()))?;
            map.insert(key.key_id, verifying);
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    /// Verifies a token, fetching keys when it names one not yet known. A
    /// delegation is not a credential: presented as one, it is refused.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.verify_any(token).await?;
        if claims.roles.iter().any(|r| r == RUN_SIGNER_ROLE) {
            return Err(TokenError::Delegation("a delegation is not a credential"));
        }
        Ok(claims)
    }

    async fn verify_any(&self, token: &str) -> Result<Claims, TokenError> {
        if let Some(claims) = self.cached(token) {
            return Ok(claims);
        }
        let claims = match self.verify_known(token) {
            Err(TokenError::UnknownKey(kid)) => {
                self.refresh(&kid).await?;
                self.verify_known(token)
            }
            other => other,
        }?;
        self.remember(token, &claims);
        Ok(claims)
    }

    /// Verifies `token` with the keys known now; a delegation already
    /// verified is not verified again.
    fn verify_known(&self, token: &str) -> Result<Claims, TokenError> {
        let parsed = parse(token)?;
        if parsed.header.dlg.is_empty() {
            return parsed.direct(|kid| self.lookup(kid));
        }
        let dlg = parsed.header.dlg.as_str();
        let delegation = match self.cached(dlg) {
            Some(claims) => claims,
            None => {
                let claims = parse(dlg)?.direct(|kid| self.lookup(kid))?;
                self.remember(dlg, &claims);
                claims
            }
        };
        parsed.delegated(&delegation)
    }

    /// The claims of `token`, verified before and not expired since.
    fn cached(&self, token: &str) -> Option<Claims> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .filter(|c| c.exp.saturating_add(LEEWAY) > now_s())
            .cloned()
    }

    fn remember(&self, token: &str, claims: &Claims) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(token.to_owned(), claims.clone());
    }

    /// The caller of a request: the verified token in `authorization: Bearer`.
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, tonic::Status> {
        let token = caller::bearer(metadata).ok_or_else(|| {
            tonic::Status::unauthenticated(
                "missing credentials: send `authorization: Bearer <token>`",
            )
        })?;
        let claims = self.verify(token).await?;
        Ok(Caller {
            task: claims.run_scope(),
            tenant: claims.tenant,
            principal: claims.sub,
            roles: claims.roles,
            token: Some(token.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests;
