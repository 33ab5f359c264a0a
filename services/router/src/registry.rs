//! The worker registry and the routing choice, on the embedded (in-process)
//! backend. Time comes from `tokio::time` so tests control it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::breaker::{Breakers, State};
use crate::error::RouterError;

/// How a run on a worker went, as the circuit breakers count it. A refusal
/// (the worker at capacity, the team's breaker open) is none of these: it is
/// not reported at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The run finished (succeeded, or failed for a reason of its own input).
    Success,
    /// The worker failed the run: it crashed mid-run, timed out, or broke
    /// the stream. Counts against the worker only.
    WorkerFailure,
    /// The worker could not be reached at all: its breaker opens at once.
    Unreachable,
    /// The run failed on a live worker for a reason of the team (its model
    /// provider, an internal error). Counts against the team only.
    TeamFailure,
}

/// The team name that means "any team sent inline as a spec".
pub const ANY_INLINE: &str = "*";

/// What a worker declares when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Where its AgentsService is served.
    pub address: String,
    /// Teams it serves.
    pub teams: Vec<String>,
    /// Capabilities it declares.
    pub capabilities: Vec<String>,
    /// Runs it takes at once.
    pub capacity: u32,
    /// Free-form labels.
    pub labels: HashMap<String, String>,
    /// The identity that registered it (the principal of its service
    /// token); only that identity may refresh or heartbeat it.
    pub owner: String,
}

/// A worker as the registry sees it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    /// Its id.
    pub worker_id: String,
    /// What it declared.
    pub registration: Registration,
    /// Runs in flight: last reported, plus routes given since.
    pub in_flight: u32,
    /// Whether it is draining.
    pub draining: bool,
    /// Whether it missed its heartbeats past the TTL.
    pub expired: bool,
    /// When it registered.
    pub registered_at: SystemTime,
    /// When it last heartbeated.
    pub last_heartbeat_at: SystemTime,
}

struct Entry {
    registration: Registration,
    reported_in_flight: u32,
    routed_since_heartbeat: u32,
    draining: bool,
    registered_at: SystemTime,
    last_heartbeat_wall: SystemTime,
    last_heartbeat: Instant,
}

/// A routing request.
#[derive(Clone, Debug, Default)]
pub struct RouteQuery<'a> {
    /// The team.
    pub team: &'a str,
    /// Whether the team comes as an inline spec.
    pub inline_spec: bool,
    /// Capabilities required.
    pub required_capabilities: &'a [String],
    /// Affinity key; empty for none.
    pub session_key: &'a str,
    /// Workers not to choose.
    pub exclude: &'a [String],
}

/// The registry.
pub struct Registry {
    workers: Mutex<HashMap<String, Entry>>,
    breakers: Mutex<(Breakers, Breakers)>,
    ttl: Duration,
    max_workers: usize,
}

pub use amaos_mesh::breaker::BreakerPolicy;

/// The breakers of a registry made with [`Registry::new`]: `[router]`'s defaults.
pub const DEFAULT_BREAKERS: BreakerPolicy = BreakerPolicy {
    failures: 5,
    cool_down: Duration::from_secs(10),
};

impl Entry {
    fn live(&self, now: Instant, ttl: Duration) -> bool {
        now.duration_since(self.last_heartbeat) <= ttl
    }

    fn serves(&self, team: &str, inline_spec: bool) -> bool {
        self.registration
            .teams
            .iter()
            .any(|t| t == team || (inline_spec && t == ANY_INLINE))
    }

    fn load(&self) -> f64 {
        f64::from(self.reported_in_flight + self.routed_since_heartbeat)
            / f64::from(self.registration.capacity.max(1))
    }
}

impl Registry {
    /// An empty registry expiring workers `ttl` after their last heartbeat.
    pub fn new(ttl: Duration, max_workers: usize) -> Self {
        Self::with_breakers(ttl, max_workers, DEFAULT_BREAKERS)
    }

