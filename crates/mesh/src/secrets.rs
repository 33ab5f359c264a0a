//! Secrets (LLM API keys, MCP credentials) behind one trait, so no secret
//! ever comes from task input or sits in config files in clear.
//!
//! - [`FileSecrets`] (embedded): a JSON object `{ "path": "value" }` in a file
//!   (re-read when it changes, so a rotated secret is picked up without a
//!   restart), then `AMAOS_SECRET__<PATH>` environment variables
//!   (`llm/openai` → `AMAOS_SECRET__LLM__OPENAI`).
//! - [`VaultSecrets`]: HashiCorp Vault KV v2 through vaultrs, with token,
//!   AppRole or Kubernetes auth, a token renewed before it expires, and
//!   values cached for `cache_ttl` (a rotated secret is picked up when the
//!   cache entry ages out). `path@3` reads version 3.
//!
//! A [`Secret`] never prints its value: its `Debug` is redacted and it has
//! no `Display`; errors name the path, never the value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;

/// A secret value. Its `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it (a header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the value replaced by `***`, for
    /// error messages that quote what a server sent back.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "***")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret could not be read. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Nothing is stored at the path.
    #[error("secret `{0}` not found")]
    NotFound(String),
    /// The store failed.
    #[error("secret store ({store}): {message}")]
    Store {
        /// The backend.
        store: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// What every secret store offers.
pub trait SecretStore: Send + Sync {
    /// The backend's name.
    fn name(&self) -> &'static str;
    /// The secret at `path` (e.g. `llm/openai`).
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>>;
}

/// The `secrets` section's types, defined with the rest of the configuration.
pub use crate::config::{SecretsBackend, SecretsConfig, VaultAuthMethod};

/// The store `config` names.
pub async fn open(
    config: &SecretsConfig,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn SecretStore>, SecretError> {
    Ok(match config.backend {
        SecretsBackend::File => Arc::new(FileSecrets::new(
            config
                .file
                .clone()
                .unwrap_or_else(|| data_dir.join("secrets.json")),
        )),
        SecretsBackend::Vault => VaultSecrets::connect(config).await?,
    })
}

/// The store `config` names, every read of it appended to the audit trail
/// first (as `secret.read`); a read fails when the trail cannot be written.
/// The record names the principal on whose behalf the read is made (see
/// [`on_behalf_of`]), else the reading service, `principal`.
pub async fn open_audited(
    config: &crate::Config,
    principal: &'static str,
) -> Result<Arc<dyn SecretStore>, SecretError> {
    Ok(Arc::new(Audited {
        inner: open(&config.secrets, &config.data_dir).await?,
        audit: crate::audit::AuditLog::append_only_configured(config),
        principal,
    }))
}

tokio::task_local! {
    /// The principal and tenant a secret is read for.
    static ON_BEHALF: (String, String);
}

/// Runs `f` with secret reads recorded as made for `principal` in `tenant`
/// (the caller a service reads a secret for: a model key for a run, an MCP
/// credential for a registration).
pub async fn on_behalf_of<F: std::future::Future>(
    principal: &str,
    tenant: &str,
    f: F,
) -> F::Output {
    ON_BEHALF
        .scope((principal.to_owned(), tenant.to_owned()), f)
        .await
}

struct Audited {
    inner: Arc<dyn SecretStore>,
    audit: crate::audit::AuditLog,
    principal: &'static str,
}

impl SecretStore for Audited {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        Box::pin(async move {
            // Who it is read for: the scoped principal, else the service
            // itself (looked up when the read runs, inside the scope).
            let (principal, tenant) = ON_BEHALF
                .try_with(|(p, t)| (p.clone(), t.clone()))
                .unwrap_or_else(|_| (self.principal.to_owned(), String::new()));
            self.audit
                .append_async(crate::audit::Entry {
                    principal: &principal,
                    tenant: &tenant,
                    action: "secret.read",
                    object: path,
                    allowed: true,
                })
                .await
                .map_err(|e| SecretError::Store {
                    store: "audit",
                    message: e.to_string(),
                })?;
            self.inner.get(path).await
        })
    }
}

/// Secrets from a JSON file, then the environment.
pub struct FileSecrets {
    file: PathBuf,
    cache: Mutex<Option<(SystemTime, HashMap<String, String>)>>,
}

impl FileSecrets {
    /// Secrets from `file` (which may not exist) and the environment.
    pub fn new(file: PathBuf) -> Self {
        Self {
            file,
            cache: Mutex::new(None),
        }
    }

    fn read_file(&self, path: &str) -> Result<Option<String>, SecretError> {
        let error = |message: String| SecretError::Store {
            store: "file",
            message,
        };
        let modified = match std::fs::metadata(&self.file) {
            Ok(m) => m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            Err(_) => return Ok(None),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_none_or(|(at, _)| *at != modified) {
            let text = std::fs::read_to_string(&self.file)
                .map_err(|e| error(format!("{}: {e}", self.file.display())))?;
            let values: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
                // serde's message names the position, not the content.
                error(format!(
                    "{}: not a JSON object of strings (line {}, column {})",
                    self.file.display(),
                    e.line(),
                    e.column()
                ))
            })?;
            *cache = Some((modified, values));
        }
        Ok(cache.as_ref().and_then(|(_, v)| v.get(path).cloned()))
    }
}

