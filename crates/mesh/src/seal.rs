//! Encryption at rest: envelope encryption with AES-256-GCM (ring). Each
//! sealed value gets a fresh data key that encrypts it; the data key is
//! wrapped by a master key from a local key file. A key context (the tenant
//! for memories; the task for the task store) is bound into both
//! encryptions as associated data, so a sealed value copied to another
//! tenant or task does not open.
//!
//! The key file holds every master key version; new values are sealed with
//! the current one and old values still open with theirs, so rotating (adding
//! a version and making it current) loses nothing. Values stored before
//! encryption was enabled are read as they are.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The prefix of a sealed text: `sealed:1:<key id>:<wrapped key>:<text>`.
const PREFIX: &str = "sealed:1:";

/// Why sealing or opening failed (never carries a key or a text).
#[derive(Debug, thiserror::Error)]
#[error("encryption at rest: {0}")]
pub struct SealError(String);

/// The key file's contents.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// The version new texts are sealed with.
    current: u32,
    /// Versions kept in clear (no transit key configured), hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    keys: BTreeMap<u32, String>,
    /// Versions wrapped by Vault transit (`vault:v<n>:…`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    wrapped: BTreeMap<u32, String>,
    /// The transit key that wrapped them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transit_key: Option<String>,
}

impl KeyFile {
    /// The version a new master key gets.
    fn next_version(&self) -> u32 {
        self.keys
            .keys()
            .chain(self.wrapped.keys())
            .max()
            .copied()
            .unwrap_or(0)
            + 1
    }
}

/// Seals and opens values at rest.
pub struct Sealer {
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
    rng: SystemRandom,
}

fn key_of(bytes: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| SealError("a key is not 32 bytes".into()))
}

fn fresh_key() -> Result<[u8; 32], SealError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError("no randomness".into()))?;
    Ok(key)
}

fn io(path: &Path, e: impl std::fmt::Display) -> SealError {
    SealError(format!("{}: {e}", path.display()))
}

/// Writes `file` at `path` unless a file is already there. Replicas sharing
/// a data directory may start together: the first file to land wins (a hard
/// link never replaces), and every replica reads that one.
fn create_once(path: &Path, file: &KeyFile) -> Result<(), SealError> {
    let tmp = path.with_extension(format!("new-{}", crate::new_id()));
    write_private(&tmp, file)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path, e)),
    }
}

fn read_file(path: &Path) -> Result<KeyFile, SealError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    serde_json::from_str(&text).map_err(|e| io(path, format!("not a key file ({e})")))
}

fn clear_keys(path: &Path, file: &KeyFile) -> Result<BTreeMap<u32, Vec<u8>>, SealError> {
    file.keys
        .iter()
        .map(|(id, hexed)| {
            hex::decode(hexed)
                .map(|bytes| (*id, bytes))
                .map_err(|_| io(path, format!("key {id} is not hex")))
        })
        .collect()
}

fn wrapped_without_vault(path: &Path, file: &KeyFile) -> SealError {
    io(
        path,
        format!(
            "its keys are wrapped by Vault transit key `{}`: set secrets.transit_key",
            file.transit_key.as_deref().unwrap_or("?")
        ),
    )
}

impl Sealer {
    fn from_keys(
        path: &Path,
        current: u32,
        raw: BTreeMap<u32, Vec<u8>>,
    ) -> Result<Self, SealError> {
        let mut keys = BTreeMap::new();
        for (id, bytes) in raw {
            keys.insert(id, key_of(&bytes)?);
        }
        if !keys.contains_key(&current) {
            return Err(io(
                path,
                format!("the current key {current} is not in the file"),
            ));
        }
        Ok(Self {
            keys,
            current,
            rng: SystemRandom::new(),
        })
    }