    /// An empty registry with the given breaker policy.
    pub fn with_breakers(ttl: Duration, max_workers: usize, policy: BreakerPolicy) -> Self {
        let breakers = |max| Breakers::new(policy, max);
        Self {
            workers: Mutex::new(HashMap::new()),
            breakers: Mutex::new((breakers(max_workers), breakers(100_000))),
            ttl,
            max_workers,
        }
    }

    fn lock_breakers(&self) -> std::sync::MutexGuard<'_, (Breakers, Breakers)> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records how a run of `team` on `worker_id` ended; returns the worker's
    /// and the team's breaker states after it.
    pub fn report(&self, worker_id: &str, team: &str, outcome: Outcome) -> (State, State) {
        let mut breakers = self.lock_breakers();
        let (workers, teams) = &mut *breakers;
        match outcome {
            Outcome::Success => (workers.record(worker_id, true), teams.record(team, true)),
            Outcome::WorkerFailure => (workers.record(worker_id, false), teams.state(team)),
            Outcome::Unreachable => (workers.trip(worker_id), teams.state(team)),
            Outcome::TeamFailure => (workers.state(worker_id), teams.record(team, false)),
        }
    }

    /// The state of a worker's breaker.
    pub fn worker_breaker(&self, worker_id: &str) -> State {
        self.lock_breakers().0.state(worker_id)
    }

    /// Counts of open or half-open breakers: (workers, teams).
    pub fn tripped(&self) -> (usize, usize) {
        let breakers = self.lock_breakers();
        (breakers.0.tripped().count(), breakers.1.tripped().count())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops workers expired for ten TTLs: they are gone, not late.
    fn purge(workers: &mut HashMap<String, Entry>, now: Instant, ttl: Duration) {
        workers.retain(|_, e| now.duration_since(e.last_heartbeat) <= ttl * 10);
    }

    /// Registers a worker (or refreshes a known id) and returns its id.
    pub fn register(
        &self,
        worker_id: Option<String>,
        registration: Registration,
    ) -> Result<String, RouterError> {
        let now = Instant::now();
        let mut workers = self.lock();
        Self::purge(&mut workers, now, self.ttl);
        let worker_id = worker_id.unwrap_or_else(amaos_mesh::new_id);
        if let Some(existing) = workers.get(&worker_id)
            && existing.registration.owner != registration.owner
        {
            return Err(RouterError::NotOwner(worker_id));
        }
        // A worker restarted at the same address replaces its dead self.
        workers.retain(|id, e| {
            *id == worker_id
                || e.registration.address != registration.address
                || e.registration.owner != registration.owner
        });
        if !workers.contains_key(&worker_id) && workers.len() >= self.max_workers {
            return Err(RouterError::RegistryFull(self.max_workers));
        }
        let wall = SystemTime::now();
        let registered_at = workers
            .get(&worker_id)
            .map(|e| e.registered_at)
            .unwrap_or(wall);
        workers.insert(
            worker_id.clone(),
            Entry {
                registration,
                reported_in_flight: 0,
                routed_since_heartbeat: 0,
                draining: false,
                registered_at,
                last_heartbeat_wall: wall,
                last_heartbeat: now,
            },
        );
        Ok(worker_id)
    }

    /// Records a heartbeat; returns when the worker expires without another.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        owner: &str,
        in_flight: u32,
        draining: bool,
    ) -> Result<SystemTime, RouterError> {
        let mut workers = self.lock();
        let entry = workers
            .get_mut(worker_id)
            .ok_or_else(|| RouterError::WorkerNotFound(worker_id.to_owned()))?;
        if entry.registration.owner != owner {
            return Err(RouterError::NotOwner(worker_id.to_owned()));
        }
        entry.reported_in_flight = in_flight;
        entry.routed_since_heartbeat = 0;
        entry.draining = draining;
        entry.last_heartbeat = Instant::now();
        entry.last_heartbeat_wall = SystemTime::now();
        Ok(entry.last_heartbeat_wall + self.ttl)
    }

