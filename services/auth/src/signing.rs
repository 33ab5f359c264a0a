//! The keys that sign tokens: Ed25519, kept in a file only the owner reads,
//! rotated on a schedule. A new key signs from the moment it exists; older
//! keys stay published (GetSigningKeys) until every token they signed has
//! expired, so rotation never invalidates a live token.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use amaos_mesh::token::{self, Claims};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::keys::{now_ms, write_secret_file};

#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    seed_hex: String,
    created_ms: u64,
}

/// The signing keys, newest last.
pub struct Signer {
    path: PathBuf,
    keys: RwLock<Vec<(StoredKey, SigningKey)>>,
    rotation: Duration,
    token_ttl: Duration,
}

fn fresh() -> StoredKey {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    StoredKey {
        kid: amaos_mesh::new_id(),
        seed_hex: hex::encode(seed),
        created_ms: now_ms(),
    }
}

fn load(stored: &StoredKey) -> Option<SigningKey> {
    let seed: [u8; 32] = hex::decode(&stored.seed_hex).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&seed))
}

impl Signer {
    /// Opens the key file, creating a first key (or a rotated one) as due.
    pub fn open(path: &Path, rotation: Duration, token_ttl: Duration) -> Result<Self, AuthError> {
        let stored: Vec<StoredKey> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AuthError::Store(format!("{} is not a signing key file: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(AuthError::Store(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let mut keys = Vec::new();
        for s in stored {
            let key = load(&s).ok_or_else(|| {
                AuthError::Store(format!("{}: key {} is corrupt", path.display(), s.kid))
            })?;
            keys.push((s, key));
        }
        let signer = Self {
            path: path.to_owned(),
            keys: RwLock::new(keys),
            rotation,
            token_ttl,
        };
        signer.rotate_if_due()?;
        Ok(signer)
    }

    /// Adds a key when the newest is older than the rotation period, and drops
    /// keys that can no longer have live tokens.
    pub fn rotate_if_due(&self) -> Result<bool, AuthError> {
        let now = now_ms();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let due = keys.last().is_none_or(|(s, _)| {
            now.saturating_sub(s.created_ms) >= self.rotation.as_millis() as u64
        });
        if !due {
            return Ok(false);
        }
        let mut next = keys.clone();
        let new = fresh();
        let key =
            load(&new).ok_or_else(|| AuthError::Store("generating a signing key failed".into()))?;
        next.push((new, key));
        // A key stops signing when the next one appears; its last token
        // expires one token lifetime later.
        let keep_after = now.saturating_sub((self.rotation + self.token_ttl).as_millis() as u64);
        let newest = next.len() - 1;
        let kept: Vec<_> = next
            .into_iter()
            .enumerate()
            .filter(|(i, (s, _))| *i == newest || s.created_ms >= keep_after)
            .map(|(_, k)| k)
            .collect();
        let file: Vec<&StoredKey> = kept.iter().map(|(s, _)| s).collect();
        let bytes = serde_json::to_string(&file).map_err(|e| AuthError::Store(e.to_string()))?;
        write_secret_file(&self.path, &bytes)
            .map_err(|e| AuthError::Store(format!("cannot write {}: {e}", self.path.display())))?;
        *keys = kept;
        Ok(true)
    }

    /// Signs `claims` with the newest key.
    pub fn sign(&self, claims: &Claims) -> String {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        // `open` always leaves at least one key.
        let (stored, key) = keys.last().expect("a signing key exists");
        token::sign(claims, &stored.kid, key)
    }

    /// The public keys, newest first.
    pub fn public_keys(&self) -> Vec<(String, VerifyingKey, u64)> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .rev()
            .map(|(s, k)| (s.kid.clone(), k.verifying_key(), s.created_ms))
            .collect()
    }

    /// How long tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_rotation_keeps_the_old_key_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.json");
        let signer =
            Signer::open(&path, Duration::from_secs(3600), Duration::from_secs(60)).unwrap();
        let first = signer.public_keys();
        assert_eq!(first.len(), 1);
        let reopened =
            Signer::open(&path, Duration::from_secs(3600), Duration::from_secs(60)).unwrap();
        assert_eq!(reopened.public_keys()[0].0, first[0].0);
        // With a zero rotation period every open rotates, keeping the previous key.
        let rotating = Signer::open(&path, Duration::ZERO, Duration::from_secs(60)).unwrap();
        let keys = rotating.public_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].0, first[0].0);
        let claims = token::claims_for("p", "acme", &[], Duration::from_secs(60), "");
        let token = rotating.sign(&claims);
        let verified = token::verify_with(&token, |kid| {
            keys.iter().find(|(k, _, _)| k == kid).map(|(_, v, _)| *v)
        });
        assert_eq!(verified.unwrap().tenant, "acme");
    }
}
