//! `[agents]`: an agents worker: its teams, capacity and budgets.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::common::{ConfigError, addr, in_range, service_endpoint, url};

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
}
service_endpoint!(AgentsConfig);

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
        Ok(())
    }
}
