//! The API key store: keys per tenant, secrets stored only as argon2id hashes.
//! [`KeyBackend`] is the store's contract; [`KeyStore`] keeps keys in one
//! JSON file written atomically (temp file + rename) for one auth replica,
//! [`crate::redis_keys::RedisKeys`] in Redis for many.
//!
//! A key reads `amaos_<prefix>_<secret>`: the prefix (public, 12 hex digits)
//! finds the stored record, the secret is verified against its hash.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// Most keys the store holds.
pub const MAX_KEYS: usize = 100_000;

/// A stored key (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    /// Its id.
    pub key_id: String,
    /// A name for people.
    pub name: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The public prefix of its secret.
    pub prefix: String,
    /// The argon2id hash of its secret, in PHC form.
    pub hash: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Last successful authentication, ms since the epoch.
    pub last_used_at_ms: Option<u64>,
    /// Revocation time, ms since the epoch.
    pub revoked_at_ms: Option<u64>,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// The idempotency key it was created with.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl StoredKey {
    /// True when the key can authenticate at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

#[derive(Default, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<StoredKey>,
}

/// The key store.
pub struct KeyStore {
    path: PathBuf,
    file: Mutex<KeyFile>,
}

/// A new key to create.
pub struct NewKey<'a> {
    /// Its id.
    pub key_id: String,
    /// A name for people.
    pub name: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The roles.
    pub roles: Vec<String>,
    /// How long it works.
    pub ttl: Option<Duration>,
    /// The idempotency key of the request.
    pub idempotency_key: Option<&'a str>,
}

/// The current time in ms since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// What an API key store does; every backend passes `tests/keys.rs`.
#[tonic::async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// True when no key exists.
    async fn is_empty(&self) -> Result<bool, AuthError>;
    /// Creates a key and returns it with its secret; a repeated idempotency
    /// key (per tenant) returns the first key and no secret.
    async fn create(&self, new: NewKey<'_>) -> Result<(StoredKey, Option<String>), AuthError>;
    /// Keys of `tenant` (all tenants when `None`), oldest first.
    async fn list(
        &self,
        tenant: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<StoredKey>, AuthError>;
    /// Revokes a key of `tenant` (any tenant when `None`); revoking twice
    /// keeps the first time.
    async fn revoke(&self, key_id: &str, tenant: Option<&str>) -> Result<StoredKey, AuthError>;
    /// Verifies a presented key in constant time per attempt (an unknown
    /// prefix still costs one argon2 verification) and records its use.
    async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError>;
}

#[tonic::async_trait]
impl KeyBackend for KeyStore {
    async fn is_empty(&self) -> Result<bool, AuthError> {
        Ok(KeyStore::is_empty(self))
    }
    async fn create(&self, new: NewKey<'_>) -> Result<(StoredKey, Option<String>), AuthError> {
        KeyStore::create(self, new).await
    }
    async fn list(
        &self,
        tenant: Option<&str>,
        include_revoked: bool,
    ) -> Result<Vec<StoredKey>, AuthError> {
        Ok(KeyStore::list(self, tenant, include_revoked))
    }
    async fn revoke(&self, key_id: &str, tenant: Option<&str>) -> Result<StoredKey, AuthError> {
        KeyStore::revoke(self, key_id, tenant)
    }
    async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        KeyStore::verify(self, presented).await
    }
}

/// A new key record and its secret (`amaos_<prefix>_<secret>`).
pub(crate) async fn mint(new: NewKey<'_>) -> Result<(StoredKey, String), AuthError> {
    let prefix = random_hex(6);
    let secret = random_hex(32);
    let salt = SaltString::generate(&mut OsRng);
    let (secret, hash) = hashing::run(move || {
        let hash = Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Store(format!("hashing failed: {e}")));
        (secret, hash)
    })
    .await?;
    let hash = hash?;
    let now = now_ms();
    let key = StoredKey {
        key_id: new.key_id,
        name: new.name.to_owned(),
        tenant: new.tenant.to_owned(),
        roles: new.roles,
        prefix: prefix.clone(),
        hash,
        created_at_ms: now,
        last_used_at_ms: None,
        revoked_at_ms: None,
        expires_at_ms: new
            .ttl
            .map(|ttl| now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))),
        idempotency_key: new.idempotency_key.map(str::to_owned),
    };
    Ok((key, format!("amaos_{prefix}_{secret}")))
}

/// Splits `amaos_<prefix>_<secret>`.
pub(crate) fn split_key(key: &str) -> Option<(&str, &str)> {
    let (prefix, secret) = key.strip_prefix("amaos_")?.split_once('_')?;
    (prefix.len() == 12 && !secret.is_empty()).then_some((prefix, secret))
}

