//! `[tls]`: transport security between services (the modes are described
//! in [`crate::tls`], which builds the rustls configurations from this).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, positive};
use super::duration::duration_text;

/// The services of the mesh (the gateway only as a caller: its own listener
/// speaks HTTP to clients), and `cli` for the `amaos` command and operators.
pub const PRINCIPALS: &[&str] = &[
    "orchestrator",
    "router",
    "agents",
    "tools",
    "memory",
    "auth",
    "gateway",
    "cli",
];

/// How services secure the connections between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext h2c.
    #[default]
    Off,
    /// mTLS terminated by each service with rustls.
    Rustls,
    /// Plaintext h2c; a service mesh (Linkerd) does mTLS between pods.
    Mesh,
}

/// The `tls` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The mode.
    pub mode: TlsMode,
    /// Where `ca.pem`, `<name>.pem` and `<name>.key` are (`amaos certs init`
    /// writes them); defaults to `<data_dir>/tls`.
    pub dir: Option<PathBuf>,
    /// The CA certificate (PEM), overriding `<dir>/ca.pem`.
    pub ca: Option<PathBuf>,
    /// This process's certificate chain (PEM), overriding `<dir>/<name>.pem`.
    pub cert: Option<PathBuf>,
    /// This process's private key (PEM), overriding `<dir>/<name>.key`.
    pub key: Option<PathBuf>,
    /// The Kubernetes namespace in identities.
    pub namespace: String,
    /// The trust domain in identities.
    pub trust_domain: String,
    /// Who may call each service: identities, or short names of AMAOS
    /// principals (`agents`, `cli`). A service not named keeps its default
    /// ([`crate::tls::default_callers`]).
    pub allow: BTreeMap<String, Vec<String>>,
    /// How long a TLS handshake may take.
    #[serde(with = "duration_text")]
    pub handshake_timeout: std::time::Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            mode: TlsMode::Off,
            dir: None,
            ca: None,
            cert: None,
            key: None,
            namespace: "amaos".into(),
            trust_domain: "cluster.local".into(),
            allow: BTreeMap::new(),
            handshake_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("tls.namespace", &self.namespace),
            ("tls.trust_domain", &self.trust_domain),
        ] {
            let valid = !value.is_empty()
                && value.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !valid {
                return Err(ConfigError::new(
                    key,
                    format!("`{value}` must be lowercase DNS labels (a-z, 0-9, -)"),
                ));
            }
        }
        positive("tls.handshake_timeout", self.handshake_timeout)?;
        for service in self.allow.keys() {
            if !PRINCIPALS.contains(&service.as_str()) || service == "cli" || service == "gateway" {
                return Err(ConfigError::new(
                    &format!("tls.allow.{service}"),
                    "names no service (orchestrator, router, agents, tools, memory, auth)",
                ));
            }
        }
        Ok(())
    }
}
