//! The worker registry as a trait, with two backends that pass one suite:
//! the in-process [`Registry`](crate::registry::Registry) (one router
//! replica) and [`RedisRegistry`](crate::redis_registry::RedisRegistry),
//! shared by every router replica.

use std::time::SystemTime;

use crate::breaker::State;
use crate::error::RouterError;
use crate::registry::{Outcome, Registration, Registry, RouteQuery, WorkerView};

/// Where workers, their load and the circuit breakers live.
#[tonic::async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Registers a worker (or refreshes a known id) and returns its id. A
    /// known id registered by another owner is refused; other workers of the
    /// same owner at the same address (a restarted worker's dead self) are
    /// dropped.
    async fn register(
        &self,
        worker_id: Option<String>,
        registration: Registration,
    ) -> Result<String, RouterError>;
    /// Records a heartbeat from `owner`; returns when the worker expires
    /// without another.
    async fn heartbeat(
        &self,
        worker_id: &str,
        owner: &str,
        in_flight: u32,
        draining: bool,
    ) -> Result<SystemTime, RouterError>;
    /// Picks a worker for the query.
    async fn route(&self, query: &RouteQuery<'_>) -> Result<WorkerView, RouterError>;
    /// Every worker (expired ones when asked), optionally only those serving `team`.
    async fn list(
        &self,
        team: Option<&str>,
        include_expired: bool,
    ) -> Result<Vec<WorkerView>, RouterError>;
    /// Records how a run ended; returns the worker's and the team's breaker states.
    async fn report(
        &self,
        worker_id: &str,
        team: &str,
        outcome: Outcome,
    ) -> Result<(State, State), RouterError>;
    /// The breaker states of these workers.
    async fn worker_breakers(&self, worker_ids: &[String]) -> Result<Vec<State>, RouterError>;
    /// Breakers open or half-open: (workers, teams).
    async fn tripped(&self) -> Result<(usize, usize), RouterError>;
}

#[tonic::async_trait]
impl WorkerRegistry for Registry {
    async fn register(
        &self,
        worker_id: Option<String>,
        registration: Registration,
    ) -> Result<String, RouterError> {
        Registry::register(self, worker_id, registration)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        owner: &str,
        in_flight: u32,
        draining: bool,
    ) -> Result<SystemTime, RouterError> {
        Registry::heartbeat(self, worker_id, owner, in_flight, draining)
    }

    async fn route(&self, query: &RouteQuery<'_>) -> Result<WorkerView, RouterError> {
        Registry::route(self, query)
    }

    async fn list(
        &self,
        team: Option<&str>,
        include_expired: bool,
    ) -> Result<Vec<WorkerView>, RouterError> {
        Ok(Registry::list(self, team, include_expired))
    }

    async fn report(
        &self,
        worker_id: &str,
        team: &str,
        outcome: Outcome,
    ) -> Result<(State, State), RouterError> {
        Ok(Registry::report(self, worker_id, team, outcome))
    }

    async fn worker_breakers(&self, worker_ids: &[String]) -> Result<Vec<State>, RouterError> {
        Ok(worker_ids
            .iter()
            .map(|id| self.worker_breaker(id))
            .collect())
    }

    async fn tripped(&self) -> Result<(usize, usize), RouterError> {
        Ok(Registry::tripped(self))
    }
}
