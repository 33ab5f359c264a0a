//! Where the trail key comes from: the secret `audit/hmac-key` in the
//! configured secret store (Vault KV, or the embedded store: `secrets.json`
//! or `AMAOS_SECRET__AUDIT__HMAC_KEY`); with the embedded store, when no such
//! secret exists, the key file `<data_dir>/audit-hmac.key` (created, mode
//! 0600, with 32 random bytes in hex, when absent — the first writer of
//! several sharing a data directory wins). Vault has no such fallback: the
//! secret must be written there first.

use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use super::TrailSettings;
use super::chain::TrailKey;
use crate::secrets::{SecretError, SecretsBackend};

/// The secret holding the trail key (at least 32 bytes).
pub const KEY_SECRET: &str = "audit/hmac-key";
/// The key file of the embedded default, in the data directory.
pub const KEY_FILE: &str = "audit-hmac.key";

/// The trail key and where it came from.
pub struct FoundKey {
    /// The key.
    pub key: TrailKey,
    /// Where it came from, for messages.
    pub source: String,
    /// The directory of the key file, when the key came from one (the
    /// embedded checkpoint lives beside it).
    pub dir: Option<PathBuf>,
}

fn from_file(path: &Path) -> Result<Option<TrailKey>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => TrailKey::new(text.trim().as_bytes())
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes a fresh key to `path` unless a file is already there (a hard
/// link never replaces, so writers starting together agree on one key).
fn create_once(path: &Path) -> Result<(), String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for the audit key".to_owned())?;
    let tmp = path.with_extension(format!("new-{}", crate::new_id()));
    super::anchor::write_private(&tmp, format!("{}\n", hex::encode(bytes)).as_bytes())?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The trail key `settings` name. `create`: make the embedded key file when
/// there is none (writers do; verification does not). `also_in`: more
/// directories to look for a key file in, after the data directory (for
/// verifying a trail given by path). `Ok(None)`: there is no key.
pub async fn find(
    settings: &TrailSettings,
    create: bool,
    also_in: &[PathBuf],
) -> Result<Option<FoundKey>, String> {
    let store = crate::secrets::open(&settings.secrets, &settings.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    match store.get(KEY_SECRET).await {
        Ok(secret) => {
            let source = format!("secret `{KEY_SECRET}` ({})", store.name());
            let key =
                TrailKey::new(secret.expose().as_bytes()).map_err(|e| format!("{source}: {e}"))?;
            return Ok(Some(FoundKey {
                key,
                source,
                dir: None,
            }));
        }
        Err(SecretError::NotFound(_)) if settings.secrets.backend == SecretsBackend::Vault => {
            return Err(format!(
                "the audit key is not in Vault: write a random value of at least 32 bytes as `value` at `{KEY_SECRET}`"
            ));
        }
        Err(SecretError::NotFound(_)) => {}
        Err(e) => return Err(format!("the audit key: {e}")),
    }
    let dirs = std::iter::once(&settings.data_dir).chain(also_in);
    for dir in dirs {
        let path = dir.join(KEY_FILE);
        if let Some(key) = from_file(&path)? {
            return Ok(Some(FoundKey {
                key,
                source: format!("key file {} (embedded)", path.display()),
                dir: Some(dir.clone()),
            }));
        }
    }
    if !create {
        return Ok(None);
    }
    let path = settings.data_dir.join(KEY_FILE);
    create_once(&path)?;
    let key = from_file(&path)?.ok_or_else(|| format!("{}: vanished", path.display()))?;
    tracing::info!(path = %path.display(), "created the audit trail key");
    Ok(Some(FoundKey {
        key,
        source: format!("key file {} (embedded)", path.display()),
        dir: Some(settings.data_dir.clone()),
    }))
}