/// A hash verified when the prefix is unknown, so a miss costs what a hit costs.
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"decoy", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Checks `secret` against the PHC `hash` (through the hashing gate).
pub(crate) async fn verify_secret(secret: &str, hash: &str) -> bool {
    let (secret, hash) = (secret.to_owned(), hash.to_owned());
    hashing::run(move || hash_matches(&secret, &hash))
        .await
        .unwrap_or(false)
}

/// Spends what checking `secret` against a stored hash would, for a key
/// that does not exist.
pub(crate) async fn verify_decoy(secret: &str) {
    let secret = secret.to_owned();
    let _ = hashing::run(move || hash_matches(&secret, decoy_hash())).await;
}

fn hash_matches(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Where argon2 runs: on the blocking pool, never on a runtime thread (a
/// hash takes tens of milliseconds, and a caller sending wrong keys would
/// otherwise stall every request sharing the thread), and at most
/// [`hashing::limit`] at once, so the memory hashing takes (19 MiB per hash
/// with argon2's default parameters) is bounded however many keys arrive.
pub(crate) mod hashing {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use crate::error::AuthError;

    static GATE: OnceLock<Semaphore> = OnceLock::new();
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Hashes run at once: one per core, at most four.
    pub(crate) fn limit() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    }

    /// The most hashes seen running at once in this process.
    #[cfg(test)]
    pub(crate) fn peak() -> usize {
        PEAK.load(Ordering::Relaxed)
    }

    /// Runs `work` (one hash) once a place is free.
    pub(crate) async fn run<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let gate = GATE.get_or_init(|| Semaphore::new(limit()));
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| AuthError::Store("the hashing gate is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let now = RUNNING.fetch_add(1, Ordering::AcqRel) + 1;
            PEAK.fetch_max(now, Ordering::AcqRel);
            let out = work();
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            out
        })
        .await
        .map_err(|_| AuthError::Store("a key hash stopped".into()))
    }
}

