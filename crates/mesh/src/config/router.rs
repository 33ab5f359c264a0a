//! `[router]`: the worker registry, its breakers, and the networks workers
//! may register in.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{
    ConfigError, StoreBackend, addr, in_range, positive, redis_url, service_endpoint, url,
};
use super::duration::duration_text;

/// The router.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address; unset for none.
    pub admin_listen: Option<SocketAddr>,
    /// How other services reach it.
    pub url: String,
    /// How often workers heartbeat.
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// How long a worker stays routable without a heartbeat.
    #[serde(with = "duration_text")]
    pub worker_ttl: Duration,
    /// Largest number of registered workers.
    pub max_workers: usize,
    /// Where the registry and breakers live: `memory` (one router replica) or
    /// `redis` (shared by every replica).
    pub backend: StoreBackend,
    /// The Redis server, for `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of the router's Redis keys.
    pub redis_prefix: String,
    /// Consecutive failed runs that open a worker's or a team's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses traffic before one probe.
    #[serde(with = "duration_text")]
    pub breaker_cool_down: Duration,
    /// The networks (CIDRs) a worker's address must fall in; the orchestrator
    /// sends task input and run tokens there. Loopback by default; a cluster
    /// names its pod network.
    pub worker_networks: Vec<String>,
    /// Most workers one identity may have registered at once.
    pub max_workers_per_identity: usize,
}
service_endpoint!(RouterConfig);

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a single host).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().ok()?)),
            None => (text.trim(), None),
        };
        let network: std::net::IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { network, prefix })
    }

    /// True when `ip` is inside the network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |ip: std::net::IpAddr| -> (u128, u32) {
            match ip {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if width != addr_width {
            return false;
        }
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            (u128::MAX << host_bits) & (u128::MAX >> (128 - width))
        };
        net & mask == addr & mask
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: addr(50052),
            admin_listen: Some(addr(9602)),
            url: url(50052),
            heartbeat_interval: Duration::from_secs(5),
            worker_ttl: Duration::from_secs(15),
            max_workers: 10_000,
            backend: StoreBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "amaos".into(),
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(10),
            worker_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_workers_per_identity: 1024,
        }
    }
}

impl RouterConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("router.heartbeat_interval", self.heartbeat_interval)?;
        if self.worker_ttl <= self.heartbeat_interval {
            return Err(ConfigError::new(
                "router.worker_ttl",
                "must be longer than router.heartbeat_interval",
            ));
        }
        in_range("router.max_workers", self.max_workers, 1, 1_000_000)?;
        in_range(
            "router.max_workers_per_identity",
            self.max_workers_per_identity,
            1,
            1_000_000,
        )?;
        if self.worker_networks.is_empty() {
            return Err(ConfigError::new(
                "router.worker_networks",
                "name at least one network (CIDR) workers may register in",
            ));
        }
        if let Some(bad) = self
            .worker_networks
            .iter()
            .find(|n| Cidr::parse(n).is_none())
        {
            return Err(ConfigError::new(
                "router.worker_networks",
                format!("`{bad}` is not a network in CIDR form (e.g. 10.0.0.0/8)"),
            ));
        }
        in_range(
            "router.breaker_failures",
            self.breaker_failures as usize,
            1,
            10_000,
        )?;
        positive("router.breaker_cool_down", self.breaker_cool_down)?;
        redis_url("router.redis_url", &self.redis_url)?;
        if self.redis_prefix.is_empty() || self.redis_prefix.len() > 64 {
            return Err(ConfigError::new(
                "router.redis_prefix",
                "must be 1 to 64 characters",
            ));
        }
        Ok(())
    }
}
