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
}

impl Claims {
    /// The run these claims are scoped to, if any.
    pub fn run_scope(&self) -> Option<crate::caller::RunScope> {
        (!self.task.is_empty()).then(|| crate::caller::RunScope {
            task: self.task.clone(),
            attempt: self.attempt,
            team: self.team.clone(),
            session: self.session.clone(),
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
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(KeySource::Fixed(vec![(
            "k1".into(),
            key(1).verifying_key(),
        )]))
    }

    fn good() -> Claims {
        claims_for(
            "user-1",
            "acme",
            &["agent".into()],
            Duration::from_secs(60),
            "",
        )
    }

    fn forge(header: &str, claims: &Claims, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[tokio::test]
    async fn a_good_token_verifies() {
        let token = sign(&good(), "k1", &key(1));
        let claims = verifier().verify(&token).await.unwrap();
        assert_eq!(claims.tenant, "acme");
        assert_eq!(claims.roles, ["agent"]);
    }

    #[tokio::test]
    async fn unsigned_confused_expired_early_misdirected_and_tampered_tokens_are_refused() {
        let v = verifier();
        let none = forge(r#"{"alg":"none","kid":"k1"}"#, &good(), b"");
        assert_eq!(
            v.verify(&none).await,
            Err(TokenError::Algorithm("none".into()))
        );
        // HS256 "signed" with the public key as the secret: refused by algorithm.
        let confused = forge(r#"{"alg":"HS256","kid":"k1"}"#, &good(), &[0u8; 32]);
        assert_eq!(
            v.verify(&confused).await,
            Err(TokenError::Algorithm("HS256".into()))
        );
        let mut expired = good();
        expired.exp = now_s() - 60;
        assert_eq!(
            v.verify(&sign(&expired, "k1", &key(1))).await,
            Err(TokenError::Expired)
        );
        let mut early = good();
        early.nbf = now_s() + 600;
        assert_eq!(
            v.verify(&sign(&early, "k1", &key(1))).await,
            Err(TokenError::NotYetValid)
        );
        let mut elsewhere = good();
        elsewhere.aud = "someone-else".into();
        assert_eq!(
            v.verify(&sign(&elsewhere, "k1", &key(1))).await,
            Err(TokenError::Audience)
        );
        // Signed by another key but naming k1, or naming a key that does not exist.
        assert_eq!(
            v.verify(&sign(&good(), "k1", &key(2))).await,
            Err(TokenError::Signature)
        );
        assert_eq!(
            v.verify(&sign(&good(), "k9", &key(1))).await,
            Err(TokenError::UnknownKey("k9".into()))
        );
        // A payload changed after signing.
        let token = sign(&good(), "k1", &key(1));
        let parts: Vec<&str> = token.split('.').collect();
        let mut other = good();
        other.tenant = "globex".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()),
            parts[2]
        );
        assert_eq!(v.verify(&tampered).await, Err(TokenError::Signature));
        assert_eq!(v.verify("a.b").await, Err(TokenError::Malformed));
    }

    /// A delegation from auth's key `k1` for `delegate`'s key, living `ttl`.
    fn delegation(delegate: &SigningKey, ttl: u64) -> String {
        let mut claims = claims_for(
            "orchestrator",
            crate::identity::PLATFORM_TENANT,
            &[RUN_SIGNER_ROLE.into()],
            Duration::from_secs(ttl),
            "",
        );
        claims.cnf = confirmation_key(&delegate.verifying_key());
        sign(&claims, "k1", &key(1))
    }

    fn run_claims(ttl: u64) -> Claims {
        let mut claims = claims_for(
            "user-1",
            "acme",
            &["agent".into()],
            Duration::from_secs(ttl),
            "task-1",
        );
        claims.attempt = 1;
        claims
    }

    #[tokio::test]
    async fn a_run_token_signed_with_a_delegated_key_verifies() {
        let v = verifier();
        let delegate = key(7);
        let dlg = delegation(&delegate, 600);
        let token = sign_delegated(&run_claims(60), &dlg, &delegate);
        let claims = v.verify(&token).await.unwrap();
        assert_eq!((claims.task.as_str(), claims.attempt), ("task-1", 1));
        // A second token under the same delegation (cached) verifies too.
        let mut second = run_claims(60);
        second.attempt = 2;
        let claims = v.verify(&sign_delegated(&second, &dlg, &delegate)).await;
        assert_eq!(claims.unwrap().attempt, 2);
    }

    #[tokio::test]
    async fn a_delegated_key_signs_nothing_but_run_tokens_within_its_delegation() {
        let v = verifier();
        let delegate = key(7);
        let dlg = delegation(&delegate, 600);
        let refused = |e: Result<Claims, TokenError>| matches!(e, Err(TokenError::Delegation(_)));
        // An admin token, a token for no task, and one for no attempt.
        let mut admin = run_claims(60);
        admin.roles = vec!["admin".into()];
        assert!(refused(
            v.verify(&sign_delegated(&admin, &dlg, &delegate)).await
        ));
        let mut untasked = run_claims(60);
        untasked.task.clear();
        assert!(refused(
            v.verify(&sign_delegated(&untasked, &dlg, &delegate)).await
        ));
        let mut no_attempt = run_claims(60);
        no_attempt.attempt = 0;
        assert!(refused(
            v.verify(&sign_delegated(&no_attempt, &dlg, &delegate))
                .await
        ));
        // Outliving the delegation.
        assert!(refused(
            v.verify(&sign_delegated(&run_claims(6000), &dlg, &delegate))
                .await
        ));
        // Signed by another key than the delegated one.
        assert_eq!(
            v.verify(&sign_delegated(&run_claims(60), &dlg, &key(8)))
                .await,
            Err(TokenError::Signature)
        );
        // A "delegation" that auth did not sign, or that is not a run signer's.
        let mut forged = claims_for(
            "orchestrator",
            crate::identity::PLATFORM_TENANT,
            &[RUN_SIGNER_ROLE.into()],
            Duration::from_secs(600),
            "",
        );
        forged.cnf = confirmation_key(&delegate.verifying_key());
        let self_signed = sign(&forged, "k1", &key(9));
        assert_eq!(
            v.verify(&sign_delegated(&run_claims(60), &self_signed, &delegate))
                .await,
            Err(TokenError::Signature)
        );
        forged.roles = vec!["agent".into()];
        let not_a_signer = sign(&forged, "k1", &key(1));
        assert!(refused(
            v.verify(&sign_delegated(&run_claims(60), &not_a_signer, &delegate))
                .await
        ));
        // A delegation of a delegation, and a delegation used as a credential.
        let nested = sign_delegated(&run_claims(60), &dlg, &delegate);
        assert!(refused(
            v.verify(&sign_delegated(&run_claims(60), &nested, &delegate))
                .await
        ));
        assert!(refused(v.verify(&dlg).await));
        // An expired delegation.
        let mut old = claims_for(
            "orchestrator",
            crate::identity::PLATFORM_TENANT,
            &[RUN_SIGNER_ROLE.into()],
            Duration::from_secs(600),
            "",
        );
        old.cnf = confirmation_key(&delegate.verifying_key());
        old.exp = now_s() - 60;
        let mut claims = run_claims(1);
        claims.exp = old.exp;
        assert_eq!(
            v.verify(&sign_delegated(
                &claims,
                &sign(&old, "k1", &key(1)),
                &delegate
            ))
            .await,
            Err(TokenError::Expired)
        );
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever arrives in `authorization`, verification answers
            /// without panicking: random text, and three base64url parts of
            /// random JSON-ish bytes.
            #[test]
            fn any_presented_token_is_verified_or_refused(
                text in ".{0,300}",
                header in proptest::collection::vec(any::<u8>(), 0..200),
                payload in proptest::collection::vec(any::<u8>(), 0..400),
                signature in proptest::collection::vec(any::<u8>(), 0..80),
            ) {
                let key = key(1).verifying_key();
                let _ = verify_with(&text, |_| Some(key));
                let parts = format!(
                    "{}.{}.{}",
                    URL_SAFE_NO_PAD.encode(&header),
                    URL_SAFE_NO_PAD.encode(&payload),
                    URL_SAFE_NO_PAD.encode(&signature)
                );
                let _ = verify_with(&parts, |_| Some(key));
                // A well-formed header and a signed payload of any bytes.
                let signed_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","kid":"k1"}"#),
                    URL_SAFE_NO_PAD.encode(&payload)
                );
                let signature = key_signature(&signed_input);
                let _ = verify_with(&format!("{signed_input}.{signature}"), |_| Some(key));
            }
        }

        fn key_signature(input: &str) -> String {
            URL_SAFE_NO_PAD.encode(key(1).sign(input.as_bytes()).to_bytes())
        }

        #[test]
        fn absurd_times_in_a_signed_token_do_not_overflow() {
            let mut claims = good();
            claims.exp = u64::MAX;
            claims.nbf = u64::MAX;
            let token = sign(&claims, "k1", &key(1));
            let verifying = key(1).verifying_key();
            assert_eq!(
                verify_with(&token, |_| Some(verifying)),
                Err(TokenError::NotYetValid)
            );
            let mut claims = good();
            claims.exp = u64::MAX;
            let token = sign(&claims, "k1", &key(1));
            assert!(verify_with(&token, |_| Some(verifying)).is_ok());
        }
    }
}