/// `llm/openai` → `AMAOS_SECRET__LLM__OPENAI`.
pub fn env_name(path: &str) -> String {
    let mut name = String::from("AMAOS_SECRET__");
    for c in path.chars() {
        name.push(match c {
            '/' => '_',
            c if c.is_ascii_alphanumeric() => c.to_ascii_uppercase(),
            _ => '_',
        });
        if c == '/' {
            name.push('_');
        }
    }
    name
}

impl SecretStore for FileSecrets {
    fn name(&self) -> &'static str {
        "file"
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        let found = self.read_file(path).map(|v| {
            v.or_else(|| std::env::var(env_name(path)).ok())
                .map(Secret::new)
        });
        Box::pin(async move { found?.ok_or_else(|| SecretError::NotFound(path.to_owned())) })
    }
}

/// HashiCorp Vault KV v2.
pub struct VaultSecrets {
    client: tokio::sync::RwLock<vaultrs::client::VaultClient>,
    mount: String,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, (Secret, Instant)>>,
    config: SecretsConfig,
}

fn vault_error(e: impl std::fmt::Display) -> SecretError {
    SecretError::Store {
        store: "vault",
        message: e.to_string(),
    }
}

/// A vaultrs error with its causes (vaultrs's own message is often only
/// "An error occurred with the request").
fn client_error(e: vaultrs::error::ClientError) -> SecretError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    vault_error(message)
}

fn env(var: &str) -> Result<String, SecretError> {
    std::env::var(var).map_err(|_| vault_error(format!("environment variable {var} is not set")))
}

impl VaultSecrets {
    /// Logs in to Vault as `config` says and starts renewing the token.
    pub async fn connect(config: &SecretsConfig) -> Result<Arc<dyn SecretStore>, SecretError> {
        Ok(Self::login_to(config).await?)
    }

    /// [`VaultSecrets::connect`], keeping the concrete type (for transit).
    pub async fn login_to(config: &SecretsConfig) -> Result<Arc<Self>, SecretError> {
        crate::install_crypto_provider();
        let mut settings = vaultrs::client::VaultClientSettingsBuilder::default();
        settings
            .address(&config.vault_addr)
            .timeout(Some(Duration::from_secs(10)));
        if config.vault_auth == VaultAuthMethod::Token {
            settings.token(env(&config.vault_token_env)?);
        }
        let client = vaultrs::client::VaultClient::new(settings.build().map_err(vault_error)?)
            .map_err(vault_error)?;
        let store = Arc::new(Self {
            client: tokio::sync::RwLock::new(client),
            mount: config.vault_mount.clone(),
            cache_ttl: config.cache_ttl,
            cache: Mutex::new(HashMap::new()),
            config: config.clone(),
        });
        let lease = store.login().await?;
        tokio::spawn(renew(Arc::downgrade(&store), lease));
        Ok(store)
    }

    /// `plain` encrypted by the configured transit key (`vault:v<n>:…`).
    pub async fn transit_encrypt(&self, plain: &[u8]) -> Result<String, SecretError> {
        use base64::Engine;
        let c = &self.config;
        let client = self.client.read().await;
        let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
        vaultrs::transit::data::encrypt(&*client, &c.transit_mount, &c.transit_key, &encoded, None)
            .await
            .map(|r| r.ciphertext)
            .map_err(client_error)
    }