    /// The master keys in `path`, created (mode 0600) with one fresh key
    /// when the file does not exist.
    pub fn open_or_create(path: &Path) -> Result<Self, SealError> {
        if !path.exists() {
            let file = KeyFile {
                current: 1,
                keys: BTreeMap::from([(1, hex::encode(fresh_key()?))]),
                wrapped: BTreeMap::new(),
                transit_key: None,
            };
            create_once(path, &file)?;
        }
        let file = read_file(path)?;
        if !file.wrapped.is_empty() {
            return Err(wrapped_without_vault(path, &file));
        }
        Self::from_keys(path, file.current, clear_keys(path, &file)?)
    }

    /// The master keys in `path`, wrapped by Vault transit: the file holds
    /// only ciphertexts, unwrapped by Vault at start. A file with keys in
    /// clear (written before transit was configured) is rewritten wrapped;
    /// a missing file is created with one fresh key.
    pub async fn open_or_create_wrapped(
        path: &Path,
        vault: &crate::secrets::VaultSecrets,
    ) -> Result<Self, SealError> {
        let vault_error = |e: crate::secrets::SecretError| io(path, e);
        if !path.exists() {
            let wrapped = vault
                .transit_encrypt(&fresh_key()?)
                .await
                .map_err(vault_error)?;
            let file = KeyFile {
                current: 1,
                keys: BTreeMap::new(),
                wrapped: BTreeMap::from([(1, wrapped)]),
                transit_key: Some(vault.transit_key().to_owned()),
            };
            create_once(path, &file)?;
        }
        let mut file = read_file(path)?;
        let mut raw = clear_keys(path, &file)?;
        if !raw.is_empty() {
            for (id, key) in &raw {
                let wrapped = vault.transit_encrypt(key).await.map_err(vault_error)?;
                file.wrapped.insert(*id, wrapped);
            }
            file.keys.clear();
            file.transit_key = Some(vault.transit_key().to_owned());
            write_private(path, &file)?;
        }
        for (id, wrapped) in &file.wrapped {
            if !raw.contains_key(id) {
                let key = vault.transit_decrypt(wrapped).await.map_err(vault_error)?;
                raw.insert(*id, key);
            }
        }
        Self::from_keys(path, file.current, raw)
    }

    /// Adds a fresh master key to the file at `path` and makes it current;
    /// returns its id. Existing texts keep opening with their own version.
    pub fn rotate(path: &Path) -> Result<u32, SealError> {
        let mut file = read_file(path)?;
        if !file.wrapped.is_empty() {
            return Err(wrapped_without_vault(path, &file));
        }
        let id = file.next_version();
        file.keys.insert(id, hex::encode(fresh_key()?));
        file.current = id;
        write_private(path, &file)?;
        Ok(id)
    }

    /// [`Sealer::rotate`] for a file wrapped by Vault transit.
    pub async fn rotate_wrapped(
        path: &Path,
        vault: &crate::secrets::VaultSecrets,
    ) -> Result<u32, SealError> {
        let mut file = read_file(path)?;
        let id = file.next_version();
        let wrapped = vault
            .transit_encrypt(&fresh_key()?)
            .await
            .map_err(|e| io(path, e))?;
        file.wrapped.insert(id, wrapped);
        file.current = id;
        write_private(path, &file)?;
        Ok(id)
    }

