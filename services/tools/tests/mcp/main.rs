//! Custom tools over MCP with a real MCP server process (`amaos-mcp-demo`,
//! built with rmcp): over stdio inside the sandbox, and over streamable
//! HTTP. Tools appear namespaced with their schemas; arguments are
//! validated against the schema, naming the failing path.
//!
//! # Layout
//!
//! - `transports`: a server over stdio in the sandbox, and one over streamable HTTP.
//! - `tenancy`: a tenant's servers and secrets are its own; server URLs pass the address policy.
//! - `registration`: registration through the service is per tenant and audited.

mod registration;
mod tenancy;
mod transports;

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amaos_tools::ToolError;
use amaos_tools::mcp::{AddressPolicy, Mcp, Scope, Transport};
use amaos_tools::sandbox::{Limits, Sandbox};
use serde_json::{Value, json};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amaos-mcp-demo"))
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A demo server over streamable HTTP, killed however the test ends.
struct HttpDemo {
    child: std::process::Child,
    address: String,
}

impl HttpDemo {
    /// Listening on `ip`, with `env` added to its environment.
    fn start(ip: &str, env: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(demo())
            .args(["--http", &format!("{ip}:0")])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            child,
            address: line.trim().to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for HttpDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(url: String, bearer_secret: Option<&str>) -> Transport {
    Transport::Http {
        url,
        bearer_secret: bearer_secret.map(str::to_owned),
    }
}

fn tenant(t: &str) -> Scope {
    Scope::Tenant(t.to_owned())
}

fn secrets(dir: &std::path::Path, json: &str) -> Arc<dyn amaos_mesh::secrets::SecretStore> {
    std::fs::write(dir.join("secrets.json"), json).unwrap();
    Arc::new(amaos_mesh::secrets::FileSecrets::new(
        dir.join("secrets.json"),
    ))
}