impl KeyStore {
    /// Opens the store at `path`, creating an empty one if absent.
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        let file = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AuthError::Store(format!("{} is not a key store: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile {
                version: 1,
                keys: Vec::new(),
            },
            Err(e) => {
                return Err(AuthError::Store(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyFile> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, file: &KeyFile) -> Result<(), AuthError> {
        let store = |e: std::io::Error| {
            AuthError::Store(format!("cannot write {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(store)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| AuthError::Store(e.to_string()))?;
        write_private(&tmp, &bytes).map_err(store)?;
        std::fs::rename(&tmp, &self.path).map_err(store)
    }

    /// True when no key exists.
    pub fn is_empty(&self) -> bool {
        self.lock().keys.is_empty()
    }

    /// Creates a key and returns it with its secret; a repeated idempotency key
    /// returns the first key and no secret.
    pub async fn create(&self, new: NewKey<'_>) -> Result<(StoredKey, Option<String>), AuthError> {
        if let Some(idem) = new.idempotency_key {
            let file = self.lock();
            if let Some(existing) = file
                .keys
                .iter()
                .find(|k| k.tenant == new.tenant && k.idempotency_key.as_deref() == Some(idem))
            {
                return Ok((existing.clone(), None));
            }
        }
        let (key, secret) = mint(new).await?;
        let mut file = self.lock();
        if file.keys.len() >= MAX_KEYS {
            return Err(AuthError::Store(format!(
                "the store holds its maximum of {MAX_KEYS} keys"
            )));
        }
        file.keys.push(key.clone());
        if let Err(error) = self.save(&file) {
            file.keys.pop();
            return Err(error);
        }
        Ok((key, Some(secret)))
    }

    /// Keys of `tenant` (all tenants when `None`), oldest first.
    pub fn list(&self, tenant: Option<&str>, include_revoked: bool) -> Vec<StoredKey> {
        self.lock()
            .keys
            .iter()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .filter(|k| include_revoked || k.revoked_at_ms.is_none())
            .cloned()
            .collect()
    }

    /// Revokes a key of `tenant` (any tenant when `None`).
    pub fn revoke(&self, key_id: &str, tenant: Option<&str>) -> Result<StoredKey, AuthError> {
        let mut file = self.lock();
        let index = file
            .keys
            .iter()
            .position(|k| k.key_id == key_id && tenant.is_none_or(|t| k.tenant == t))
            .ok_or_else(|| AuthError::KeyNotFound(key_id.to_owned()))?;
        if file.keys[index].revoked_at_ms.is_none() {
            file.keys[index].revoked_at_ms = Some(now_ms());
            let snapshot = KeyFile {
                version: file.version,
                keys: file.keys.clone(),
            };
            if let Err(error) = self.save(&snapshot) {
                file.keys[index].revoked_at_ms = None;
                return Err(error);
            }
        }
        Ok(file.keys[index].clone())
    }

    /// Verifies a presented key; the hash check runs outside the lock.
    pub async fn verify(&self, presented: &str) -> Result<StoredKey, AuthError> {
        let Some((prefix, secret)) = split_key(presented) else {
            verify_decoy("").await;
            return Err(AuthError::InvalidKey);
        };
        let found = self
            .lock()
            .keys
            .iter()
            .find(|k| k.prefix == prefix)
            .cloned();
        let Some(key) = found else {
            verify_decoy(secret).await;
            return Err(AuthError::InvalidKey);
        };
        if !verify_secret(secret, &key.hash).await {
            return Err(AuthError::InvalidKey);
        }
        let now = now_ms();
        let mut file = self.lock();
        // Re-read: the key may have been revoked while its hash was checked.
        let stored = file
            .keys
            .iter_mut()
            .find(|k| k.key_id == key.key_id)
            .ok_or(AuthError::InvalidKey)?;
        if !stored.usable(now) {
            return Err(AuthError::InvalidKey);
        }
        // Kept in memory; written with the next change to the store.
        stored.last_used_at_ms = Some(now);
        Ok(stored.clone())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Writes a secret to a file only its owner can read.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, format!("{secret}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys.json")).unwrap();
        (dir, store)
    }

    fn new_key<'a>(tenant: &'a str, idem: Option<&'a str>) -> NewKey<'a> {
        NewKey {
            key_id: amaos_mesh::new_id(),
            name: "ci",
            tenant,
            roles: vec!["developer".into()],
            ttl: None,
            idempotency_key: idem,
        }
    }

    #[tokio::test]
    async fn a_created_key_verifies_and_is_stored_hashed() {
        let (dir, store) = store();
        let (key, secret) = store.create(new_key("acme", None)).await.unwrap();
        let secret = secret.unwrap();
        assert_eq!(store.verify(&secret).await.unwrap().key_id, key.key_id);
        let on_disk = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!on_disk.contains(secret.rsplit('_').next().unwrap()));
        assert!(on_disk.contains("$argon2id$"));
        // Reopened from disk, it still verifies.
        let reopened = KeyStore::open(&dir.path().join("keys.json")).unwrap();
        assert!(reopened.verify(&secret).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_malformed_and_revoked_keys_fail() {
        let (_dir, store) = store();
        let (key, secret) = store.create(new_key("acme", None)).await.unwrap();
        let secret = secret.unwrap();
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push('x');
        assert!(matches!(
            store.verify(&wrong).await,
            Err(AuthError::InvalidKey)
        ));
        assert!(matches!(
            store.verify("nonsense").await,
            Err(AuthError::InvalidKey)
        ));
        assert!(matches!(
            store.revoke(&key.key_id, Some("other")),
            Err(AuthError::KeyNotFound(_))
        ));
        store.revoke(&key.key_id, Some("acme")).unwrap();
        assert!(matches!(
            store.verify(&secret).await,
            Err(AuthError::InvalidKey)
        ));
    }

    #[tokio::test]
    async fn the_same_idempotency_key_returns_the_same_key_once() {
        let (_dir, store) = store();
        let (first, secret) = store.create(new_key("acme", Some("k1"))).await.unwrap();
        assert!(secret.is_some());
        let (again, secret) = store.create(new_key("acme", Some("k1"))).await.unwrap();
        assert_eq!(first.key_id, again.key_id);
        assert!(secret.is_none());
        assert_eq!(store.list(Some("acme"), false).len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_key_is_hashed_off_the_runtime_thread() {
        let (_dir, store) = store();
        let (_, secret) = store.create(new_key("acme", None)).await.unwrap();
        let mut wrong = secret.unwrap();
        wrong.pop();
        wrong.push('x');
        // Hashing on the async thread would finish the whole check in the
        // first poll, stalling every other request on the thread meanwhile.
        let mut check = Box::pin(KeyBackend::verify(&store, &wrong));
        assert!(
            futures::FutureExt::now_or_never(&mut check).is_none(),
            "the argon2 check ran on the runtime thread"
        );
        assert!(matches!(check.await, Err(AuthError::InvalidKey)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hashes_run_a_bounded_number_at_once() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let checks: Vec<_> = (0..24)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let wrong = format!("amaos_{:012x}_{}", i, "0".repeat(64));
                    store.verify(&wrong).await
                })
            })
            .collect();
        for check in checks {
            assert!(matches!(check.await.unwrap(), Err(AuthError::InvalidKey)));
        }
        assert!(hashing::peak() >= 1);
        assert!(
            hashing::peak() <= hashing::limit(),
            "{} hashes ran at once, more than the limit of {}",
            hashing::peak(),
            hashing::limit()
        );
    }
}