    fn seal_with(&self, key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError("no randomness".into()))?;
        let mut out = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out,
        )
        .map_err(|_| SealError("sealing failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend(out);
        Ok(sealed)
    }

    fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError("a sealed text is cut short".into()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError("a bad nonce".into()))?;
        let mut out = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut out)
            .map_err(|_| SealError("a sealed text does not open (wrong tenant or key)".into()))?;
        Ok(plain.to_vec())
    }

    /// `text` sealed under key context `context`.
    pub fn seal(&self, context: &str, text: &str) -> Result<String, SealError> {
        self.seal_bytes(context, text.as_bytes())
    }

    /// `plain` sealed under key context `context`, as text.
    pub fn seal_bytes(&self, context: &str, plain: &[u8]) -> Result<String, SealError> {
        let dek = fresh_key()?;
        let master = &self.keys[&self.current];
        let wrapped = self.seal_with(master, format!("amaos-dek:{context}").as_bytes(), &dek)?;
        let body = self.seal_with(&key_of(&dek)?, context.as_bytes(), plain)?;
        Ok(format!(
            "{PREFIX}{}:{}:{}",
            self.current,
            B64.encode(wrapped),
            B64.encode(body)
        ))
    }

    /// Whether `stored` is a sealed value.
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(PREFIX.as_bytes())
    }

    /// The text `stored` holds under `context`: opened when sealed, as it is
    /// otherwise (stored before encryption was on).
    pub fn open(&self, context: &str, stored: &str) -> Result<String, SealError> {
        let plain = self.open_bytes(context, stored.as_bytes())?;
        String::from_utf8(plain).map_err(|_| SealError("a sealed text is not UTF-8".into()))
    }

    /// The bytes `stored` holds under `context`: opened when sealed, as they
    /// are otherwise.
    pub fn open_bytes(&self, context: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(stored.to_vec());
        };
        let rest = std::str::from_utf8(rest)
            .map_err(|_| SealError("a sealed value is malformed".into()))?;
        let mut parts = rest.splitn(3, ':');
        let (Some(kid), Some(wrapped), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError("a sealed text is malformed".into()));
        };
        let kid: u32 = kid
            .parse()
            .map_err(|_| SealError("a sealed text names no key".into()))?;
        let master = self
            .keys
            .get(&kid)
            .ok_or_else(|| SealError(format!("master key {kid} is not in the key file")))?;
        let decode = |s: &str| {
            B64.decode(s)
                .map_err(|_| SealError("a sealed text is not base64".into()))
        };
        let dek = Self::open_with(
            master,
            format!("amaos-dek:{context}").as_bytes(),
            &decode(wrapped)?,
        )?;
        Self::open_with(&key_of(&dek)?, context.as_bytes(), &decode(body)?)
    }
}

/// The sealer over the key file at `path`: its keys wrapped by Vault transit
/// when `secrets.transit_key` is set, in the file otherwise.
pub async fn open_configured(
    path: std::path::PathBuf,
    secrets: &crate::secrets::SecretsConfig,
) -> Result<Sealer, crate::BoxError> {
    if secrets.transit_key.is_empty() {
        return Ok(tokio::task::spawn_blocking(move || Sealer::open_or_create(&path)).await??);
    }
    let vault = crate::secrets::VaultSecrets::login_to(secrets).await?;
    Ok(Sealer::open_or_create_wrapped(&path, &vault).await?)
}

fn write_private(path: &Path, file: &KeyFile) -> Result<(), SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(file).map_err(|e| SealError(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp-{}", crate::new_id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_seal_per_tenant_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.keys");
        let sealer = Sealer::open_or_create(&path).unwrap();
        let sealed = sealer.seal("acme", "the launch code is 7731").unwrap();
        assert!(sealed.starts_with("sealed:1:1:"));
        assert!(!sealed.contains("7731"));
        assert_eq!(
            sealer.open("acme", &sealed).unwrap(),
            "the launch code is 7731"
        );
        assert!(
            sealer.open("globex", &sealed).is_err(),
            "another tenant's context does not open it"
        );
        assert_eq!(
            sealer.open("acme", "plain old text").unwrap(),
            "plain old text"
        );
        // Rotation: new texts use key 2, old ones still open.
        assert_eq!(Sealer::rotate(&path).unwrap(), 2);
        let rotated = Sealer::open_or_create(&path).unwrap();
        let fresh = rotated.seal("acme", "new").unwrap();
        assert!(fresh.starts_with("sealed:1:2:"));
        assert_eq!(
            rotated.open("acme", &sealed).unwrap(),
            "the launch code is 7731"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A tampered text does not open: change one character of the sealed body.
        let mut bad: Vec<char> = fresh.chars().collect();
        let at = bad.len() - 10;
        bad[at] = if bad[at] == 'A' { 'B' } else { 'A' };
        let bad: String = bad.into_iter().collect();
        assert!(rotated.open("acme", &bad).is_err());
    }
}