    /// Picks a live, non-draining worker for the query whose breaker admits
    /// it: by session affinity (rendezvous hashing) when a key is given, else
    /// the less loaded of two chosen at random (power of two choices).
    pub fn route(&self, query: &RouteQuery<'_>) -> Result<WorkerView, RouterError> {
        let now = Instant::now();
        {
            let mut breakers = self.lock_breakers();
            if !breakers.1.admit(query.team) {
                let retry_after = breakers.1.retry_after(query.team).unwrap_or_default();
                return Err(RouterError::TeamBreakerOpen(
                    query.team.to_owned(),
                    retry_after,
                ));
            }
        }
        let mut workers = self.lock();
        Self::purge(&mut workers, now, self.ttl);
        let mut candidates: Vec<(&String, &Entry)> = workers
            .iter()
            .filter(|(id, e)| {
                e.serves(query.team, query.inline_spec)
                    && e.live(now, self.ttl)
                    && !e.draining
                    && !query.exclude.contains(id)
                    && query
                        .required_capabilities
                        .iter()
                        .all(|c| e.registration.capabilities.contains(c))
            })
            .collect();
        candidates.sort_by(|a, b| a.0.cmp(b.0));
        let mut chosen = None;
        let mut breakers = self.lock_breakers();
        candidates.retain(|(id, _)| breakers.0.state(id) != State::Open);
        while !candidates.is_empty() {
            let ids: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
            let loads: Vec<f64> = candidates.iter().map(|(_, e)| e.load()).collect();
            let pick = pick(&ids, &loads, query.session_key);
            let id = candidates[pick].0.clone();
            if breakers.0.admit(&id) {
                chosen = Some(id);
                break;
            }
            candidates.swap_remove(pick);
        }
        drop(breakers);
        let Some(worker_id) = chosen else {
            let known = workers
                .values()
                .any(|e| e.serves(query.team, query.inline_spec));
            return Err(if known {
                RouterError::NoLiveWorker(query.team.to_owned())
            } else {
                RouterError::UnknownTeam(query.team.to_owned())
            });
        };
        let entry = workers
            .get_mut(&worker_id)
            .ok_or(RouterError::NoLiveWorker(query.team.to_owned()))?;
        entry.routed_since_heartbeat += 1;
        Ok(view(&worker_id, entry, now, self.ttl))
    }

    /// Every worker (expired ones when asked), optionally only those serving `team`.
    pub fn list(&self, team: Option<&str>, include_expired: bool) -> Vec<WorkerView> {
        let now = Instant::now();
        let mut workers = self.lock();
        Self::purge(&mut workers, now, self.ttl);
        let mut out: Vec<WorkerView> = workers
            .iter()
            .filter(|(_, e)| team.is_none_or(|t| e.serves(t, false)))
            .map(|(id, e)| view(id, e, now, self.ttl))
            .filter(|w| include_expired || !w.expired)
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }
}

/// The routing choice among candidates (sorted by id): by rendezvous hashing
/// on `session_key` when given, else the less loaded of two picked at random.
pub(crate) fn pick(ids: &[&str], loads: &[f64], session_key: &str) -> usize {
    if !session_key.is_empty() {
        return (0..ids.len())
            .max_by_key(|&i| {
                let mut h = DefaultHasher::new();
                (ids[i], session_key).hash(&mut h);
                h.finish()
            })
            .unwrap_or(0);
    }
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let a = rng.gen_range(0..ids.len());
    let b = rng.gen_range(0..ids.len());
    if loads[a] <= loads[b] { a } else { b }
}