    /// What `ciphertext` (from [`VaultSecrets::transit_encrypt`]) holds.
    pub async fn transit_decrypt(&self, ciphertext: &str) -> Result<Vec<u8>, SecretError> {
        use base64::Engine;
        let c = &self.config;
        let client = self.client.read().await;
        let plain = vaultrs::transit::data::decrypt(
            &*client,
            &c.transit_mount,
            &c.transit_key,
            ciphertext,
            None,
        )
        .await
        .map_err(client_error)?
        .plaintext;
        base64::engine::general_purpose::STANDARD
            .decode(plain)
            .map_err(|_| vault_error("transit returned a plaintext that is not base64"))
    }

    /// The transit key in use.
    pub fn transit_key(&self) -> &str {
        &self.config.transit_key
    }

    /// Logs in (AppRole or Kubernetes) or checks the token; returns how long
    /// the token lives (zero for one that does not expire).
    async fn login(&self) -> Result<Duration, SecretError> {
        use vaultrs::client::Client;
        let c = &self.config;
        let mut client = self.client.write().await;
        let auth = match c.vault_auth {
            VaultAuthMethod::Token => {
                let info = vaultrs::token::lookup_self(&*client)
                    .await
                    .map_err(client_error)?;
                return Ok(Duration::from_secs(info.ttl));
            }
            VaultAuthMethod::Approle => vaultrs::auth::approle::login(
                &*client,
                &c.vault_approle_mount,
                &env(&c.vault_role_id_env)?,
                &env(&c.vault_secret_id_env)?,
            )
            .await
            .map_err(client_error)?,
            VaultAuthMethod::Kubernetes => {
                let jwt = std::fs::read_to_string(&c.vault_kubernetes_jwt).map_err(|e| {
                    vault_error(format!("{}: {e}", c.vault_kubernetes_jwt.display()))
                })?;
                vaultrs::auth::kubernetes::login(
                    &*client,
                    &c.vault_kubernetes_mount,
                    &c.vault_kubernetes_role,
                    jwt.trim(),
                )
                .await
                .map_err(client_error)?
            }
        };
        client.set_token(&auth.client_token);
        Ok(Duration::from_secs(auth.lease_duration))
    }

    async fn read(&self, path: &str) -> Result<Secret, SecretError> {
        let (key, version) = match path.rsplit_once('@') {
            Some((key, v)) => (
                key,
                Some(v.parse::<u64>().map_err(|_| {
                    SecretError::NotFound(format!("{path} (the version is not a number)"))
                })?),
            ),
            None => (path, None),
        };
        let client = self.client.read().await;
        let data: Result<HashMap<String, String>, _> = match version {
            Some(v) => vaultrs::kv2::read_version(&*client, &self.mount, key, v).await,
            None => vaultrs::kv2::read(&*client, &self.mount, key).await,
        };
        match data {
            Ok(map) => map
                .get("value")
                .cloned()
                .map(Secret::new)
                .ok_or_else(|| SecretError::NotFound(format!("{path} (no `value` field)"))),
            Err(vaultrs::error::ClientError::APIError { code: 404, .. }) => {
                Err(SecretError::NotFound(path.to_owned()))
            }
            Err(e) => Err(client_error(e)),
        }
    }
}

/// Renews the token at two thirds of its lease; logs in again when renewal
/// fails. Ends when the store is dropped.
async fn renew(store: std::sync::Weak<VaultSecrets>, mut lease: Duration) {
    loop {
        if lease.is_zero() {
            return; // a token that never expires
        }
        tokio::time::sleep(lease * 2 / 3).await;
        let Some(store) = store.upgrade() else { return };
        let renewed = {
            let client = store.client.read().await;
            vaultrs::token::renew_self(&*client, None).await
        };
        lease = match renewed {
            Ok(auth) => Duration::from_secs(auth.lease_duration),
            Err(error) => {
                tracing::warn!(%error, "vault token renewal failed; logging in again");
                match store.login().await {
                    Ok(lease) => lease,
                    Err(error) => {
                        tracing::warn!(%error, "vault login failed; retrying in 10s");
                        Duration::from_secs(15)
                    }
                }
            }
        };
    }
}

impl SecretStore for VaultSecrets {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        Box::pin(async move {
            if let Some((secret, at)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                && at.elapsed() < self.cache_ttl
            {
                return Ok(secret.clone());
            }
            let secret = self.read(path).await?;
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.to_owned(), (secret.clone(), Instant::now()));
            Ok(secret)
        })
    }
}
