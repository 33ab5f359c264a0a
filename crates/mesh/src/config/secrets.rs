//! `[secrets]`: where secrets (LLM API keys, MCP credentials, the audit
//! key) come from; [`crate::secrets`] opens the store this names.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, http_url, positive};
use super::duration::duration_text;

/// Which store, and how to reach it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// `file` (embedded) or `vault`.
    pub backend: SecretsBackend,
    /// The secrets file for `file`; unset for `<data_dir>/secrets.json`.
    pub file: Option<PathBuf>,
    /// Vault's address, e.g. `https://vault.vault.svc:8200`.
    pub vault_addr: String,
    /// The KV v2 mount.
    pub vault_mount: String,
    /// `token`, `approle` or `kubernetes`.
    pub vault_auth: VaultAuthMethod,
    /// The environment variable holding the token, for `token`.
    pub vault_token_env: String,
    /// The AppRole mount, and the variables holding role and secret ids.
    pub vault_approle_mount: String,
    /// Environment variable of the AppRole role id.
    pub vault_role_id_env: String,
    /// Environment variable of the AppRole secret id.
    pub vault_secret_id_env: String,
    /// The Kubernetes auth mount and role.
    pub vault_kubernetes_mount: String,
    /// The Vault role bound to this service account.
    pub vault_kubernetes_role: String,
    /// The service account token file.
    pub vault_kubernetes_jwt: PathBuf,
    /// How long a read value is used before Vault is asked again.
    #[serde(with = "duration_text")]
    pub cache_ttl: Duration,
    /// The Vault transit mount.
    pub transit_mount: String,
    /// A transit key that wraps the master keys of encryption at rest
    /// (memory and task store); empty to keep them in local key files only.
    pub transit_key: String,
}

/// The secret store backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsBackend {
    /// A JSON file and environment variables.
    File,
    /// HashiCorp Vault KV v2.
    Vault,
}

/// How the service logs in to Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// A token from the environment.
    Token,
    /// AppRole (role id and secret id from the environment).
    Approle,
    /// The Kubernetes service account token.
    Kubernetes,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            backend: SecretsBackend::File,
            file: None,
            vault_addr: "http://127.0.0.1:8200".into(),
            vault_mount: "secret".into(),
            vault_auth: VaultAuthMethod::Token,
            vault_token_env: "VAULT_TOKEN".into(),
            vault_approle_mount: "approle".into(),
            vault_role_id_env: "VAULT_ROLE_ID".into(),
            vault_secret_id_env: "VAULT_SECRET_ID".into(),
            vault_kubernetes_mount: "kubernetes".into(),
            vault_kubernetes_role: String::new(),
            vault_kubernetes_jwt: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            cache_ttl: Duration::from_secs(60),
            transit_mount: "transit".into(),
            transit_key: String::new(),
        }
    }
}

impl SecretsConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("secrets.cache_ttl", self.cache_ttl)?;
        if !self.transit_key.is_empty() && self.backend != SecretsBackend::Vault {
            return Err(ConfigError::new(
                "secrets.transit_key",
                "needs secrets.backend = \"vault\" (the transit key lives in Vault)",
            ));
        }
        if self.backend == SecretsBackend::Vault {
            http_url("secrets.vault_addr", &self.vault_addr)?;
            if self.vault_mount.is_empty() {
                return Err(ConfigError::new(
                    "secrets.vault_mount",
                    "must name the KV v2 mount",
                ));
            }
            if self.vault_auth == VaultAuthMethod::Kubernetes
                && self.vault_kubernetes_role.is_empty()
            {
                return Err(ConfigError::new(
                    "secrets.vault_kubernetes_role",
                    "must name the Vault role for Kubernetes auth",
                ));
            }
        }
        Ok(())
    }
}
