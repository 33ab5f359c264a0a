//! `[agents]`: an agents worker: its teams, capacity and budgets.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::common::{ConfigError, addr, http_url, in_range, service_endpoint, url};
use super::duration::duration_text;

/// The agents service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it; also what it registers with the router.
    pub url: String,
    /// A directory of team specs (`*.yaml`) served by name.
    pub teams_dir: PathBuf,
    /// Runs taken at once.
    pub capacity: u32,
    /// Model calls per run when the spec sets no budget.
    pub max_steps: u32,
    /// Largest team spec, in bytes.
    pub max_spec_bytes: usize,
    /// The worker's own key (role `worker`), exchanged at auth for the
    /// service token it registers with; unset for `<data_dir>/worker.key`,
    /// which auth writes when it creates the first keys.
    pub service_key_file: Option<PathBuf>,
    /// The remote A2A agents team members (`kind: a2a`) may call: a spec's
    /// `url` must be one of these, and the credential comes from here, never
    /// from the spec.
    pub a2a_remotes: Vec<A2aRemote>,
}
service_endpoint!(AgentsConfig);

/// `[[agents.a2a_remotes]]`: one remote A2A agent and how to call it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aRemote {
    /// Its A2A gRPC address, exactly as specs name it.
    pub url: String,
    /// The environment variable holding the bearer credential; unset for none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The secret-store path of the bearer credential, read at each call.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Longest wait for one answer (the remote runs its task meanwhile).
    #[serde(default = "remote_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Retries on UNAVAILABLE and transport errors (the same message id,
    /// so a remote that deduplicates runs it once).
    #[serde(default = "remote_retries")]
    pub max_retries: u32,
}

fn remote_timeout() -> Duration {
    Duration::from_secs(600)
}

fn remote_retries() -> u32 {
    2
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            listen: addr(50053),
            admin_listen: Some(addr(9603)),
            url: url(50053),
            teams_dir: PathBuf::from("examples/teams"),
            capacity: 8,
            max_steps: 32,
            max_spec_bytes: 256 * 1024,
            service_key_file: None,
            a2a_remotes: Vec::new(),
        }
    }
}

impl AgentsConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("agents.capacity", self.capacity as usize, 1, 100_000)?;
        in_range("agents.max_steps", self.max_steps as usize, 1, 10_000)?;
        in_range(
            "agents.max_spec_bytes",
            self.max_spec_bytes,
            64,
            16 * 1024 * 1024,
        )?;
        for (i, remote) in self.a2a_remotes.iter().enumerate() {
            let key = format!("agents.a2a_remotes[{i}].url");
            http_url(&key, &remote.url)?;
            if !remote.url.starts_with("http://") {
                return Err(ConfigError::new(
                    &key,
                    "only http:// remotes for now; reach an https:// one through a TLS \
                     proxy or the service mesh (Linkerd) on a local http:// address",
                ));
            }
            if remote.timeout.is_zero() {
                return Err(ConfigError::new(
                    &format!("agents.a2a_remotes[{i}].timeout"),
                    "must be positive",
                ));
            }
            in_range(
                &format!("agents.a2a_remotes[{i}].max_retries"),
                remote.max_retries as usize,
                0,
                10,
            )?;
        }
        Ok(())
    }
}