fn view(id: &str, e: &Entry, now: Instant, ttl: Duration) -> WorkerView {
    WorkerView {
        worker_id: id.to_owned(),
        registration: e.registration.clone(),
        in_flight: e.reported_in_flight + e.routed_since_heartbeat,
        draining: e.draining,
        expired: !e.live(now, ttl),
        registered_at: e.registered_at,
        last_heartbeat_at: e.last_heartbeat_wall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(teams: &[&str], capacity: u32) -> Registration {
        static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
        let port = PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Registration {
            owner: String::new(),
            address: format!("http://127.0.0.1:{port}"),
            teams: teams.iter().map(|t| t.to_string()).collect(),
            capabilities: vec![],
            capacity,
            labels: HashMap::new(),
        }
    }

    fn query(team: &str) -> RouteQuery<'_> {
        RouteQuery {
            team,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn load_spreads_toward_the_less_loaded_worker() {
        let registry = Registry::new(Duration::from_secs(15), 10);
        let a = registry
            .register(Some("a".into()), reg(&["crew"], 1))
            .unwrap();
        let b = registry
            .register(Some("b".into()), reg(&["crew"], 4))
            .unwrap();
        let mut to_b = 0;
        for _ in 0..200 {
            registry.heartbeat(&a, "", 1, false).unwrap();
            registry.heartbeat(&b, "", 1, false).unwrap();
            if registry.route(&query("crew")).unwrap().worker_id == b {
                to_b += 1;
            }
        }
        // a (load 1.0) wins only when both picks are a: about a quarter of the time.
        assert!(to_b > 120, "{to_b} of 200 went to the less loaded worker");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_worker_breaker_diverts_traffic_and_a_probe_closes_it() {
        let policy = BreakerPolicy {
            failures: 2,
            cool_down: Duration::from_secs(5),
        };
        let registry = Registry::with_breakers(Duration::from_secs(60), 10, policy);
        registry
            .register(Some("a".into()), reg(&["crew"], 8))
            .unwrap();
        registry
            .register(Some("b".into()), reg(&["crew"], 8))
            .unwrap();
        registry.report("a", "crew", Outcome::WorkerFailure);
        let (worker, team) = registry.report("a", "crew", Outcome::WorkerFailure);
        assert_eq!(worker, State::Open);
        // One worker's failures are not the team's: the team stays routable.
        assert_eq!(team, State::Closed);
        registry.report("b", "crew", Outcome::Success);
        for _ in 0..20 {
            assert_eq!(registry.route(&query("crew")).unwrap().worker_id, "b");
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(registry.worker_breaker("a"), State::HalfOpen);
        registry.report("a", "crew", Outcome::Success);
        assert_eq!(registry.worker_breaker("a"), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_worker_is_not_routed_to() {
        let registry = Registry::new(Duration::from_secs(15), 10);
        registry
            .register(Some("a".into()), reg(&["crew"], 1))
            .unwrap();
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(matches!(
            registry.route(&query("crew")),
            Err(RouterError::NoLiveWorker(_))
        ));
        assert!(registry.heartbeat("a", "", 0, false).is_ok());
        assert!(registry.route(&query("crew")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_teams_and_inline_specs() {
        let registry = Registry::new(Duration::from_secs(15), 10);
        registry
            .register(Some("a".into()), reg(&["crew", ANY_INLINE], 1))
            .unwrap();
        assert!(matches!(
            registry.route(&query("other")),
            Err(RouterError::UnknownTeam(_))
        ));
        let inline = RouteQuery {
            team: "other",
            inline_spec: true,
            ..Default::default()
        };
        assert!(registry.route(&inline).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_key_sticks_to_one_worker() {
        let registry = Registry::new(Duration::from_secs(15), 10);
        for id in ["a", "b", "c"] {
            registry
                .register(Some(id.into()), reg(&["crew"], 8))
                .unwrap();
        }
        let q = RouteQuery {
            team: "crew",
            session_key: "s-1",
            ..Default::default()
        };
        let first = registry.route(&q).unwrap().worker_id;
        for _ in 0..5 {
            assert_eq!(registry.route(&q).unwrap().worker_id, first);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_registry_is_bounded() {
        let registry = Registry::new(Duration::from_secs(15), 1);
        registry
            .register(Some("a".into()), reg(&["crew"], 1))
            .unwrap();
        assert!(matches!(
            registry.register(Some("b".into()), reg(&["crew"], 1)),
            Err(RouterError::RegistryFull(1))
        ));
    }
}
